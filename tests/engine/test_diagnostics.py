"""The training-time imbalance diagnostics: the criteria's per-kind records against the papers' losses,
the losses unchanged by the switch, and the columns of a tiny run against a recomputation."""

import copy
import csv
import math
import warnings
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn
from torchvision.ops import box_iou

from balancedet.analysis.kinds import (
    EASY_NEGATIVE,
    EASY_POSITIVE,
    HARD_NEGATIVE,
    HARD_POSITIVE,
    KIND_NAMES,
    example_kinds,
    kind_shares,
)
from balancedet.engine.build import build_model
from balancedet.engine.checkpoint import load_checkpoint
from balancedet.engine.config import load_config
from balancedet.engine.data import epoch_loader, load_split
from balancedet.engine.diagnostics import ImbalanceDiagnostics, epoch_columns
from balancedet.engine.plots import diagnostics_panels
from balancedet.engine.train import train
from balancedet.losses import GHMC, BinaryCrossEntropyLoss, CrossEntropyLoss, FocalLoss, QualityFocalLoss
from balancedet.models.batching import batch_images
from balancedet.models.detector import KindStats, call_loss, element_losses, record_kinds, softmax_kinds
from tests.engine.conftest import TINY_RUN
from tests.engine.test_train import KillAfter, Killed
from tests.losses.references import focal, one_hot, quality_focal, softmax_focal
from tests.losses.test_ghm import RefDensity, ref_ghmc

NUM_CLASSES = 3


def logit(p):
    return torch.logit(torch.as_tensor(p, dtype=torch.float64)).float()


def sigmoid_inputs():
    """``(logits (N, 3), labels (N,), weight (N,))``: one example of each kind by hand (a positive of class 0
    at p 0.9; one of class 2 at p 0.1 beside a class-0 score of 0.6; a negative whose best score is 0.2; one
    with a class at 0.7), then 28 random rows; the last 3 rows are ignored (weight 0)."""
    hand = logit([[0.9, 0.1, 0.2], [0.6, 0.3, 0.1], [0.1, 0.2, 0.05], [0.1, 0.7, 0.2]])
    g = torch.Generator().manual_seed(0)
    logits = torch.cat((hand, 3 * torch.randn(28, NUM_CLASSES, generator=g)))
    labels = torch.cat((torch.tensor([0, 2, 3, 3]), torch.randint(0, NUM_CLASSES + 1, (28,), generator=g)))
    weight = torch.ones(32)
    weight[-3:] = 0.0
    return logits, labels, weight


def check_record(stats, kinds, reference, weight, avg_factor, loss_weight=1.0):
    """``stats`` against ``kind_shares`` of the float64 per-example ``reference`` loss: same counts, same
    shares, and parts equal to the per-kind sums divided by the avg_factor (times the loss weight)."""
    expected = kind_shares(kinds, torch.from_numpy(reference), weight)
    assert stats.count.tolist() == [expected[k]["count"] for k in KIND_NAMES]
    assert all(c > 0 for c in stats.count.tolist())  # every kind is present in the inputs
    shares = (stats.loss / stats.loss.sum()).tolist()
    assert shares == pytest.approx([expected[k]["share"] for k in KIND_NAMES], rel=1e-5, abs=1e-9)
    keep = weight.numpy() > 0
    sums = [reference[keep & (kinds.numpy() == i)].sum() for i in range(4)]
    assert stats.loss.tolist() == pytest.approx([loss_weight * s / avg_factor for s in sums], rel=1e-5, abs=1e-9)


def test_focal_loss_parts_are_eq_5_per_kind():
    # Lin et al., arXiv 1708.02002, eq. 5 with the paper's alpha 0.25, gamma 2 (Table 1b); a loss weight of 2
    logits, labels, weight = sigmoid_inputs()
    loss, avg = FocalLoss(alpha=0.25, gamma=2.0, loss_weight=2.0), torch.tensor(6.0)
    trained = call_loss(loss, logits, labels, weight, avg)
    kinds = example_kinds(logits, labels)
    assert kinds[:4].tolist() == [EASY_POSITIVE, HARD_POSITIVE, EASY_NEGATIVE, HARD_NEGATIVE]
    stats = record_kinds(loss, logits, labels, weight, trained, kinds)
    reference = focal(logits.double().numpy(), one_hot(labels.numpy(), NUM_CLASSES), 0.25, 2.0).sum(1)
    check_record(stats, kinds, reference, weight, 6.0, loss_weight=2.0)
    assert float(stats.loss.sum()) == pytest.approx(float(trained), rel=1e-6)


