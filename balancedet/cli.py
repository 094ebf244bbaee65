"""The ``balancedet`` command line: ``balancedet <command> [...]``.

Commands: ``demo`` (what the losses do to a dense detector's imbalance) and ``bench losses``.
"""

from __future__ import annotations

import argparse
import sys

BENCHMARKS = {"losses": "balancedet.bench.losses"}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="balancedet", description="Imbalance remedies for object detection.")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="show how CE, focal loss and GHM-C weigh a dense detector's examples")
    demo.add_argument("--anchors", type=int, default=100_000)
    demo.add_argument("--positives", type=int, default=50)
    bench = sub.add_parser("bench", help="benchmarks: " + ", ".join(BENCHMARKS), add_help=False)
    bench.add_argument("target", choices=sorted(BENCHMARKS))
    args, rest = parser.parse_known_args(argv)

    if args.command == "bench":
        import importlib

        return importlib.import_module(BENCHMARKS[args.target]).main(rest)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.command == "demo":
        from balancedet.demo import run_demo

        return run_demo(args.anchors, args.positives)
    return 2


if __name__ == "__main__":
    sys.exit(main())
