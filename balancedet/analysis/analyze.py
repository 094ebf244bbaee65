"""``balancedet analyze``: see a dataset's and a dense detector's imbalance, and what each remedy does to it.

Without a checkpoint, the dataset (its training split) and the configured priors and assigner
(``balancedet.analysis.dataset_stats``). With a checkpoint, also the model on the validation split:
every non-ignored anchor's loss and kind (hard iff ``p_t < 0.5``, ``balancedet.analysis.kinds``)
under CE, the focal loss and GHM-C (``loss_shares``), the gradient-norm density with the three
reweightings (``gradient_density``), the focal paper's cumulative loss curves (``cumulative_loss``),
the IoU spread of the hardest negatives against random ones (``hard_negatives``), and per-class AP
against the class's training frequency. The checkpoint part reads a dense head's anchors
(RetinaNet, GFL); a two-stage checkpoint is refused with an error saying so.

Writes PNGs, ``analysis.json`` (every number the figures show) and ``report.html`` (one page, the
images embedded) into a new run folder (``runs/analyze/exp``, ``exp2``, ...).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from balancedet.analysis import plots
from balancedet.analysis.cumulative_loss import CumulativeLoss
from balancedet.analysis.dataset_stats import (
    anchor_shapes,
    assignment_statistics,
    box_shapes,
    boxes_per_image,
    class_frequencies,
    resized_boxes,
)
from balancedet.analysis.gradient_density import focal_gradient_ratio
from balancedet.analysis.hard_negatives import HardNegativeSpread
from balancedet.analysis.kinds import KIND_NAMES
from balancedet.analysis.loss_shares import REMEDIES, ShareAccumulator, summary
from balancedet.analysis.report import Section, write_html, write_json
from balancedet.data import DetectionDataset, RecordSet, load_data_spec
from balancedet.engine.build import build_model
from balancedet.engine.checkpoint import load_model
from balancedet.engine.data import eval_loader, make_transform
from balancedet.engine.evaluate import coco_evaluate, coco_results, to_original
from balancedet.engine.runtime import increment_dir, resolve_device
from balancedet.losses import binary_cross_entropy
from balancedet.losses.backend import get_compile, set_compile
from balancedet.models.batching import batch_images

__all__ = ["DENSE_TYPES", "analysis_config", "analyze", "analyze_model", "analyze_dataset"]

#: Model types whose checkpoints the model part reads (a dense head's anchors).
DENSE_TYPES = ("retinanet", "gfl")


def analysis_config(data: str | None, config: str | None, overrides: Sequence[str]) -> tuple[dict[str, Any], list[str]]:
    """The configuration ``balancedet train`` would use for the same ``--data``, ``--config`` and
    ``--set``: the user's own data without a preset gets the recipe fitted to it."""
    from balancedet.cli import DEFAULT_PRESET, USER_DATA_PRESET
    from balancedet.data.spec import BUILTIN
    from balancedet.engine.config import load_config
    from balancedet.engine.recipe import explicit_keys, fit_recipe

    given = list(overrides)
    full = ([f"data.dataset={data}"] if data else []) + given
    fit = data is not None and config is None and data not in BUILTIN
    cfg = load_config(config or (USER_DATA_PRESET if fit else DEFAULT_PRESET), full)
    if not fit:
        return cfg, []
    return fit_recipe(cfg, load_data_spec(data), explicit_keys(given))


def _first(records: RecordSet, max_images: int | None) -> RecordSet:
    return records if max_images is None else dataclasses.replace(records, records=records.records[:max_images])


def _training_assignment(model: nn.Module, kind: str):
    """``(prior generator, assign(priors, targets), assigner, what)`` the model trains its first
    classifier on: a dense head's anchors, or a two-stage model's RPN anchors."""
    if kind == "faster_rcnn":
        rpn = model.rpn
        return rpn.prior_generator, (lambda p, t: rpn.criterion.match(p, t)[0]), rpn.criterion.assigner, "RPN anchors"
    return model.prior_generator, model.criterion.assign, model.criterion.assigner, "head anchors"