def test_alpha_balanced_ce_parts_are_eq_3_per_kind():
    # eq. 3 of arXiv 1708.02002, alpha 0.75 (Table 1a): the focal loss at gamma 0
    logits, labels, weight = sigmoid_inputs()
    loss = BinaryCrossEntropyLoss(alpha=0.75)
    trained = call_loss(loss, logits, labels, weight, torch.tensor(4.0))
    kinds = example_kinds(logits, labels)
    stats = record_kinds(loss, logits, labels, weight, trained, kinds)
    reference = focal(logits.double().numpy(), one_hot(labels.numpy(), NUM_CLASSES), 0.75, 0.0).sum(1)
    check_record(stats, kinds, reference, weight, 4.0)


def test_quality_focal_loss_parts_are_gfl_eq_5_per_kind():
    # Li et al., arXiv 2006.04388, eq. 5 with beta 2: soft targets (the IoU) at the positives' classes
    logits, labels, weight = sigmoid_inputs()
    scores = torch.rand(32, generator=torch.Generator().manual_seed(1))
    loss = QualityFocalLoss(beta=2.0)
    trained = call_loss(loss, logits, (labels, scores), weight, torch.tensor(5.0))
    kinds = example_kinds(logits, labels)
    stats = record_kinds(loss, logits, (labels, scores), weight, trained, kinds)
    reference = quality_focal(logits.double().numpy(), labels.numpy(), scores.double().numpy(), 2.0).sum(1)
    check_record(stats, kinds, reference, weight, 5.0)


def test_softmax_kinds_take_p_t_as_the_softmax_probability_of_the_label():
    # background at 0: a negative at p_bg 0.4 is hard although no class reaches 0.5; a positive at 0.45
    # is hard although it is the arg max
    probs = torch.tensor([[0.4, 0.3, 0.3], [0.6, 0.3, 0.1], [0.2, 0.7, 0.1], [0.2, 0.45, 0.35]])
    kinds = softmax_kinds(probs.log(), torch.tensor([0, 0, 1, 1]))
    assert kinds.tolist() == [HARD_NEGATIVE, EASY_NEGATIVE, EASY_POSITIVE, HARD_POSITIVE]


def test_softmax_ce_parts_are_the_roi_heads_cross_entropy_per_kind():
    # the two-stage box head: softmax CE over K + 1 classes, background at 0, divided by the sampled RoIs
    g = torch.Generator().manual_seed(2)
    logits = torch.cat(
        (
            torch.tensor([[3.0, 0.0, 0.0], [0.0, 0.2, 0.1], [0.0, 3.0, 0.0], [2.0, 0.0, 1.0]]),
            2 * torch.randn(20, NUM_CLASSES, generator=g),
        )
    )
    labels = torch.cat((torch.tensor([0, 0, 1, 2]), torch.randint(0, NUM_CLASSES, (20,), generator=g)))
    weight = torch.ones(24)
    weight[-2:] = 0.0
    loss = CrossEntropyLoss()
    trained = call_loss(loss, logits, labels, weight, weight.sum())
    kinds = softmax_kinds(logits, labels)
    stats = record_kinds(loss, logits, labels, weight, trained, kinds)
    reference = softmax_focal(logits.double().numpy(), labels.numpy(), 0.0, None)
    check_record(stats, kinds, reference, weight, 22.0)


def valid_of(weight):
    """``(N, 3)`` bool: the elements of the rows with weight > 0."""
    return np.broadcast_to((weight.numpy() > 0)[:, None], (len(weight), NUM_CLASSES))


