"""asv benchmarks of the fused sandwiches against the same layers composed.

"composed" is fastlayers' single layers called one after the other (as a
network without the sandwiches would); the fused sandwich saves passes over
memory and, in the forward, the arrays the composition keeps for its caches.
"""

from fastlayers._table import SIZES

from ._common import DTYPES, IMPLEMENTATIONS, _LayerFamily, _LayerFamilyMemory, _LayerFamilySpeedup

WITH_COMPOSED = IMPLEMENTATIONS + ["composed"]


class TimeAffineRelu(_LayerFamily):
    forward = "affine_relu_forward"
    backward = "affine_relu_backward"
    params = (DTYPES, list(SIZES), WITH_COMPOSED)


class TimeAffineBatchnormRelu(_LayerFamily):
    forward = "affine_batchnorm_relu_forward"
    backward = "affine_batchnorm_relu_backward"
    params = (DTYPES, list(SIZES), WITH_COMPOSED)


class PeakMemAffineBatchnormRelu(_LayerFamilyMemory):
    forward = "affine_batchnorm_relu_forward"
    params = (DTYPES, WITH_COMPOSED)


class SpeedupAffineBatchnormRelu(_LayerFamilySpeedup):
    forward = "affine_batchnorm_relu_forward"
    backward = "affine_batchnorm_relu_backward"
    params = (DTYPES, list(SIZES), ["reference", "composed"])


class SpeedupAffineRelu(_LayerFamilySpeedup):
    forward = "affine_relu_forward"
    backward = "affine_relu_backward"
    params = (DTYPES, list(SIZES), ["reference", "composed"])
