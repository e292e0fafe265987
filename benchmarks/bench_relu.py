"""asv benchmarks of the relu layer: time, peak memory, speed-up."""

from ._common import _LayerFamily, _LayerFamilyMemory, _LayerFamilySpeedup


class TimeRelu(_LayerFamily):
    forward = "relu_forward"
    backward = "relu_backward"


class PeakMemRelu(_LayerFamilyMemory):
    forward = "relu_forward"


class SpeedupRelu(_LayerFamilySpeedup):
    forward = "relu_forward"
    backward = "relu_backward"