def analyze_dataset(cfg: dict[str, Any], model: nn.Module, records: RecordSet, device: torch.device) -> dict[str, Any]:
    """The no-checkpoint part on ``records`` (the training split): class, box and assignment statistics."""
    data = cfg["data"]
    images = resized_boxes(records, data["min_size"], data["max_size"])
    labels = np.concatenate([lab.numpy() for _, _, lab in images]) if images else np.zeros(0, np.int64)
    boxes = np.concatenate([b.numpy() for _, b, _ in images]) if images else np.zeros((0, 4))
    priors, assign, assigner, what = _training_assignment(model, cfg["model"]["type"])
    pos_iou = getattr(assigner, "pos_iou", None)
    assignment = assignment_statistics(images, priors, assign, pos_iou, data["size_divisible"], device=device)
    return {
        "split": "train",
        "images": len(images),
        "boxes": int(len(labels)),
        "class_frequencies": class_frequencies(labels, records.class_names),
        "boxes_per_image": boxes_per_image(np.array([len(lab) for _, _, lab in images], dtype=np.int64)),
        "box_shapes": box_shapes(boxes),
        "anchors": {**anchor_shapes(priors), "assigner": type(assigner).__name__, "of": what},
        **assignment,
    }


@torch.no_grad()
def analyze_model(
    model: nn.Module, cfg: dict[str, Any], dataset: DetectionDataset, device: torch.device
) -> dict[str, Any]:
    """The checkpoint part: one pass of the model over ``dataset`` in eval mode, without gradients."""
    model.eval()
    previous = get_compile()
    # a dozen (alpha, gamma) settings, each called once a batch: compiling each costs more than it saves
    # and runs into dynamo's recompilation limit
    set_compile("never")
    try:
        return _model_pass(model, cfg, dataset, device)
    finally:
        set_compile(previous)


def _model_pass(
    model: nn.Module, cfg: dict[str, Any], dataset: DetectionDataset, device: torch.device
) -> dict[str, Any]:
    shares, cumulative, spread = ShareAccumulator(), CumulativeLoss(), HardNegativeSpread()
    predictions = []
    for images, targets in eval_loader(dataset, cfg):
        batch, sizes = batch_images(images.to(device), model.size_divisible)
        cls_levels, reg_levels, priors = model.head_outputs(batch)
        detections = model.predict(cls_levels, reg_levels, priors, sizes)
        gt = [{"boxes": t["boxes"].to(device), "labels": t["labels"].to(device)} for t in targets]
        assign = model.criterion.assign(priors, gt)
        logits = torch.cat(cls_levels, 1).float()
        k = logits.shape[-1]
        labels = torch.where(assign.labels < 0, k, assign.labels)
        valid = assign.valid
        shares.add(logits[valid], labels[valid])
        # the confidence loss OHEM and SSD rank negatives by
        ce = binary_cross_entropy(logits.reshape(-1, k), labels.reshape(-1), reduction="none").sum(1)
        ce = ce.view(labels.shape)
        for b, (target, det) in enumerate(zip(targets, detections, strict=True)):
            cumulative.add(logits[b][valid[b]], labels[b][valid[b]])
            spread.add(ce[b], assign.max_iou[b], assign.negative[b], int(assign.positive[b].sum()))
            boxes = to_original(det["boxes"].float().cpu(), target)
            predictions.append(
                (target, {"boxes": boxes, "scores": det["scores"].float().cpu(), "labels": det["labels"].cpu()})
            )
    result = shares.result()
    density = result.pop("density")
    edges = np.asarray(density["edges"])
    centres = torch.from_numpy((edges[:-1] + edges[1:]) / 2)
    density["focal_ratio"] = focal_gradient_ratio(centres, 2.0).tolist()
    report = coco_evaluate(
        dataset.ground_truth(), coco_results(predictions, dataset.category_ids), dataset.category_ids
    )
    return {
        "split": "val",
        "images": len(dataset),
        "hardness_rule": "hard iff p_t < 0.5: a positive whose class scores below 0.5, a negative with a class at "
        "0.5 or more (balancedet.analysis.kinds)",
        "loss_shares": result,
        "gradient_density": density,
        "cumulative_loss": cumulative.result(),
        "hard_negatives": spread.result(),
        "metrics": report["metrics"],
        "per_class_ap": [None if not np.isfinite(ap) else ap for ap in report["per_class_ap"]],
    }


