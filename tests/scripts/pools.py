"""multiprocessing pools (fork, spawn, forkserver) created after the parent ran
the parallel kernels must compute the parent's results. Prints one line per
start method; the calling test bounds the whole run with a timeout."""

import multiprocessing

import numpy as np

import fastlayers as fl
from fastlayers._kernels._twins import forced_path


def work(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((600, 300))
    with forced_path("parallel"):
        out, cache = fl.batchnorm_forward(x, np.ones(300), np.zeros(300), {"mode": "train"})
        dx, dgamma, dbeta = fl.batchnorm_backward(out, cache)
        relu, relu_cache = fl.relu_forward(dx)
        affine, affine_cache = fl.affine_forward(relu, x.T, np.ones(600))
        grads = fl.affine_backward(affine, affine_cache)
    return b"".join(a.tobytes() for a in (out, dx, dgamma, relu, fl.relu_backward(dx, relu_cache), affine) + grads)


if __name__ == "__main__":
    expected = [work(seed) for seed in range(6)]  # the parent runs the parallel kernels first
    print("layer", fl.threading_layer())
    for method in ("fork", "spawn", "forkserver"):
        with multiprocessing.get_context(method).Pool(2) as pool:
            results = pool.map_async(work, range(6)).get(timeout=120)
        print(method, "ok" if results == expected else "MISMATCH")
