"""The batch-norm cache: references and O(D) statistics, read as a mapping."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import numpy as np

SEED_KEYS = ("x_minus_mean", "normalized_data", "gamma", "ivar", "sqrtvar")


class BatchNormCache(Mapping):
    """What :func:`fastlayers.batchnorm_backward` needs from the forward pass.

    It holds the forward input ``x`` by reference when it was a
    C-contiguous float32/float64 array (any other layout or an integer
    dtype is held as the one C-contiguous float copy the kernels read),
    ``gamma``, and the per-feature mean and biased variance in float64.
    Read as a mapping it offers the seed page's keys (``x_minus_mean``,
    ``normalized_data``, ``gamma``, ``ivar``, ``sqrtvar``), each computed
    in the result dtype when asked for, so code written against the seed's
    dict cache keeps working. As with any cache of references, modifying
    ``x`` between the forward and the backward call changes the gradient.
    """

    __slots__ = ("x", "gamma", "mean", "var", "eps", "dtype")

    def __init__(
        self, x: np.ndarray, gamma: np.ndarray, mean: np.ndarray, var: np.ndarray, eps: float, dtype: np.dtype
    ) -> None:
        self.x = x  # C-contiguous (N, D), float32 or float64
        self.gamma = gamma  # (D,), of dtype `dtype`
        self.mean = mean  # (D,) float64
        self.var = var  # (D,) float64, biased
        self.eps = eps
        self.dtype = dtype

    def check(self, func: str) -> None:
        """Raise ValueError if the cache's parts no longer fit together.

        The kernels trust these shapes and dtypes (numba does not check
        bounds), so a cache whose attributes were replaced is refused here.
        """
        x = self.x
        ok = isinstance(x, np.ndarray) and x.ndim == 2 and x.dtype in (np.float32, np.float64) and x.flags.c_contiguous
        d = x.shape[1] if ok else -1
        for name in ("gamma", "mean", "var"):
            part = getattr(self, name)
            ok = ok and isinstance(part, np.ndarray) and part.shape == (d,) and part.dtype.kind == "f"
        ok = ok and self.mean.dtype == np.float64 and self.var.dtype == np.float64
        if not ok:
            raise ValueError(f"{func}: cache is a BatchNormCache whose contents were altered; "
                             "pass the cache batchnorm_forward returned")

    @property
    @np.errstate(all="ignore")  # IEEE results, silent, like the kernels
    def ivar(self) -> np.ndarray:
        """1 / sqrt(var + eps), float64."""
        return 1.0 / np.sqrt(self.var + self.eps)

    @np.errstate(all="ignore")
    def __getitem__(self, key: str) -> np.ndarray:
        if key == "gamma":
            return self.gamma
        if key == "ivar":
            return self.ivar.astype(self.dtype)
        if key == "sqrtvar":
            return np.sqrt(self.var + self.eps).astype(self.dtype)
        if key == "x_minus_mean":
            return (self.x - self.mean).astype(self.dtype)
        if key == "normalized_data":
            return ((self.x - self.mean) * self.ivar).astype(self.dtype)
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        return iter(SEED_KEYS)

    def __len__(self) -> int:
        return len(SEED_KEYS)

    def __repr__(self) -> str:
        shape = getattr(self.x, "shape", None)  # robust to a tampered cache
        return f"<BatchNormCache x.shape={shape} dtype={self.dtype}>"