def _summary(dataset: dict[str, Any], model: dict[str, Any] | None) -> dict[str, Any]:
    coverage = dataset["coverage"]
    out: dict[str, Any] = {
        "class_max_min_ratio": dataset["class_frequencies"]["max_min_ratio"],
        "boxes_without_positive": coverage["none"],
        "boxes_with_low_quality_only": coverage["low_quality_only"],
    }
    if model is None:
        return out
    by_remedy = summary(model["loss_shares"])
    hard, drawn = model["hard_negatives"]["hard"], model["hard_negatives"]["random"]
    out.update(
        {
            "remedies": by_remedy,
            "hard_negatives_above_overlap": hard["above_overlap"],
            "random_negatives_above_overlap": drawn["above_overlap"],
            "checks": {
                "negatives_dominate_ce": by_remedy["ce"]["negative_share"] > 0.5,
                "easy_negatives_dominate_ce_negatives": by_remedy["ce"]["easy_share_of_negative_loss"] > 0.5,
                "focal_moves_share_to_hard": by_remedy["focal"]["hard_share"] > by_remedy["ce"]["hard_share"],
                "hard_negatives_spread_wider": (hard["above_overlap"] or 0.0) > (drawn["above_overlap"] or 0.0),
            },
        }
    )
    return out


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _num(value: float | None, fmt: str = ".3g") -> str:
    return "-" if value is None else format(value, fmt)


def _dataset_sections(part: dict[str, Any], folder: Path) -> list[Section]:
    freq, per_image, shapes, anchors = (
        part[k] for k in ("class_frequencies", "boxes_per_image", "box_shapes", "anchors")
    )
    coverage, levels = part["coverage"], part["levels"]
    files = {name: folder / f"{name}.png" for name in ("class_frequencies", "boxes_per_image", "box_shapes")}
    files.update({name: folder / f"{name}.png" for name in ("positives_per_box", "fpn_levels")})
    plots.plot_class_frequencies(freq, files["class_frequencies"])
    plots.plot_boxes_per_image(per_image, files["boxes_per_image"])
    plots.plot_box_shapes(shapes, anchors, files["box_shapes"])
    plots.plot_positives_per_box(coverage, files["positives_per_box"])
    plots.plot_levels(levels, files["fpn_levels"])
    threshold = f"IoU >= {part['pos_iou']:g}" if part["pos_iou"] is not None else "a positive (no fixed threshold)"
    absent = f"; classes without a box: {', '.join(freq['absent'])}" if freq["absent"] else ""
    return [
        Section(
            "class-frequencies",
            "Class frequencies",
            [
                f"{part['boxes']} boxes in {part['images']} {part['split']} images; most / least frequent class: "
                f"{_num(freq['max_min_ratio'])}{absent}."
            ],
            [["class", "boxes"], *([n, str(freq["counts"][n])] for n in freq["order"])],
            [files["class_frequencies"]],
        ),
        Section(
            "boxes-per-image",
            "Boxes per image",
            [
                f"mean {_num(per_image['mean'])}, median {_num(per_image['median'])}, max {per_image['max']}; "
                f"{per_image['without_boxes']} images without a box."
            ],
            images=[files["boxes_per_image"]],
        ),
        Section(
            "box-shapes",
            "Box sizes and aspect ratios against the anchors",
            [
                f"Box size sqrt(w h) in input pixels: 5% {_num(shapes['size']['p5'])}, median "
                f"{_num(shapes['size']['p50'])}, 95% {_num(shapes['size']['p95'])}; aspect ratio h / w: median "
                f"{_num(shapes['ratio']['p50'])}. Anchors ({anchors['of']}): sizes "
                f"{', '.join(f'{s:.0f}' for s in anchors['sizes'])}; ratios "
                f"{', '.join(f'{r:g}' for r in anchors['ratios'])}."
            ],
            images=[files["box_shapes"]],
        ),
        Section(
            "anchor-coverage",
            "Boxes without a positive anchor",
            [
                f"The configured assigner ({anchors['assigner']}) on the {anchors['of']}: "
                f"of {coverage['boxes']} boxes, "
                f"{_pct(coverage['above_threshold'])} get a positive at {threshold}, "
                f"{_pct(coverage['low_quality_only'])} only low-quality matches (their best anchors below the "
                f"threshold), {_pct(coverage['none'])} no positive at all. Positives per box: mean "
                f"{_num(coverage['positives_per_box']['mean'])}, "
                f"median {_num(coverage['positives_per_box']['median'])}."
            ],
            images=[files["positives_per_box"]],
        ),
        Section(
            "fpn-levels",
            "Foreground, background and ignored anchors per FPN level",
            ["Summed over the split's images, as the assigner labels them in training."],
            [["stride", "foreground", "background", "ignored", "background / foreground"]]
            + [
                [
                    str(lv["stride"]),
                    str(lv["foreground"]),
                    str(lv["background"]),
                    str(lv["ignored"]),
                    _num(lv["background_per_foreground"], ".0f"),
                ]
                for lv in levels
            ],
            [files["fpn_levels"]],
        ),
    ]


