"""``balancedet analyze`` end to end on the tiny run (tests/engine/conftest.py)."""

import json
from html.parser import HTMLParser

import pytest
import torch

from balancedet.analysis.kinds import KIND_NAMES
from balancedet.cli import main
from balancedet.data import load_data_spec
from balancedet.engine.build import build_model
from balancedet.engine.config import load_config
from balancedet.engine.train import train
from tests.engine.conftest import TINY_RUN

DATASET_SECTIONS = ["class-frequencies", "boxes-per-image", "box-shapes", "anchor-coverage", "fpn-levels"]
MODEL_SECTIONS = ["loss-shares", "gradient-density", "cumulative-loss", "hard-negatives", "per-class-ap"]
DENSE = [o for o in TINY_RUN if not o.startswith("model.anchor_sizes")]
TWO_STAGE = [
    "model.fpn_channels=16",
    "model.representation_size=32",
    "model.anchor_sizes=[8, 16, 32, 64, 128]",
    *[o for o in TINY_RUN if o.startswith(("data.", "train."))],
]


def sets(overrides):
    return [arg for o in overrides for arg in ("--set", o)]


class Page(HTMLParser):
    """Per ``<section id>``: its ``<h2>`` text and its images' sources."""

    def __init__(self):
        super().__init__()
        self.sections, self._h2 = {}, False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "section":
            self.current = attrs["id"]
            self.sections[self.current] = {"title": "", "images": []}
        elif tag == "h2":
            self._h2 = True
        elif tag == "img":
            self.sections[self.current]["images"].append(attrs["src"])

    def handle_endtag(self, tag):
        if tag == "h2":
            self._h2 = False

    def handle_data(self, data):
        if self._h2:
            self.sections[self.current]["title"] += data


def read_report(folder):
    page = Page()
    page.feed((folder / "report.html").read_text(encoding="utf-8"))
    page.close()
    return json.loads((folder / "analysis.json").read_text()), page.sections


def check_report(folder, expected_sections):
    analysis, sections = read_report(folder)
    assert list(sections) == expected_sections
    for key, section in sections.items():
        assert section["title"], key
        assert len(section["images"]) == 1, key
        assert section["images"][0].startswith("data:image/png;base64,"), key
    assert len(list(folder.glob("*.png"))) == len(expected_sections)
    return analysis


@pytest.fixture(scope="module")
def checkpoint(tiny_data, tmp_path_factory):
    config = load_config("retinanet_digits", [f"data.dataset={tiny_data}", *TINY_RUN, "train.epochs=1"])
    out = train(config, output=tmp_path_factory.mktemp("analyze") / "run", verbose=False)["output"]
    return out / "weights" / "last.pt"


def test_without_checkpoint_the_dataset_and_the_priors(tiny_data, tmp_path, capsys):
    out = tmp_path / "plain"
    args = ["analyze", "--data", tiny_data, "--config", "retinanet_digits", *sets(TINY_RUN), "--output", str(out)]
    assert main(args) == 0
    analysis = check_report(out, DATASET_SECTIONS)
    assert "model" not in analysis
    records = load_data_spec(tiny_data).load("train")
    part = analysis["dataset"]
    assert part["images"] == len(records.records) == 24
    counts = torch.bincount(torch.cat([torch.from_numpy(r.labels) for r in records.records]), minlength=10)
    assert list(part["class_frequencies"]["counts"].values()) == counts.tolist()
    assert part["anchors"]["sizes"][0] == pytest.approx(8.0) and part["pos_iou"] == 0.5
    coverage = part["coverage"]
    assert coverage["above_threshold"] + coverage["low_quality_only"] + coverage["none"] == pytest.approx(1.0)
    assert sum(lv["foreground"] for lv in part["levels"]) == sum(
        n * c for n, c in enumerate(coverage["positives_per_box"]["histogram"])
    )
    assert "boxes with no positive anchor" in capsys.readouterr().out


