"""asv benchmarks of the batchnorm layer: time, peak memory, speed-up."""

from fastlayers._table import SIZES

from ._common import DTYPES, IMPLEMENTATIONS, _LayerFamily, _LayerFamilyMemory, _LayerFamilySpeedup, prepared_call


class TimeBatchNorm(_LayerFamily):
    forward = "batchnorm_forward"
    backward = "batchnorm_backward"


class PeakMemBatchNorm(_LayerFamilyMemory):
    forward = "batchnorm_forward"


class SpeedupBatchNorm(_LayerFamilySpeedup):
    forward = "batchnorm_forward"
    backward = "batchnorm_backward"


class TimeBatchNormStep:
    """Forward + backward in train mode; fastlayers writes into preallocated arrays."""

    params = (DTYPES, list(SIZES), IMPLEMENTATIONS)
    param_names = ["dtype", "size", "implementation"]
    timeout = 300

    def setup(self, dtype, size, implementation):
        self.step = prepared_call("batchnorm_step", implementation, dtype, size)

    def time_step(self, dtype, size, implementation):
        self.step()
