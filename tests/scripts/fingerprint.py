"""Print a SHA-256 of every output of all six functions at parallel-path sizes.

Run in a subprocess by the determinism tests, under different numba thread
counts; ``--blas-threads K`` also fixes the BLAS pool (default: left alone).
"""

import argparse
import hashlib

import numpy as np
from threadpoolctl import threadpool_limits

import fastlayers as fl
from fastlayers._table import LAYERS

parser = argparse.ArgumentParser()
parser.add_argument("--numba-threads", type=int)
parser.add_argument("--blas-threads", type=int, default=2)
args = parser.parse_args()
if args.numba_threads:
    import numba

    numba.set_num_threads(args.numba_threads)

digest = hashlib.sha256()
with threadpool_limits(args.blas_threads, user_api="blas"):
    for dtype in ("float32", "float64"):
        for layer in LAYERS:
            shape = (1000, 300, 200) if layer.family == "affine" else (1003, 517)
            inputs = layer.inputs(np.random.default_rng(3), shape, dtype)
            result = layer.function("fastlayers")(*layer.call_args("fastlayers", inputs))
            arrays = [result] if isinstance(result, np.ndarray) else [r for r in result if isinstance(r, np.ndarray)]
            for array in arrays:
                digest.update(np.ascontiguousarray(array).tobytes())
import numba

print(numba.get_num_threads(), fl.threading_layer(), digest.hexdigest())
