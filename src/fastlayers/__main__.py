"""Command line: ``python -m fastlayers bench [options]``."""

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
    args = parser.parse_args(argv)
    if args.command == "bench":
        from .bench import run

        return run(args)
    return 2  # pragma: no cover - argparse rejects unknown commands


if __name__ == "__main__":
    sys.exit(main())