def test_ghm_c_parts_are_eq_8_per_kind_from_the_training_calls_weights():
    # Li, Liu, Wang, arXiv 1811.05181, eq. 8 with the authors' EMA (momentum 0.75, sec. 3.3): the second of
    # two steps, so the weights come from a running histogram that the recording must not move again. In
    # float64: the hand-made rows' gradient norms (0.1, 0.2, ...) lie on edges of the 30 bins, where float32
    # and the float64 reference could bin differently.
    loss, density = GHMC(bins=30, momentum=0.75), RefDensity(30, 0.75)
    first, labels0, weight0 = sigmoid_inputs()
    first = 0.5 * first.double().flip(0)
    call_loss(loss, first, labels0, weight0, None)
    ref_ghmc(first.numpy(), one_hot(labels0.numpy(), NUM_CLASSES), valid_of(weight0), 30, density)
    logits, labels, weight = sigmoid_inputs()
    logits = logits.double()
    trained = call_loss(loss, logits, labels, weight, torch.tensor(6.0))  # self-normalising: no avg_factor
    running, updates = loss.running_count.clone(), loss.num_updates.clone()
    terms, _, _ = ref_ghmc(logits.numpy(), one_hot(labels.numpy(), NUM_CLASSES), valid_of(weight), 30, density)
    reference = terms.sum(1)
    assert float(trained) == pytest.approx(reference.sum(), rel=1e-5)
    per_example = element_losses(loss, logits, labels, weight)
    assert per_example.tolist() == pytest.approx(reference.tolist(), rel=1e-5, abs=1e-9)
    kinds = example_kinds(logits, labels)
    stats = record_kinds(loss, logits, labels, weight, trained, kinds)
    check_record(stats, kinds, reference, weight, 1.0)  # the terms are already divided by N_valid
    assert float(stats.loss.sum()) == pytest.approx(float(trained), rel=1e-6)
    assert torch.equal(loss.running_count, running) and torch.equal(loss.num_updates, updates)
    assert loss.num_updates.item() == 2  # the histogram moved in the two training calls only
    # the callback then writes the parts, without the warning of a loss without an element-wise form
    criterion = SimpleNamespace(record_stats=True, stats=stats, stats_name="cls", cls_loss=loss)
    callback, state = ImbalanceDiagnostics(), SimpleNamespace(sums={}, bad_streak=0)
    callback.criteria = [criterion]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        callback.on_step_end(state)
    assert sum(state.sums[f"cls_{k}_loss"] for k in KIND_NAMES) == pytest.approx(float(trained), rel=1e-6)


class NoElementForm(nn.Module):
    """A loss with neither ``reduction`` nor ``element_losses``: the diagnostics can only count its examples."""

    def forward(self, pred, target, weight=None, avg_factor=None):
        return (pred.sigmoid() * weight[:, None]).sum()


def test_a_loss_without_an_element_wise_form_records_counts_only():
    logits, labels, weight = sigmoid_inputs()
    loss = NoElementForm()
    trained = call_loss(loss, logits, labels, weight, None)
    kinds = example_kinds(logits, labels)
    assert element_losses(loss, logits, labels, weight) is None
    stats = record_kinds(loss, logits, labels, weight, trained, kinds)
    assert stats.loss is None
    assert stats.count.tolist() == [kind_shares(kinds, torch.zeros(32), weight)[k]["count"] for k in KIND_NAMES]


def test_the_callback_warns_and_writes_counts_and_fraction_only_for_such_a_loss():
    criterion = SimpleNamespace(record_stats=False, stats=None, stats_name="cls", cls_loss=NoElementForm())
    model = SimpleNamespace(modules=lambda: [nn.Identity(), criterion])
    state = SimpleNamespace(model=model, sums={"loss_cls": 1.0}, rows=[], bad_streak=0)
    diagnostics = ImbalanceDiagnostics()
    diagnostics.on_train_start(state)
    assert criterion.record_stats
    criterion.stats = KindStats(torch.tensor([1.0, 3.0, 90.0, 6.0], dtype=torch.float64), None)
    with pytest.warns(RuntimeWarning, match="NoElementForm has no element-wise form"):
        diagnostics.on_step_end(state)
    assert criterion.stats is None  # consumed: a step that does not call the criterion adds nothing
    diagnostics.on_step_end(state)
    assert state.sums == {
        "loss_cls": 1.0,
        "cls_easy_pos_count": 1.0,
        "cls_hard_pos_count": 3.0,
        "cls_easy_neg_count": 90.0,
        "cls_hard_neg_count": 6.0,
    }
    state.rows.append(dict(state.sums))
    diagnostics.on_epoch_end(state)
    assert state.rows[-1]["cls_fg_fraction"] == pytest.approx(4 / 100)
    assert not any(k.endswith("_share") for k in state.rows[-1])
    diagnostics.teardown(state)
    assert not criterion.record_stats