def _model_sections(
    part: dict[str, Any], dataset: dict[str, Any], folder: Path, class_names: list[str]
) -> list[Section]:
    shares, density = part["loss_shares"], part["gradient_density"]
    cumulative, spread = part["cumulative_loss"], part["hard_negatives"]
    names = ("loss_shares", "gradient_density", "cumulative_loss", "hard_negatives", "ap_vs_frequency")
    files = {name: folder / f"{name}.png" for name in names}
    ap_section = {
        "classes": list(class_names),
        "ap": dict(zip(class_names, part["per_class_ap"], strict=True)),
        "train_boxes": dataset["class_frequencies"]["counts"],
    }
    plots.plot_kind_shares(shares, files["loss_shares"])
    plots.plot_gradient_density(density, files["gradient_density"])
    plots.plot_cumulative_loss(cumulative, files["cumulative_loss"])
    plots.plot_iou_spread(spread, files["hard_negatives"])
    plots.plot_ap_vs_frequency(ap_section, files["ap_vs_frequency"])
    header = ["loss", *(f"{k} share" for k in KIND_NAMES)]
    rows = [[name, *(_pct(shares[name][k]["share"]) for k in KIND_NAMES)] for name in REMEDIES]
    counts = ", ".join(f"{k} {shares['ce'][k]['count']}" for k in KIND_NAMES)
    gammas = cumulative["gammas"]
    return [
        Section(
            "loss-shares",
            "Loss shares of the four kinds",
            [
                f"{part['images']} {part['split']} images; every non-ignored anchor is one example, its loss summed "
                f"over the classes. Kinds: {part['hardness_rule']}. Counts: {counts}. CE: plain sigmoid cross entropy; "
                "focal loss: alpha 0.25, gamma 2; GHM-C: 30 bins, one density histogram over the whole split."
            ],
            [header, *rows],
            [files["loss_shares"]],
        ),
        Section(
            "gradient-density",
            "Gradient-norm density and reweighting",
            [
                "g = |p - y| of every (anchor, class) element (GHM eq. 4). Right: the factor by which each loss "
                "reweighs an element of norm g against CE (focal loss: |dFL/dx| / |dCE/dx|; GHM-C: beta = N / "
                "(R_j n_nonempty))."
            ],
            images=[files["gradient_density"]],
        ),
        Section(
            "cumulative-loss",
            "Cumulative loss of positives and negatives",
            [
                "Focal paper, fig. 4: per-anchor focal loss (no alpha), sorted, normalised; the table gives the share "
                f"of the loss held by the hardest 20% ({cumulative['negative']['count']} of "
                f"{cumulative['negative']['seen']} negatives sampled, {cumulative['positive']['count']} positives)."
            ],
            [["gamma", "positives' hardest 20%", "negatives' hardest 20%"]]
            + [
                [
                    f"{g:g}",
                    _pct(cumulative["positive"]["hardest_20pct"][str(g)]),
                    _pct(cumulative["negative"]["hardest_20pct"][str(g)]),
                ]
                for g in gammas
            ],
            [files["cumulative_loss"]],
        ),
        Section(
            "hard-negatives",
            "IoU of the hardest negatives against random ones",
            [
                f"Libra R-CNN, sec. 3.1 / fig. 2: {spread['rule']}; IoU is each negative's best IoU with a "
                "ground-truth box."
            ],
            [["negatives", "count", "mean IoU", f"IoU > {spread['overlap_iou']}"]]
            + [
                [key, str(spread[key]["count"]), _num(spread[key]["mean_iou"]), _pct(spread[key]["above_overlap"])]
                for key in ("hard", "random")
            ],
            [files["hard_negatives"]],
        ),
        Section(
            "per-class-ap",
            "Per-class AP against training frequency",
            [
                f"COCO AP on the {part['split']} split: {_num(part['metrics']['AP'])} "
                f"(AP50 {_num(part['metrics']['AP50'])})."
            ],
            [["class", "training boxes", "AP"]]
            + [[n, str(ap_section["train_boxes"][n]), _num(ap_section["ap"][n])] for n in class_names],
            [files["ap_vs_frequency"]],
        ),
    ]


