"""``balancedet train``: the training loop, in one readable function.

SGD (or AdamW) with linear warm-up and step decay, gradient clipping, mixed precision where the
device supports it, evaluation every ``eval_interval`` epochs, ``weights/last.pt`` every
``checkpoint_interval`` steps and at each epoch's end, ``weights/best.pt`` on a new best AP, all
written atomically. A killed run resumed with ``--resume`` continues exactly: the batch order is a
function of (seed, epoch), each image's augmentation a function of (seed, epoch, index), and the
checkpoint stores the optimiser, the step, the random states and the model's loss-module buffers
(GHM histograms, positive-count EMA), so on the CPU the resumed weights equal those of a run that
was never interrupted.

The output folder follows ultralytics: ``args.yaml``, ``results.csv``, ``results.png``,
``PR_curve.png``, ``confusion_matrix.png``, ``val_batch*_pred.jpg``, ``weights/{best,last}.pt``,
plus ``metrics.json`` (the final COCO metrics) and TensorBoard event files.
"""

from __future__ import annotations

import csv
import json
import math
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from balancedet.engine.build import build_model
from balancedet.engine.checkpoint import load_checkpoint, rng_state, save_atomic, set_rng_state
from balancedet.engine.evaluate import METRIC_KEYS, coco_evaluate, coco_results, confusion_matrix, predict_loader
from balancedet.engine.plots import draw_predictions, plot_confusion, plot_pr_curves, plot_results


class StopTraining(Exception):
    """Raised by ``train(..., stop_after_steps=k)`` after step ``k`` (tests simulate a kill with it)."""


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"train.device={name!r}: CUDA is not available on this machine")
    return device


def amp_dtype(setting: Any, device: torch.device) -> torch.dtype | None:
    """``auto``: bf16 autocast on GPUs that support it, fp16 on older GPUs, none on the CPU."""
    if setting in (False, None, "off", "none"):
        return None
    if setting == "auto":
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if setting in ("bf16", "bfloat16"):
        return torch.bfloat16
    if setting in ("fp16", "float16"):
        return torch.float16
    raise ValueError(f"train.amp={setting!r}: expected auto, off, bf16 or fp16")


def increment_dir(path: Path) -> Path:
    """``path`` if unused, else ``path2``, ``path3``... (never overwrite an earlier run)."""
    if not path.exists():
        return path
    n = 2
    while path.with_name(f"{path.name}{n}").exists():
        n += 1
    return path.with_name(f"{path.name}{n}")


