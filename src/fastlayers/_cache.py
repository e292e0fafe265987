"""The batch-norm cache: references and O(D) statistics, read as a mapping."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import numpy as np

from ._validation import FLOAT32, FLOAT64

SEED_KEYS = ("x_minus_mean", "normalized_data", "gamma", "ivar", "sqrtvar")

# The dtypes the kernels read, in the machine's byte order. A tuple test
# (``dtype in _KERNEL_FLOATS``) is an identity test first, and an equality
# test (which refuses the other byte order) for an equal dtype that is
# another object, as an unpickled cache's arrays carry.
_KERNEL_FLOATS = (FLOAT32, FLOAT64)
_KERNEL_FLOAT64 = (FLOAT64,)


class BatchNormCache(Mapping):
    """What :func:`fastlayers.batchnorm_backward` needs from the forward pass.

    It holds the forward input ``x`` by reference when it was a
    C-contiguous float32/float64 array (any other layout or an integer
    dtype is held as the one C-contiguous float copy the kernels read),
    ``gamma`` and ``beta``, and the per-feature mean and biased variance in float64.
    Read as a mapping it offers the seed page's keys (``x_minus_mean``,
    ``normalized_data``, ``gamma``, ``ivar``, ``sqrtvar``), each computed
    in the result dtype when asked for, so code written against the seed's
    dict cache keeps working. As with any cache of references, modifying
    ``x`` between the forward and the backward call changes the gradient.
    """

    __slots__ = ("x", "gamma", "beta", "mean", "var", "eps", "dtype", "n_total", "comm")

    def __init__(
        self, x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, mean: np.ndarray, var: np.ndarray, eps: float,
        dtype: np.dtype, n_total: int, comm: object = None,
    ) -> None:
        self.x = x  # C-contiguous (N, D), float32 or float64
        self.gamma = gamma  # (D,)
        self.beta = beta  # (D,): a fused ReLU's backward recomputes the forward's output
        self.mean = mean  # (D,) float64
        self.var = var  # (D,) float64, biased
        self.eps = eps
        self.dtype = dtype
        self.n_total = n_total  # rows in the whole batch: x's own, or all ranks' with comm
        self.comm = comm  # the MPI communicator of a synchronised forward, else None

    def check(self, func: str) -> None:
        """Raise ValueError if the cache's parts no longer fit together.

        The kernels trust these shapes and dtypes (numba does not check
        bounds, and refuses the other byte order with a typing error), so a
        cache whose attributes were replaced is refused here.
        """
        x, mean, var, gamma, beta = self.x, self.mean, self.var, self.gamma, self.beta
        array = np.ndarray
        try:
            features = (x.shape[1],)
            if (type(x) is array and type(mean) is array and type(var) is array and type(gamma) is array
                    and type(beta) is array and x.ndim == 2 and x.flags.c_contiguous and x.dtype in _KERNEL_FLOATS
                    and mean.shape == var.shape == gamma.shape == beta.shape == features
                    and mean.dtype in _KERNEL_FLOAT64 and var.dtype in _KERNEL_FLOAT64 and gamma.dtype in _KERNEL_FLOATS
                    and beta.dtype in _KERNEL_FLOATS and type(self.n_total) is int
                    and self.n_total >= max(1, x.shape[0])):
                return
        except (AttributeError, IndexError, TypeError):
            pass
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


class ReluMask:
    """The cache of an in-place ReLU: ``x >= 0`` as one byte an element.

    :func:`fastlayers.relu_forward` with ``out=x`` overwrites x, which the
    seed's cache would hold; it records this mask instead (and
    ``affine_relu_forward`` does the same for its pre-activation), so that
    :func:`fastlayers.relu_backward` gives the same gradient as from x.
    """

    __slots__ = ("mask",)

    def __init__(self, mask: np.ndarray) -> None:
        self.mask = mask  # bool, C-contiguous

    @property
    def shape(self) -> tuple[int, ...]:
        return self.mask.shape

    def check(self, func: str) -> None:
        mask = self.mask
        if not (isinstance(mask, np.ndarray) and mask.dtype == np.bool_ and mask.flags.c_contiguous):
            raise ValueError(f"{func}: cache is a ReluMask whose contents were altered; "
                             "pass the cache relu_forward returned")

    def __repr__(self) -> str:
        return f"<ReluMask shape={getattr(self.mask, 'shape', None)}>"
