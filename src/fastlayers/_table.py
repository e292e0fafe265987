"""One table of the layers, driving both the tests and the benchmarks.

Each entry pairs a fastlayers function with its twin in
``fastlayers.reference`` and knows how to build seeded inputs of a given
size for either implementation (a backward entry runs the matching forward
to obtain its cache). Besides the six layers it holds the sandwiches (with
a third implementation, "composed": fastlayers' single layers called one
after the other, the baseline the fused sandwiches must beat) and
``batchnorm_step``: batch norm's forward and backward in one training step,
fastlayers writing into arrays preallocated as its README advises
(``fastlayers.empty_like``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import numpy as np

from . import layers, reference, sandwiches
from ._memory import empty_like

# Benchmark sizes: (N, D) for ReLU and batch norm, (N, D, M) for affine.
SIZES: dict[str, dict[str, tuple[int, ...]]] = {
    "small": {"nd": (64, 100), "affine": (64, 100, 10)},
    "medium": {"nd": (256, 4096), "affine": (256, 1024, 1024)},
    "large": {"nd": (4096, 4096), "affine": (1024, 3072, 1024)},
}



def _batchnorm_step(single: Any, preallocated: bool) -> Any:
    """Train-mode batch norm forward then backward; into ``buffers`` if ``preallocated``."""

    def batchnorm_step(x, gamma, beta, dout, buffers):
        if not preallocated:
            _, cache = single.batchnorm_forward(x, gamma, beta, {"mode": "train"})
            return single.batchnorm_backward(dout, cache)
        _, cache = single.batchnorm_forward(x, gamma, beta, {"mode": "train"}, out=buffers["out"])
        return single.batchnorm_backward(dout, cache, dx=buffers["dx"], dgamma=buffers["dgamma"],
                                         dbeta=buffers["dbeta"])

    return batchnorm_step


def _namespace(*modules: Any, **extra: Any) -> SimpleNamespace:
    return SimpleNamespace(**{name: getattr(m, name) for m in modules for name in m.__all__}, **extra)


IMPLEMENTATIONS = {
    "fastlayers": _namespace(layers, sandwiches, batchnorm_step=_batchnorm_step(layers, preallocated=True)),
    "reference": _namespace(reference, batchnorm_step=_batchnorm_step(reference, preallocated=False)),
    "composed": reference.compose_sandwiches(layers),
}


def _affine_inputs(rng: np.random.Generator, shape: tuple[int, ...], dtype: Any) -> dict[str, np.ndarray]:
    n, d, m = shape
    return {
        "x": rng.standard_normal((n, d)).astype(dtype),
        "w": (rng.standard_normal((d, m)) / np.sqrt(max(d, 1))).astype(dtype),
        "b": rng.standard_normal(m).astype(dtype),
        "dout": rng.standard_normal((n, m)).astype(dtype),
        "gamma": rng.standard_normal(m).astype(dtype),  # for the batch-norm sandwich
        "beta": rng.standard_normal(m).astype(dtype),
    }


def _nd_inputs(rng: np.random.Generator, shape: tuple[int, ...], dtype: Any) -> dict[str, np.ndarray]:
    n, d = shape
    return {
        "x": (rng.standard_normal((n, d)) * 2.0 + 0.5).astype(dtype),
        "gamma": rng.standard_normal(d).astype(dtype),
        "beta": rng.standard_normal(d).astype(dtype),
        "dout": rng.standard_normal((n, d)).astype(dtype),
    }


@dataclass(frozen=True)
class Layer:
    """One public function: its name, input family and argument builder."""

    name: str
    family: str  # "affine" or "nd"
    args: Callable[[Any, dict[str, np.ndarray]], tuple]
    sandwich: bool = False  # also implemented as "composed"

    def function(self, implementation: str) -> Callable[..., Any]:
        return getattr(IMPLEMENTATIONS[implementation], self.name)

    def inputs(self, rng: np.random.Generator, size: str | tuple[int, ...], dtype: Any) -> dict[str, np.ndarray]:
        shape = SIZES[size][self.family] if isinstance(size, str) else size
        maker = _affine_inputs if self.family == "affine" else _nd_inputs
        return maker(rng, shape, dtype)

    def call_args(self, implementation: str, inputs: dict[str, np.ndarray]) -> tuple:
        """Arguments for this layer's function in ``implementation``."""
        return self.args(IMPLEMENTATIONS[implementation], inputs)


LAYERS = [
    Layer("affine_forward", "affine", lambda impl, a: (a["x"], a["w"], a["b"])),
    Layer("affine_backward", "affine",
          lambda impl, a: (a["dout"], impl.affine_forward(a["x"], a["w"], a["b"])[1])),
    Layer("relu_forward", "nd", lambda impl, a: (a["x"],)),
    Layer("relu_backward", "nd", lambda impl, a: (a["dout"], impl.relu_forward(a["x"])[1])),
    Layer("batchnorm_forward", "nd",
          lambda impl, a: (a["x"], a["gamma"], a["beta"], {"mode": "train"})),
    Layer("batchnorm_backward", "nd",
          lambda impl, a: (a["dout"], impl.batchnorm_forward(a["x"], a["gamma"], a["beta"], {"mode": "train"})[1])),
    Layer("affine_relu_forward", "affine", lambda impl, a: (a["x"], a["w"], a["b"]), sandwich=True),
    Layer("affine_relu_backward", "affine",
          lambda impl, a: (a["dout"], impl.affine_relu_forward(a["x"], a["w"], a["b"])[1]), sandwich=True),
    Layer("affine_batchnorm_relu_forward", "affine",
          lambda impl, a: (a["x"], a["w"], a["b"], a["gamma"], a["beta"], {"mode": "train"}), sandwich=True),
    Layer("affine_batchnorm_relu_backward", "affine",
          lambda impl, a: (a["dout"], impl.affine_batchnorm_relu_forward(a["x"], a["w"], a["b"], a["gamma"],
                                                                         a["beta"], {"mode": "train"})[1]),
          sandwich=True),
]

# Not a layer of its own: one training step of batch norm, for the bench's
# comparison with PyTorch's forward + backward.
BATCHNORM_STEP = Layer(
    "batchnorm_step", "nd",
    lambda impl, a: (a["x"], a["gamma"], a["beta"], a["dout"],
                     {"out": empty_like(a["x"]), "dx": empty_like(a["x"], apart_from=(a["dout"], a["x"])),
                      "dgamma": np.empty_like(a["gamma"]), "dbeta": np.empty_like(a["beta"])}))

BY_NAME = {layer.name: layer for layer in [*LAYERS, BATCHNORM_STEP]}