class SeededView(Dataset):
    """Items ``(epoch, index)``: each image's random augmentation is drawn from its own seed, so it
    does not depend on worker processes, batch composition or where a resumed run restarted."""

    def __init__(self, dataset: Dataset, seed: int):
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]):
        epoch, index = key
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed((self.seed * 1_000_003 + epoch * 10_007 + index) % (2**63))
            return self.dataset[index]


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int) -> list[list[tuple[int, int]]]:
    """The batches of one epoch: a permutation drawn from (seed, epoch), the last partial batch
    dropped when there is more than one batch (batch norm dislikes a batch of one)."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 7919 + epoch)).tolist()
    batches = [order[i : i + batch_size] for i in range(0, n, batch_size)]
    if len(batches) > 1 and len(batches[-1]) < batch_size:
        batches.pop()
    return [[(epoch, i) for i in b] for b in batches]


def learning_rate(step: int, cfg: dict[str, Any], steps_per_epoch: int) -> float:
    """Linear warm-up from ``warmup_factor * lr`` over ``warmup_iters`` steps, then ``lr_decay`` at
    each milestone epoch (Detectron's schedule)."""
    lr = cfg["lr"]
    if step < cfg["warmup_iters"]:
        alpha = step / max(1, cfg["warmup_iters"])
        lr *= cfg["warmup_factor"] * (1 - alpha) + alpha
    passed = sum(step >= m * steps_per_epoch for m in cfg["milestones"] or [])
    return lr * cfg["lr_decay"] ** passed


def make_optimizer(model: torch.nn.Module, cfg: dict[str, Any]) -> torch.optim.Optimizer:
    """SGD with momentum (the papers' choice) or AdamW; no weight decay on norms and biases."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 or name.endswith(".bias") else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg["weight_decay"]}, {"params": no_decay, "weight_decay": 0.0}]
    # The per-tensor AdamW update took ~12% of the digits preset's CPU step in a profile; the fused
    # kernel makes the same update in one pass over the parameters.
    if cfg["optimizer"] == "sgd":
        return torch.optim.SGD(groups, lr=cfg["lr"], momentum=cfg["momentum"], fused=True)
    if cfg["optimizer"] == "adamw":
        return torch.optim.AdamW(groups, lr=cfg["lr"], fused=True)
    raise ValueError(f"train.optimizer={cfg['optimizer']!r}: expected sgd or adamw")


def load_split(config: dict[str, Any], split: str, train: bool, spec=None):
    """A split of the configured dataset with its transforms (flip only when ``train``)."""
    from balancedet.data import DetectionDataset, DetectionTransform, load_data_spec

    data = config["data"]
    spec = spec or load_data_spec(data["dataset"])
    transform = DetectionTransform(
        train=train, min_size=data["min_size"], max_size=data["max_size"], flip_prob=data["flip"]
    )
    return DetectionDataset.from_record_set(spec.load(split, skip_bad=data["skip_bad"]), transform)


def load_datasets(config: dict[str, Any]):
    from balancedet.data import load_data_spec

    spec = load_data_spec(config["data"]["dataset"])
    return spec, load_split(config, "train", True, spec), load_split(config, "val", False, spec)


def make_collate(size_divisible: int):
    from balancedet.data import DetectionCollate

    return DetectionCollate(size_divisible)


def evaluate_model(
    model: torch.nn.Module,
    dataset,
    config: dict[str, Any],
    device: torch.device,
    amp: torch.dtype | None,
) -> tuple[dict[str, Any], list]:
    """COCO metrics of ``model`` on ``dataset`` and the predictions (original-image pixels)."""
    loader = DataLoader(
        dataset,
        batch_size=config["train"]["batch_size"],
        shuffle=False,
        num_workers=config["train"]["workers"],
        collate_fn=make_collate(config["data"]["size_divisible"]),
    )
    predictions = predict_loader(model, loader, device, amp)
    truth = dataset.ground_truth()
    report = coco_evaluate(truth, coco_results(predictions, dataset.category_ids), dataset.category_ids)
    return report, predictions


def write_eval_artifacts(report, predictions, dataset, output: Path, num_images: int) -> None:
    """``PR_curve.png``, ``confusion_matrix.png`` and a few ``val_batch*_pred.jpg``."""
    precision = report["precision50"]
    ap50 = [float(precision[:, k].mean()) for k in range(precision.shape[1])]
    ap50 = [a if np.isfinite(p) else float("nan") for a, p in zip(ap50, report["per_class_ap"], strict=True)]
    plot_pr_curves(precision, report["recall_thresholds"], dataset.class_names, ap50, output / "PR_curve.png")
    matrix = confusion_matrix(predictions, len(dataset.class_names))
    plot_confusion(matrix, dataset.class_names, output / "confusion_matrix.png")
    from PIL import Image

    by_id = {r.image_id: r for r in dataset.records}
    for i, (target, det) in enumerate(predictions[:num_images]):
        record = by_id[int(target["image_id"])]
        with Image.open(record.file) as image:
            drawn = draw_predictions(image, det, dataset.class_names)
        drawn.save(output / f"val_batch{i}_pred.jpg", quality=90)


def per_class_table(report: dict[str, Any], class_names: list[str]) -> str:
    lines = [f"{'class':<20} {'AP':>6}"]
    for name, ap in zip(class_names, report["per_class_ap"], strict=True):
        lines.append(f"{name:<20} {ap:6.3f}" if math.isfinite(ap) else f"{name:<20} {'-':>6}")
    return "\n".join(lines)


def train(
    config: dict[str, Any],
    output: Path | str | None = None,
    resume: Path | str | None = None,
    stop_after_steps: int | None = None,
    verbose: bool = True,
) -> dict[str, Any]:
    """Train as ``config`` says; returns ``{"output": folder, "metrics": final COCO metrics}``.

    ``resume`` is a ``last.pt``: the run continues in its folder with its configuration.
    """
    start_time = time.perf_counter()
    state = None
    if resume is not None:
        state = load_checkpoint(resume)
        config = state["config"]
        output = Path(resume).resolve().parent.parent
        if "step" not in state:
            raise ValueError(f"checkpoint {resume}: holds weights only (use weights/last.pt to resume)")
    else:
        output = increment_dir(Path(output or "runs/train/exp"))
    output = Path(output)
    (output / "weights").mkdir(parents=True, exist_ok=True)
    tcfg = config["train"]
    device = resolve_device(tcfg["device"])
    amp = amp_dtype(tcfg["amp"], device)
    seed = int(tcfg["seed"])
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)

    spec, train_set, val_set = load_datasets(config)
    class_names = list(train_set.class_names)
    model = build_model(config["model"], len(class_names)).to(device)
    optimizer = make_optimizer(model, tcfg)
    scaler = torch.amp.GradScaler(device.type, enabled=amp == torch.float16)
    if len(train_set) == 0:
        raise ValueError(f"dataset {config['data']['dataset']}: the training split has no images")
    steps_per_epoch = len(epoch_batches(len(train_set), tcfg["batch_size"], seed, 0))
    total_steps = steps_per_epoch * tcfg["epochs"]

    step, rows, best_ap = 0, [], -1.0
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        step, rows, best_ap = state["step"], state["rows"], state["best_ap"]
        set_rng_state(state["rng"])
    else:
        (output / "args.yaml").write_text(yaml.safe_dump(config, sort_keys=False))

    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(output), purge_step=step if step else None)
    view = SeededView(train_set, seed)
    collate_fn = make_collate(config["data"]["size_divisible"])
    meta = {"class_names": class_names, "category_ids": list(train_set.category_ids), "config": config}

    def checkpoint(path: Path, epoch_sums: dict[str, float]) -> None:
        save_atomic(
            {
                **meta,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scaler": scaler.state_dict(),
                "step": step,
                "rows": rows,
                "best_ap": best_ap,
                "epoch_sums": epoch_sums,
                "rng": rng_state(),
            },
            path,
        )

    last_report = last_predictions = None
    progress = tqdm(total=total_steps, initial=step, disable=not verbose, dynamic_ncols=True, unit="it")
    epoch_sums: dict[str, float] = dict(state["epoch_sums"]) if state is not None else {}
    try:
        while step < total_steps:
            epoch, within = divmod(step, steps_per_epoch)
            batches = epoch_batches(len(train_set), tcfg["batch_size"], seed, epoch)[within:]
            loader = DataLoader(view, batch_sampler=batches, num_workers=tcfg["workers"], collate_fn=collate_fn)
            model.train()
            for images, targets in loader:
                lr = learning_rate(step, tcfg, steps_per_epoch)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                images = images.to(device, non_blocking=True)
                targets = [{k: (v.to(device) if torch.is_tensor(v) else v) for k, v in t.items()} for t in targets]
                with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                    losses = model(images, targets)
                loss = sum(losses.values())
                if not torch.isfinite(loss):
                    terms = ", ".join(f"{k}={float(v):.4g}" for k, v in losses.items())
                    raise FloatingPointError(
                        f"step {step}: loss is {float(loss)} ({terms}); lower train.lr or set train.grad_clip"
                    )
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                if tcfg["grad_clip"]:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(model.parameters(), tcfg["grad_clip"])
                scaler.step(optimizer)
                scaler.update()
                step += 1
                values = {k: float(v.detach()) for k, v in losses.items()}
                for k, v in values.items():
                    epoch_sums[k] = epoch_sums.get(k, 0.0) + v
                    writer.add_scalar(f"train/{k}", v, step)
                writer.add_scalar("train/lr", lr, step)
                progress.set_postfix(
                    {
                        "epoch": f"{epoch + 1}/{tcfg['epochs']}",
                        **{k: f"{v:.3f}" for k, v in values.items()},
                        "lr": f"{lr:.2g}",
                    }
                )
                progress.update(1)
                end_of_epoch = step % steps_per_epoch == 0
                if end_of_epoch:
                    row: dict[str, Any] = {"epoch": epoch + 1}
                    row.update({k: v / steps_per_epoch for k, v in epoch_sums.items()})
                    row["lr"] = lr
                    epoch_sums = {}
                    evaluate_now = (epoch + 1) % tcfg["eval_interval"] == 0 or step == total_steps
                    if evaluate_now:
                        last_report, last_predictions = evaluate_model(model, val_set, config, device, amp)
                        row.update(last_report["metrics"])
                        for key, value in last_report["metrics"].items():
                            writer.add_scalar(f"val/{key}", value, step)
                        if verbose:
                            progress.write(
                                f"epoch {epoch + 1}: "
                                + ", ".join(f"{k} {last_report['metrics'][k]:.3f}" for k in ("AP", "AP50", "AP75"))
                            )
                    row["time"] = time.perf_counter() - start_time
                    rows.append(row)
                    write_results_csv(rows, output / "results.csv")
                    plot_results(rows, output / "results.png")
                    if (
                        evaluate_now
                        and math.isfinite(last_report["metrics"]["AP"])
                        and last_report["metrics"]["AP"] > best_ap
                    ):
                        best_ap = last_report["metrics"]["AP"]
                        save_atomic(
                            {**meta, "model": model.state_dict(), "metrics": last_report["metrics"]},
                            output / "weights" / "best.pt",
                        )
                if end_of_epoch or step % tcfg["checkpoint_interval"] == 0 or step == total_steps:
                    checkpoint(output / "weights" / "last.pt", epoch_sums)
                if stop_after_steps is not None and step >= stop_after_steps and step < total_steps:
                    raise StopTraining(f"stopped after step {step}")
    finally:
        progress.close()
        writer.close()

    if last_report is None:
        last_report, last_predictions = evaluate_model(model, val_set, config, device, amp)
    metrics = last_report["metrics"]
    write_eval_artifacts(last_report, last_predictions, val_set, output, tcfg["num_plot_images"])
    elapsed = time.perf_counter() - start_time
    # JSON has no NaN: a metric without ground truth (e.g. APl with no large object) is null.
    finite = {k: (metrics[k] if math.isfinite(metrics[k]) else None) for k in METRIC_KEYS}
    (output / "metrics.json").write_text(json.dumps(finite, indent=2))
    if verbose:
        print(per_class_table(last_report, class_names))
        print(
            "final: " + ", ".join(f"{k} {metrics[k]:.3f}" for k in METRIC_KEYS) + f" ({elapsed:.0f} s this run)\n"
            f"results in {output}"
        )
    return {"output": output, "metrics": metrics, "elapsed": elapsed}


def write_results_csv(rows: list[dict[str, Any]], path: Path) -> None:
    """One row per epoch; columns are the union over rows (evaluation may skip epochs)."""
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    tmp = path.with_suffix(".csv.tmp")
    with tmp.open("w", newline="") as handle:
        out = csv.DictWriter(handle, fieldnames=columns)
        out.writeheader()
        for row in rows:
            out.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    tmp.replace(path)
