"""Command line: ``python -m fastlayers bench|scaling|train [options]``."""

from __future__ import annotations

import argparse
import sys


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fastlayers", description="fastlayers: compiled NumPy layers")
    commands = parser.add_subparsers(dest="command", required=True)
    bench = commands.add_parser("bench", help="time fastlayers against the NumPy reference and the machine")
    bench.add_argument("--quick", action="store_true", help="small and medium sizes, fewer repeats, warm-cache compile only")
    bench.add_argument("--dtype", choices=["float32", "float64", "all"], default="all")
    bench.add_argument("--size", choices=["small", "medium", "large", "all"], default="all")
    bench.add_argument("--repeat", type=_positive_int, default=15, help="repeats per measurement (default 15)")
    bench.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    bench.add_argument("--plot", metavar="PATH", help="also write a log-log PNG plot (needs matplotlib)")
    bench.add_argument("--no-torch", action="store_true", help="leave PyTorch out even if installed")
    scaling = commands.add_parser("scaling", help="time ReLU and batch norm over thread counts against the copy bandwidth")
    scaling.add_argument("--threads", type=_positive_int, nargs="+", metavar="N",
                         help="thread counts (default 1, 2, 4, ... and NUMBA_NUM_THREADS)")
    scaling.add_argument("--size", choices=["small", "medium", "large"], default="large")
    scaling.add_argument("--shape", type=_positive_int, nargs=2, metavar=("N", "D"),
                         help="(N, D) of the arrays instead of --size's, e.g. larger than the last-level cache")
    scaling.add_argument("--dtype", choices=["float32", "float64", "all"], default="all")
    scaling.add_argument("--repeat", type=_positive_int, default=9, help="repeats per measurement (default 9)")
    scaling.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    scaling.add_argument("--no-torch", action="store_true", help="leave PyTorch out even if installed")
    train = commands.add_parser("train", help="train a NumPy MLP on the digits, on the reference layers and on fastlayers")
    train.add_argument("--epochs", type=_positive_int, default=15)
    train.add_argument("--batch-size", type=_positive_int, default=100)
    train.add_argument("--hidden", type=_positive_int, nargs="+", default=[256, 256], metavar="WIDTH",
                       help="hidden layer widths (default 256 256)")
    train.add_argument("--lr", type=float, default=0.05, help="learning rate (default 0.05)")
    train.add_argument("--dtype", choices=["float32", "float64"], default="float64")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--plot", metavar="PATH", default="fastlayers-train.png",
                       help="PNG of the two loss curves, if matplotlib is installed (default %(default)s; '' for none)")
    args = parser.parse_args(argv)
    if args.command == "bench":
        from .bench import run

        return run(args)
    if args.command == "scaling":
        from .scaling import run as run_scaling

        return run_scaling(args)
    if args.command == "train":
        from .train import run as run_training

        return run_training(args)
    return 2  # pragma: no cover - argparse rejects unknown commands


if __name__ == "__main__":
    sys.exit(main())
