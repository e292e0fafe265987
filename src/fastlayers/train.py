"""``python -m fastlayers train``: one NumPy network, two backends.

A fully connected network with batch norm (``affine - batchnorm - relu``
hidden layers, an affine output, softmax loss) is trained with SGD with
momentum on scikit-learn's bundled handwritten digits (8x8 images, no
download), twice from the same seed: once on the seed page's NumPy layers
(``fastlayers.reference``) and once on fastlayers. The network code is the
same for both; only the module that supplies the layers changes, which is
how an existing NumPy network adopts fastlayers. Per epoch it prints both
runs' training loss and validation accuracy and the time per epoch.

Needs scikit-learn (``pip install "fastlayers[examples]"``); matplotlib,
if installed, draws the two loss curves.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np

import fastlayers

from . import reference

BACKENDS = {"reference": reference, "fastlayers": fastlayers}


@dataclass
class Data:
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray


def load_digits(seed: int = 0, dtype: Any = np.float64, n_val: int = 297) -> Data:
    """The digits, standardised with the training split's statistics, split at random by ``seed``."""
    try:
        from sklearn.datasets import load_digits as sklearn_digits
    except ImportError:
        raise ImportError('the training example needs scikit-learn: pip install "fastlayers[examples]"') from None
    digits = sklearn_digits()
    order = np.random.default_rng(seed).permutation(len(digits.target))
    x = digits.data[order].astype(np.float64)
    y = digits.target[order]
    x_train, x_val = x[n_val:], x[:n_val]
    mean, std = x_train.mean(axis=0), x_train.std(axis=0) + 1e-3
    return Data(((x_train - mean) / std).astype(dtype), y[n_val:], ((x_val - mean) / std).astype(dtype), y[:n_val])