def analyze(
    data: str | None = None,
    config: str | None = None,
    checkpoint: str | None = None,
    output: str | None = None,
    overrides: Sequence[str] = (),
    device: str = "auto",
    max_images: int | None = None,
) -> Path:
    """``balancedet analyze``; returns the run folder. ``max_images`` keeps the first images of each split."""
    if max_images is not None and max_images < 1:
        raise ValueError(f"--max-images must be >= 1, got {max_images}")
    dev = resolve_device(device)
    if checkpoint is not None:
        if config is not None or overrides:
            raise ValueError("--checkpoint carries its own configuration: drop --config/--set")
        model, ckpt = load_model(checkpoint, dev)
        cfg = ckpt["config"]
        if cfg["model"]["type"] not in DENSE_TYPES:
            raise ValueError(
                f"checkpoint {checkpoint}: model type {cfg['model']['type']!r}; the checkpoint part of analyze "
                "supports "
                f"dense detectors only ({', '.join(DENSE_TYPES)}); run it without --checkpoint for the dataset part"
            )
        if data is not None:
            cfg["data"]["dataset"] = data
        lines: list[str] = []
    else:
        cfg, lines = analysis_config(data, config, overrides)
    spec = load_data_spec(cfg["data"]["dataset"])
    train_records = _first(spec.load("train", skip_bad=cfg["data"]["skip_bad"]), max_images)
    if checkpoint is not None and list(train_records.class_names) != list(ckpt["class_names"]):
        raise ValueError(
            f"dataset {cfg['data']['dataset']}: classes {list(train_records.class_names)} differ from the checkpoint's "
            f"{list(ckpt['class_names'])} ({checkpoint})"
        )
    if checkpoint is None:
        model = build_model(cfg["model"], train_records.num_classes).to(dev)
    for line in lines:
        print(line, flush=True)
    folder = increment_dir(Path(output or "runs/analyze/exp"))
    folder.mkdir(parents=True)
    dataset_part = analyze_dataset(cfg, model, train_records, dev)
    analysis: dict[str, Any] = {"config": cfg, "checkpoint": checkpoint, "dataset": dataset_part}
    sections = _dataset_sections(dataset_part, folder)
    model_part = None
    if checkpoint is not None:
        val = _first(spec.load("val", skip_bad=cfg["data"]["skip_bad"]), max_images)
        dataset = DetectionDataset.from_record_set(val, make_transform(cfg["data"], train=False))
        model_part = analyze_model(model, cfg, dataset, dev)
        analysis["model"] = model_part
        sections += _model_sections(model_part, dataset_part, folder, list(val.class_names))
    analysis["summary"] = _summary(dataset_part, model_part)
    write_json(analysis, folder / "analysis.json")
    intro = [
        f"dataset {cfg['data']['dataset']}, model {cfg['model']['type']}"
        + (f", checkpoint {checkpoint}" if checkpoint else " (no checkpoint: the dataset and the configured priors)")
    ]
    write_html("balancedet analyze", intro, sections, folder / "report.html")
    for line in _summary_lines(analysis["summary"]):
        print(line)
    print(f"results in {folder}")
    return folder


def _summary_lines(summary_part: dict[str, Any]) -> list[str]:
    lines = [
        f"boxes with no positive anchor {_pct(summary_part['boxes_without_positive'])}, only low-quality matches "
        f"{_pct(summary_part['boxes_with_low_quality_only'])}; "
        f"classes max/min {_num(summary_part['class_max_min_ratio'])}"
    ]
    if "remedies" in summary_part:
        for name, values in summary_part["remedies"].items():
            lines.append(
                f"{name}: negatives {_pct(values['negative_share'])} of the loss (easy ones "
                f"{_pct(values['easy_share_of_negative_loss'])} of that), hard examples {_pct(values['hard_share'])}"
            )
        lines.append(
            f"negatives above IoU 0.05: hardest {_pct(summary_part['hard_negatives_above_overlap'])}, random "
            f"{_pct(summary_part['random_negatives_above_overlap'])}"
        )
    return lines