def test_with_checkpoint_every_section(checkpoint, tmp_path):
    out = tmp_path / "model"
    assert main(["analyze", "--checkpoint", str(checkpoint), "--output", str(out)]) == 0
    analysis = check_report(out, DATASET_SECTIONS + MODEL_SECTIONS)
    model = analysis["model"]
    assert model["images"] == 8
    shares = model["loss_shares"]
    counts = [shares["ce"][k]["count"] for k in KIND_NAMES]
    for name in ("ce", "focal", "ghmc"):
        assert [shares[name][k]["count"] for k in KIND_NAMES] == counts
        assert sum(shares[name][k]["share"] for k in KIND_NAMES) == pytest.approx(1.0)
    density = model["gradient_density"]
    # one element per (anchor, class): 10 classes per non-ignored anchor
    assert sum(density["positive_counts"]) + sum(density["negative_counts"]) == 10 * sum(counts)
    assert sum(density["positive_counts"]) == counts[0] + counts[1]
    for kind in ("positive", "negative"):
        for curve in model["cumulative_loss"][kind]["curves"].values():
            assert curve[0] == 0.0 and curve[-1] == pytest.approx(1.0)
    assert model["hard_negatives"]["hard"]["count"] == model["hard_negatives"]["random"]["count"] > 0
    assert len(model["per_class_ap"]) == 10
    assert set(analysis["summary"]["checks"]) == {
        "negatives_dominate_ce",
        "easy_negatives_dominate_ce_negatives",
        "focal_moves_share_to_hard",
        "hard_negatives_spread_wider",
    }


def save_untrained(config, path, tiny_data):
    names = load_data_spec(tiny_data).load("train").class_names
    model = build_model(config["model"], len(names))
    torch.save({"model": model.state_dict(), "config": config, "class_names": names}, path)
    return path


def test_gfl_checkpoint(tiny_data, tmp_path):
    config = load_config("gfl_digits", [f"data.dataset={tiny_data}", *DENSE])
    path = save_untrained(config, tmp_path / "gfl.pt", tiny_data)
    out = tmp_path / "gfl"
    assert main(["analyze", "--checkpoint", str(path), "--output", str(out), "--max-images", "4"]) == 0
    analysis = check_report(out, DATASET_SECTIONS + MODEL_SECTIONS)
    assert analysis["dataset"]["anchors"]["assigner"] == "ATSSAssigner"
    assert analysis["dataset"]["coverage"]["low_quality_only"] is None  # ATSS has no IoU threshold
    assert analysis["dataset"]["images"] == analysis["model"]["images"] == 4


def test_two_stage_dataset_part_and_a_clear_error_for_its_checkpoint(tiny_data, tmp_path, capsys):
    out = tmp_path / "frcnn"
    args = ["analyze", "--data", tiny_data, "--config", "faster_rcnn_digits", *sets(TWO_STAGE), "--output", str(out)]
    assert main(args) == 0
    analysis = check_report(out, DATASET_SECTIONS)
    assert analysis["dataset"]["anchors"]["of"] == "RPN anchors" and analysis["dataset"]["pos_iou"] == 0.7
    config = load_config("faster_rcnn_digits", [f"data.dataset={tiny_data}", *TWO_STAGE])
    path = save_untrained(config, tmp_path / "frcnn.pt", tiny_data)
    capsys.readouterr()
    assert main(["analyze", "--checkpoint", str(path), "--output", str(tmp_path / "refused")]) == 2
    assert "dense detectors only" in capsys.readouterr().err
    assert not (tmp_path / "refused").exists()


def test_a_checkpoint_keeps_its_own_configuration(checkpoint, tmp_path, capsys):
    args = ["analyze", "--checkpoint", str(checkpoint), "--config", "gfl_digits", "--output", str(tmp_path / "x")]
    assert main(args) == 2
    assert "--checkpoint carries its own configuration" in capsys.readouterr().err