def test_epoch_columns_are_ratios_of_the_rows_means():
    row = {f"rpn_{k}_count": c for k, c in zip(KIND_NAMES, (10.0, 30.0, 200.0, 16.0), strict=True)}
    row.update({f"rpn_{k}_loss": v for k, v in zip(KIND_NAMES, (0.1, 0.5, 0.2, 0.2), strict=True)})
    columns = epoch_columns(row, "rpn")
    assert [columns[f"rpn_{k}_share"] for k in KIND_NAMES] == pytest.approx([0.1, 0.5, 0.2, 0.2])
    assert columns["rpn_fg_fraction"] == pytest.approx(40 / 256)
    assert epoch_columns(row, "roi") == {}
    assert epoch_columns({**row, **{f"rpn_{k}_loss": 0.0 for k in KIND_NAMES}}, "rpn")["rpn_easy_pos_share"] == 0.0
    assert math.isnan(epoch_columns({f"rpn_{k}_count": 0.0 for k in KIND_NAMES}, "rpn")["rpn_fg_fraction"])


# ---- the criteria of every model type ---------------------------------------------------------------------

DENSE = [o for o in TINY_RUN if not o.startswith("model.anchor_sizes")]
TWO_STAGE = [
    "model.fpn_channels=16",
    "model.representation_size=32",
    "model.anchor_sizes=[8, 16, 32, 64, 128]",
    *[o for o in TINY_RUN if o.startswith(("data.", "train."))],
]
MODELS = {
    "retinanet": ("retinanet_digits", TINY_RUN),
    "retinanet_ohem": ("retinanet_digits", [*TINY_RUN, "model.sampler=ohem"]),
    "retinanet_ghmc": ("retinanet_digits", [*TINY_RUN, "model.cls_loss=ghmc"]),
    "gfl": ("gfl_digits", DENSE),
    "faster_rcnn": ("faster_rcnn_digits", TWO_STAGE),
}


def recording(model):
    return [m for m in model.modules() if hasattr(m, "record_stats")]


def losses_of(model, images, targets, record):
    for criterion in recording(model):
        criterion.record_stats, criterion.stats = record, None
    torch.manual_seed(0)  # the RPN's and the RoI head's random samplers
    return model(images, targets)


@pytest.mark.parametrize("name", MODELS)
def test_the_switch_leaves_every_loss_bit_for_bit_equal(name, tiny_data):
    preset, overrides = MODELS[name]
    config = load_config(preset, [f"data.dataset={tiny_data}", *overrides])
    torch.manual_seed(0)
    model = build_model(config["model"], 10).train()
    images, targets = next(iter(epoch_loader(load_split(config, "train", True), config, 0, 0)))
    start = copy.deepcopy(model.state_dict())
    off = losses_of(model, images, targets, False)
    assert all(c.stats is None for c in recording(model))  # off: nothing is recorded
    model.load_state_dict(start)  # the running state the first call moved (GHM-C's histogram)
    on = losses_of(model, images, targets, True)
    assert off.keys() == on.keys()
    for key in off:
        assert torch.equal(off[key], on[key]), key
    names = {c.stats_name: c.stats for c in recording(model)}
    assert set(names) == ({"rpn", "roi"} if name == "faster_rcnn" else {"cls"})
    batch = len(targets)
    for stage, stats in names.items():
        positives, total = float(stats.count[:2].sum()), float(stats.count.sum())
        trained = on["loss_rpn_cls" if stage == "rpn" else "loss_cls"]
        assert float(stats.loss.sum()) == pytest.approx(float(trained.detach()), rel=1e-5)
        if stage == "rpn":  # Faster R-CNN sec. 3.1.3: 256 anchors per image, at most half positive
            assert total == 256 * batch and positives <= 128 * batch
        if stage == "roi":  # RandomSampler(512, 0.25): at most 512 RoIs per image, a quarter foreground
            assert 0 < total <= 512 * batch and positives <= 128 * batch
        if name == "retinanet_ohem":  # OHEM's 3 negatives per positive (neg_pos_ratio 3)
            assert total - positives == 3 * positives


# ---- a tiny run ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def full_run(tiny_data, tmp_path_factory):
    config = load_config(
        "retinanet_digits",
        [
            f"data.dataset={tiny_data}",
            *TINY_RUN,
            "train.epochs=2",
            "train.eval_interval=2",
            "train.checkpoint_interval=1",
        ],
    )
    return config, train(config, output=tmp_path_factory.mktemp("diag") / "full", verbose=False)["output"]