def softmax_loss(scores: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean cross-entropy of softmax(scores) against labels y, and its gradient."""
    shifted = scores - scores.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    n = len(y)
    loss = -float(log_probs[np.arange(n), y].mean())
    dscores = np.exp(log_probs)
    dscores[np.arange(n), y] -= 1
    return loss, dscores / n


@dataclass
class Network:
    """Hidden layers ``affine - batchnorm - relu``, then an affine output.

    All arithmetic outside the layers (loss, update) is plain NumPy, shared
    by both backends.
    """

    params: dict[str, np.ndarray]
    bn_params: list[dict[str, Any]]
    n_hidden: int

    @classmethod
    def create(cls, dims: list[int], rng: np.random.Generator, dtype: Any) -> Network:
        params = {}
        for layer, (fan_in, fan_out) in enumerate(zip(dims[:-1], dims[1:]), 1):
            params[f"W{layer}"] = (rng.standard_normal((fan_in, fan_out)) * np.sqrt(2.0 / fan_in)).astype(dtype)
            params[f"b{layer}"] = np.zeros(fan_out, dtype)
            if layer < len(dims) - 1:
                params[f"gamma{layer}"] = np.ones(fan_out, dtype)
                params[f"beta{layer}"] = np.zeros(fan_out, dtype)
        n_hidden = len(dims) - 2
        return cls(params, [{"mode": "train"} for _ in range(n_hidden)], n_hidden)

    def scores(self, x: np.ndarray, layers: ModuleType, mode: str) -> tuple[np.ndarray, list[Any]]:
        p = self.params
        caches = []
        h = x
        for layer in range(1, self.n_hidden + 1):
            bn_param = self.bn_params[layer - 1]
            bn_param["mode"] = mode
            h, cache = layers.affine_batchnorm_relu_forward(h, p[f"W{layer}"], p[f"b{layer}"], p[f"gamma{layer}"],
                                                            p[f"beta{layer}"], bn_param)
            caches.append(cache)
        last = self.n_hidden + 1
        scores, cache = layers.affine_forward(h, p[f"W{last}"], p[f"b{last}"])
        caches.append(cache)
        return scores, caches

    def loss_and_gradients(self, x: np.ndarray, y: np.ndarray, layers: ModuleType) -> tuple[float, dict]:
        scores, caches = self.scores(x, layers, "train")
        loss, dscores = softmax_loss(scores, y)
        grads = {}
        last = self.n_hidden + 1
        dh, grads[f"W{last}"], grads[f"b{last}"] = layers.affine_backward(dscores, caches[-1])
        for layer in range(self.n_hidden, 0, -1):
            (dh, grads[f"W{layer}"], grads[f"b{layer}"], grads[f"gamma{layer}"],
             grads[f"beta{layer}"]) = layers.affine_batchnorm_relu_backward(dh, caches[layer - 1])
        return loss, grads

    def accuracy(self, x: np.ndarray, y: np.ndarray, layers: ModuleType) -> float:
        scores, _ = self.scores(x, layers, "test")
        return float(np.mean(np.argmax(scores, axis=1) == y))


@dataclass
class Epoch:
    loss: float  # mean training loss over the epoch's minibatches
    val_accuracy: float
    seconds: float  # the epoch's training steps, evaluation excluded


def train_epochs(backend: str, data: Data, *, hidden: tuple[int, ...] = (256, 256), epochs: int = 10,
                 batch_size: int = 100, learning_rate: float = 0.05, momentum: float = 0.9, seed: int = 0,
                 max_steps: int | None = None) -> Iterator[Epoch]:
    """Train the network on ``backend``'s layers, yielding after each epoch.

    Everything but the layers is seeded identically, so two backends see
    the same weights and minibatches. ``max_steps`` caps the steps per
    epoch (for quick checks). A generator, so that two backends can be
    trained in lockstep and their epochs timed alternately.
    """
    layers = BACKENDS[backend]
    dtype = data.x_train.dtype
    rng = np.random.default_rng(seed)
    dims = [data.x_train.shape[1], *hidden, int(data.y_train.max()) + 1]
    network = Network.create(dims, rng, dtype)
    velocity = {name: np.zeros_like(value) for name, value in network.params.items()}
    n_train = len(data.y_train)
    for _ in range(epochs):
        order = rng.permutation(n_train)
        losses = []
        started = time.perf_counter()
        for step, start in enumerate(range(0, n_train - batch_size + 1, batch_size)):
            if max_steps is not None and step >= max_steps:
                break
            batch = order[start:start + batch_size]
            loss, grads = network.loss_and_gradients(data.x_train[batch], data.y_train[batch], layers)
            losses.append(loss)
            for name, grad in grads.items():
                velocity[name] = momentum * velocity[name] - learning_rate * grad
                network.params[name] += velocity[name]
        seconds = time.perf_counter() - started
        yield Epoch(float(np.mean(losses)), network.accuracy(data.x_val, data.y_val, layers), seconds)


def train_both(data: Data, **settings: Any) -> dict[str, list[Epoch]]:
    """The reference and fastlayers runs, epoch by epoch in turn."""
    runs = {name: train_epochs(name, data, **settings) for name in ("reference", "fastlayers")}
    history: dict[str, list[Epoch]] = {name: [] for name in runs}
    for epochs in zip(*runs.values()):
        for name, epoch in zip(runs, epochs):
            history[name].append(epoch)
    return history


def plot_losses(history: dict[str, list[Epoch]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for (name, epochs), style in zip(history.items(), ("-o", "--x")):
        ax.plot(range(1, len(epochs) + 1), [e.loss for e in epochs], style, label=name)
    ax.set_xlabel("epoch")
    ax.set_ylabel("training loss (mean over the epoch)")
    ax.set_yscale("log")
    ax.set_title("digits MLP with batch norm: reference vs fastlayers")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def run(args: Any) -> int:
    dtype = np.dtype(args.dtype)
    data = load_digits(args.seed, dtype)
    hidden = tuple(args.hidden)
    print(f"digits: {len(data.y_train)} training and {len(data.y_val)} validation images of 64 pixels, 10 classes; "
          f"network 64-{'-'.join(map(str, hidden))}-10 (affine-batchnorm-relu hidden layers), {args.dtype}, "
          f"SGD momentum 0.9, learning rate {args.lr}, batch {args.batch_size}, seed {args.seed}")
    settings = {"hidden": hidden, "epochs": args.epochs, "batch_size": args.batch_size, "learning_rate": args.lr,
                "seed": args.seed}
    # Compile (or load) the kernels first: compile time is not training time.
    started = time.perf_counter()
    for _ in train_epochs("fastlayers", data, **dict(settings, epochs=1), max_steps=1):
        pass
    print(f"fastlayers warm-up (kernel compile or cache load): {time.perf_counter() - started:.2f} s")
    print("the two runs alternate epoch by epoch; s/epoch counts the training steps only\n")
    history = train_both(data, **settings)
    reference_epochs, fast_epochs = history["reference"], history["fastlayers"]
    print(f"{'epoch':>5}  {'loss (reference)':>17}  {'loss (fastlayers)':>17}  {'|difference|':>12}  "
          f"{'val acc (ref / fl)':>18}  {'s/epoch (ref / fl)':>19}  {'speed-up':>8}")
    for index, (r, f) in enumerate(zip(reference_epochs, fast_epochs), 1):
        print(f"{index:>5}  {r.loss:>17.10f}  {f.loss:>17.10f}  {abs(r.loss - f.loss):>12.2e}  "
              f"{r.val_accuracy:>8.3f} / {f.val_accuracy:.3f}  {r.seconds:>9.4f} / {f.seconds:.4f}  "
              f"{r.seconds / f.seconds:>7.1f}x")
    ref_median = statistics.median(e.seconds for e in reference_epochs)
    fast_median = statistics.median(e.seconds for e in fast_epochs)
    max_difference = max(abs(r.loss - f.loss) for r, f in zip(reference_epochs, fast_epochs))
    print(f"\nmedian epoch: reference {ref_median:.4f} s, fastlayers {fast_median:.4f} s, "
          f"speed-up {ref_median / fast_median:.2f}x; largest loss difference {max_difference:.2e}")
    if args.plot:
        try:
            plot_losses(history, args.plot)
        except ImportError:
            print('no plot: matplotlib is not installed (pip install "fastlayers[examples]")', file=sys.stderr)
        else:
            print(f"wrote {args.plot}")
    return 0
