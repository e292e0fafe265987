"""asv benchmarks of the batchnorm layer: time, peak memory, speed-up."""

from ._common import _LayerFamily, _LayerFamilyMemory, _LayerFamilySpeedup


class TimeBatchNorm(_LayerFamily):
    forward = "batchnorm_forward"
    backward = "batchnorm_backward"


class PeakMemBatchNorm(_LayerFamilyMemory):
    forward = "batchnorm_forward"


class SpeedupBatchNorm(_LayerFamilySpeedup):
    forward = "batchnorm_forward"
    backward = "batchnorm_backward"
