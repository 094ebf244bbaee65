"""The ``balancedet`` command line: ``balancedet <command> [...]``.

``train`` (the main job; with no arguments it trains the small GFL preset on the built-in
digits scenes within 10 minutes), ``eval``, ``predict``, ``demo`` (what the losses do to a dense detector's
imbalance), ``analyze`` (a dataset's and a checkpoint's imbalance, as a report), ``ablate`` (a grid or a
study over seeds) and ``bench losses|assign|detector|data`` (``bench data``: indexing a large COCO json, and
the training loader against the step).
"""

from __future__ import annotations

import argparse
import importlib
import sys

BENCHMARKS = {
    "losses": "balancedet.bench.losses",
    "assign": "balancedet.bench.assign",
    "detector": "balancedet.bench.detector",
    "train": "balancedet.bench.train",
    "data": "balancedet.bench.data",
}

#: The main job: GFL reached AP 0.548 where RetinaNet reached 0.306 in the same 570-s budget (one thread each,
#: AVX2 kernels, side by side on a 2-core AMD EPYC; see configs/gfl_digits.yaml).
DEFAULT_PRESET = "gfl_digits"
#: The preset of ``train --data my.yaml`` without ``--config``; the recipe (``balancedet.engine.recipe``)
#: then fits its input size and schedule to the data.
USER_DATA_PRESET = "user_data"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="balancedet", description="Imbalance remedies for object detection.")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train a detector (default: small GFL on the built-in digits, in 10 min)")
    train.add_argument("--data", help="dataset YAML (format, train/val images and annotations, names) or 'digits'")
    train.add_argument(
        "--config",
        help=f"preset name in configs/ or a YAML file (default {DEFAULT_PRESET}; with --data my.yaml "
        f"{USER_DATA_PRESET} fitted to the data)",
    )
    train.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    train.add_argument("--output", help="run folder (default runs/train/exp, exp2, ... never overwritten)")
    train.add_argument("--resume", metavar="LAST_PT", help="continue a killed run from its weights/last.pt")
    train.add_argument("--skip-bad", action="store_true", help="drop bad records and images with a warning")
    train.add_argument(
        "--nproc", type=int, default=1, help="processes on this machine, started by torchrun (docs/distributed.md)"
    )

    ev = sub.add_parser("eval", help="COCO AP of a checkpoint on a dataset split")
    ev.add_argument("--checkpoint", required=True)
    ev.add_argument("--data", help="dataset YAML (default: the one the checkpoint was trained on)")
    ev.add_argument("--split", default="val")
    ev.add_argument("--output", help="folder for metrics.json and PR_curve.png (default runs/eval/exp)")
    ev.add_argument("--device", default="auto")
    ev.add_argument("--batch-size", type=int)

    pr = sub.add_parser("predict", help="detect objects in images: COCO results json and drawn images")
    pr.add_argument("--checkpoint", required=True)
    pr.add_argument("images", nargs="+", help="image files or folders")
    pr.add_argument("--output", help="folder (default runs/predict/exp)")
    pr.add_argument("--score-thresh", type=float, default=0.25, help="lowest score drawn and written")
    pr.add_argument("--device", default="auto")

    demo = sub.add_parser("demo", help="show how CE, focal loss and GHM-C weigh a dense detector's examples")
    demo.add_argument("--anchors", type=int, default=100_000)
    demo.add_argument("--positives", type=int, default=50)

    ab = sub.add_parser("ablate", help="train a grid of settings, or a study of the papers' remedies, over seeds")
    ab.add_argument("--config", help="preset name or YAML file that the --grid cells start from")
    ab.add_argument(
        "--grid", action="append", default=[], metavar="SECTION.KEY=V1,V2", help="values to vary (repeat: product)"
    )
    ab.add_argument("--study", help="a preset study instead of --config/--grid, e.g. focal (engine/studies.py)")
    ab.add_argument("--seeds", type=int, default=3, help="seeds per cell: train.seed = 0 .. N-1 (default 3)")
    ab.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    ab.add_argument("--output", help="ablation folder (default runs/ablate/<study or config>); a rerun resumes it")
    ab.add_argument(
        "--epochs",
        type=int,
        help="a study's length in epochs of its data (its warm-up and decay keep their share); default its own",
    )
    ab.add_argument(
        "--cells",
        help="comma-separated cell names: train only those now (the reports cover every cell, with the runs done)",
    )

    an = sub.add_parser("analyze", help="class, box and anchor statistics; with --checkpoint, who takes the loss")
    an.add_argument("--data", help="dataset YAML or 'digits' (default: the config's, or the checkpoint's)")
    an.add_argument("--config", help=f"preset name or YAML file, as for train (default {DEFAULT_PRESET})")
    an.add_argument("--checkpoint", help="a dense detector's weights: adds the loss, gradient and hard-negative parts")
    an.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    an.add_argument("--output", help="folder (default runs/analyze/exp, exp2, ... never overwritten)")
    an.add_argument("--device", default="auto")
    an.add_argument("--max-images", type=int, help="analyse only the first N images of each split")

    bench = sub.add_parser("bench", help="benchmarks: " + ", ".join(BENCHMARKS), add_help=False)
    bench.add_argument("target", choices=sorted(BENCHMARKS))
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _parser()
    args, rest = parser.parse_known_args(argv)
    if args.command == "bench":
        return importlib.import_module(BENCHMARKS[args.target]).main(rest)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    try:
        return _run(args, argv)
    except ValueError as error:
        # Bad input (a malformed annotation, a typo in a key): one clear line, not a traceback.
        print(f"balancedet {args.command}: error: {error}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace, argv: list[str]) -> int:
    # Each command imports its module here, not at the top: torch, the models and the plotting
    # stack load only for the command that needs them, so ``balancedet --help`` answers at once.
    if args.command == "demo":
        from balancedet.demo import run_demo

        return run_demo(args.anchors, args.positives)
    if args.command == "train":
        from balancedet.data.spec import BUILTIN
        from balancedet.engine import distributed
        from balancedet.engine.config import load_config
        from balancedet.engine.train import train

        # --nproc N starts N copies of this command through torchrun, which then train together
        started = distributed.torchrun_processes()
        if args.nproc < 1 or (started is not None and args.nproc not in (1, started)):
            raise ValueError(f"--nproc {args.nproc}: expected 1 or more, and torchrun's {started} under torchrun")
        relaunch = args.nproc > 1 and started is None
        if args.resume:
            if args.data or args.config or args.overrides:
                raise ValueError("--resume continues a run with its own configuration: drop --data/--config/--set")
            if relaunch:
                return distributed.launch(args.nproc, argv)
            train(None, resume=args.resume)
            return 0
        overrides = list(args.overrides)
        if args.data:
            overrides.insert(0, f"data.dataset={args.data}")
        if args.skip_bad:
            overrides.append("data.skip_bad=true")
        # The user's own data without a preset gets the recipe; the built-in digits keep their tuned preset.
        fit = args.data is not None and args.config is None and args.data not in BUILTIN
        config = load_config(args.config or (USER_DATA_PRESET if fit else DEFAULT_PRESET), overrides)
        if relaunch:  # the configuration checked once here, a mistake reported in one line
            from balancedet.engine.data import check_shards

            check_shards(config["train"]["batch_size"], args.nproc)
            return distributed.launch(args.nproc, argv)
        if fit:
            from balancedet.data import load_data_spec
            from balancedet.engine.recipe import explicit_keys, fit_recipe

            config, lines = fit_recipe(config, load_data_spec(args.data), explicit_keys(args.overrides))
            if distributed.is_main():
                print("\n".join(lines), flush=True)
        train(config, output=args.output)
        return 0
    if args.command == "ablate":
        from balancedet.engine.ablate import run_ablation

        cells = [c.strip() for c in args.cells.split(",") if c.strip()] if args.cells is not None else None
        run_ablation(
            args.config, args.grid, args.study, args.seeds, args.overrides, args.output, cells=cells, epochs=args.epochs
        )
        return 0
    if args.command == "eval":
        from balancedet.engine.evaluate import evaluate_checkpoint

        evaluate_checkpoint(args.checkpoint, args.data, args.split, args.output, args.device, args.batch_size)
        return 0
    if args.command == "analyze":
        from balancedet.analysis.analyze import analyze

        analyze(args.data, args.config, args.checkpoint, args.output, args.overrides, args.device, args.max_images)
        return 0
    if args.command == "predict":
        from balancedet.engine.predict import predict_images

        predict_images(args.checkpoint, args.images, args.output, args.score_thresh, args.device)
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
