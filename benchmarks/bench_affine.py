"""asv benchmarks of the affine layer: time, peak memory, speed-up."""

from ._common import _LayerFamily, _LayerFamilyMemory, _LayerFamilySpeedup


class TimeAffine(_LayerFamily):
    forward = "affine_forward"
    backward = "affine_backward"


class PeakMemAffine(_LayerFamilyMemory):
    forward = "affine_forward"


class SpeedupAffine(_LayerFamilySpeedup):
    forward = "affine_forward"
    backward = "affine_backward"