def assigned(config, epoch):
    """``(positives, non-ignored anchors, steps)`` of the epoch's batches, recomputed with the max-IoU rule of
    the focal paper (sec. 4: IoU >= 0.5 foreground, < 0.4 background) and its low-quality matches (each box
    claims the anchors of its highest IoU)."""
    torch.manual_seed(0)
    model = build_model(config["model"], 10).eval()
    positives = valid = steps = 0
    for images, targets in epoch_loader(load_split(config, "train", True), config, epoch, 0):
        batch, _ = batch_images(images, model.size_divisible)
        with torch.no_grad():
            sizes = [f.shape[-2:] for f in model.features(batch)]
        anchors = model.prior_generator(sizes, batch.device).anchors
        for target in targets:
            iou = box_iou(target["boxes"].float(), anchors)  # (G, A)
            best = iou.max(0).values if len(iou) else torch.zeros(len(anchors))
            pos = best >= 0.5
            if len(iou):
                top = iou.max(1, keepdim=True).values
                pos |= ((iou == top) & (top > 0)).any(0)
            positives += int(pos.sum())
            valid += int((pos | (best < 0.4)).sum())
        steps += 1
    return positives, valid, steps


def test_a_tiny_run_writes_shares_summing_to_one_and_the_recomputed_foreground_fraction(full_run):
    config, out = full_run
    with (out / "results.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 2
    for epoch, row in enumerate(rows):
        shares = [float(row[f"cls_{k}_share"]) for k in KIND_NAMES]
        assert all(0.0 <= s <= 1.0 for s in shares) and sum(shares) == pytest.approx(1.0, abs=1e-5)
        # the four parts add up to the loss trained on, averaged over the same steps
        assert sum(float(row[f"cls_{k}_loss"]) for k in KIND_NAMES) == pytest.approx(float(row["loss_cls"]), rel=1e-5)
        positives, valid, steps = assigned(config, epoch)
        assert sum(float(row[f"cls_{k}_count"]) for k in KIND_NAMES) == pytest.approx(valid / steps, rel=1e-5)
        assert float(row["cls_fg_fraction"]) == pytest.approx(positives / valid, rel=1e-5)
    panels = diagnostics_panels(list(rows[0]))
    assert panels == [
        ("cls loss shares", {f"cls_{k}_share": k for k in KIND_NAMES}),
        ("cls_fg_fraction", {"cls_fg_fraction": "cls_fg_fraction"}),
    ]
    assert (out / "results.png").is_file()


def test_a_run_resumed_mid_epoch_continues_the_diagnostics_exactly(full_run, tmp_path):
    config, out = full_run
    with pytest.raises(Killed):  # after step 4, the first of the second epoch: its checkpoint holds its sums
        train(config, output=tmp_path / "killed", callbacks=[KillAfter(4)], verbose=False)
    resumed = train(None, resume=tmp_path / "killed" / "weights" / "last.pt", verbose=False)["output"]
    full_rows = load_checkpoint(out / "weights" / "last.pt")["rows"]
    resumed_rows = load_checkpoint(resumed / "weights" / "last.pt")["rows"]
    assert len(full_rows) == len(resumed_rows) == 2
    for a, b in zip(full_rows, resumed_rows, strict=True):
        columns = [k for k in a if k.startswith("cls_")]
        assert len(columns) == 13 and {k: a[k] for k in columns} == {k: b[k] for k in columns}


def test_train_diagnostics_false_adds_no_column(tiny_config, tmp_path):
    out = train(tiny_config("train.epochs=1", "train.diagnostics=false"), tmp_path / "run", verbose=False)["output"]
    header = (out / "results.csv").read_text().splitlines()[0]
    assert "loss_cls" in header and "cls_" not in header


def test_a_skipped_step_adds_no_statistics_to_the_row():
    from types import SimpleNamespace

    from balancedet.engine.diagnostics import ImbalanceDiagnostics
    from balancedet.models.detector import KindStats

    criterion = SimpleNamespace(stats_name="cls", stats=None)
    callback = ImbalanceDiagnostics()
    callback.criteria = [criterion]
    state = SimpleNamespace(sums={}, bad_streak=1)
    criterion.stats = KindStats(torch.ones(4, dtype=torch.float64), torch.ones(4, dtype=torch.float64))
    callback.on_step_end(state)
    assert state.sums == {} and criterion.stats is None
    state.bad_streak = 0
    criterion.stats = KindStats(torch.ones(4, dtype=torch.float64), torch.ones(4, dtype=torch.float64))
    callback.on_step_end(state)
    assert state.sums["cls_easy_pos_count"] == 1.0
