import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from balancedet.bench import data as bench_data
from balancedet.cli import main as cli_main
from balancedet.data.coco import STAT_LIMIT, load_coco
from balancedet.engine.config import load_config

#: The default preset (GFL) made small: 64-px scenes, a narrow pyramid and head, batches of 4.
TINY = [
    "model.fpn_channels=16",
    "model.head_channels=16",
    "model.num_convs=1",
    "data.min_size=64",
    "train.batch_size=4",
]


def row_value(out: str, name: str) -> str:
    """The value column of the index table's row ``name``."""
    line = next(line for line in out.splitlines() if line.startswith(name))
    return line[len(name) :].strip().split("  ")[0]


def test_index_part_runs_end_to_end_and_reports_the_generated_counts(tmp_path):
    command = [sys.executable, "-m", "balancedet", "bench", "data", "--images", "2000", "--skip-loader"]
    done = subprocess.run(
        [*command, "--reads", "50", "--workdir", str(tmp_path)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    data = json.loads((tmp_path / "annotations.json").read_text())
    images, boxes = len(data["images"]), len(data["annotations"])
    crowd = sum(a["iscrowd"] for a in data["annotations"])
    assert images == 2000 and boxes > 5 * images
    assert row_value(done.stdout, "images (generated / loaded)") == "2000 / 2000"
    assert row_value(done.stdout, "boxes (generated / loaded)").startswith(f"{boxes} / {boxes} ")
    assert row_value(done.stdout, "crowd boxes (generated / loaded)") == f"{crowd} / {crowd}"
    assert row_value(done.stdout, "counts check") == "ok"
    for name in ("load_coco wall time", "peak increase over the baseline", "records[i], median", "json on disk"):
        assert name in done.stdout


def test_generated_json_is_coco_and_load_coco_keeps_every_image_and_box(tmp_path):
    generated = bench_data.write_synthetic_coco(tmp_path, images=300, boxes_per_image=7.0, vertices=8, seed=3)
    data = json.loads(generated.annotation_file.read_text())
    assert set(data) == {"info", "licenses", "images", "annotations", "categories"}
    category_ids = [c["id"] for c in data["categories"]]
    assert category_ids == sorted(bench_data.CATEGORIES) and category_ids != list(range(1, len(category_ids) + 1))
    assert len(data["images"]) == generated.images == 300
    assert len(data["annotations"]) == generated.annotations
    assert sum(a["iscrowd"] for a in data["annotations"]) == generated.crowd
    assert len({a["id"] for a in data["annotations"]}) == generated.annotations
    assert all(len(a["segmentation"][0]) == 16 and a["area"] > 0 for a in data["annotations"])
    assert sum(generated.boxes_per_category.values()) == generated.annotations
    assert generated.json_bytes == generated.annotation_file.stat().st_size

    record_set = load_coco(generated.annotation_file, generated.image_dir)
    assert record_set.category_ids == category_ids
    by_id = {r.image_id: r for r in record_set.records}
    assert [r.image_id for r in record_set.records] == [i["id"] for i in data["images"]]
    boxes_of: dict[int, list] = {i["id"]: [] for i in data["images"]}
    for a in data["annotations"]:
        boxes_of[a["image_id"]].append(a)
    for image in data["images"]:
        record = by_id[image["id"]]
        assert record.file == generated.image_dir / image["file_name"] and record.file.is_file()
        assert (record.width, record.height) == (image["width"], image["height"])
        expected = boxes_of[image["id"]]
        xywh = np.array([a["bbox"] for a in expected], dtype=np.float64).reshape(-1, 4)
        xyxy = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
        np.testing.assert_allclose(record.boxes, xyxy.astype(np.float32), rtol=0, atol=1e-3)
        mapped = [record_set.category_ids[label] for label in record.labels.tolist()]
        assert mapped == [a["category_id"] for a in expected]
        assert record.iscrowd.tolist() == [bool(a["iscrowd"]) for a in expected]
    counts = {c: 0 for c in category_ids}
    for record in record_set.records:
        for label in record.labels.tolist():
            counts[record_set.category_ids[label]] += 1
    assert {c: n for c, n in counts.items() if n} == generated.boxes_per_category


def test_the_loader_really_checks_the_generated_image_files(tmp_path):
    generated = bench_data.write_synthetic_coco(
        tmp_path, images=3 * STAT_LIMIT, boxes_per_image=2.0, vertices=0, seed=0
    )
    files = sorted(generated.image_dir.iterdir())
    # the first files of a folder are checked one by one, the later ones against one listing of it
    for missing in (files[0], files[-1]):
        missing.unlink()
        with pytest.raises(ValueError, match="not found"):
            load_coco(generated.annotation_file, generated.image_dir)
        missing.touch()
    assert len(load_coco(generated.annotation_file, generated.image_dir).records) == 3 * STAT_LIMIT


def test_a_count_that_differs_fails_the_benchmark(tmp_path, monkeypatch, capsys):
    def short_by_one(generated, reads, seed):
        return bench_data.IndexLoad(
            seconds=0.1,
            baseline_rss=100,
            peak_rss=200,
            kept_rss=150,
            records_bytes=50,
            read_ns=1e4,
            images=generated.images,
            boxes=generated.annotations - 1,
            crowd=generated.crowd,
            category_ids=sorted(bench_data.CATEGORIES),
            boxes_per_category=generated.boxes_per_category,
        )

    monkeypatch.setattr(bench_data, "load_in_subprocess", short_by_one)
    assert bench_data.main(["--images", "40", "--skip-loader", "--workdir", str(tmp_path)]) == 1
    captured = capsys.readouterr()
    assert "counts check" in captured.out and "FAILED" in captured.out
    assert "error: the loader's counts differ: boxes: generated" in captured.err


def test_loader_part_reports_positive_finite_times(tiny_data):
    config = load_config("gfl_digits", [f"data.dataset={tiny_data}", *TINY])
    result = bench_data.run_loader(config, [0, 1], batches=2, steps=1, warmup=1, device=torch.device("cpu"))
    assert len(result["dataset"]) == 24 and result["batch_shape"][:2] == (4, 3)
    assert [t.workers for t in result["loads"]] == [0, 1] and [o.workers for o in result["overlaps"]] == [1]
    times = [result["step_s"], result["first_step_s"], result["ready_s"]]
    times += [result["first_pass"].first_s, result["first_pass"].per_batch_s]
    times += [v for t in result["loads"] for v in (t.first_s, t.per_batch_s)]
    times += [v for o in result["overlaps"] for v in (o.first_wait_s, o.wait_s, o.step_s)]
    assert all(math.isfinite(t) and t > 0 for t in times)
    loader_rows = bench_data.loader_rows(result["first_pass"], result["loads"], batch_size=4)
    assert [r[0] for r in loader_rows] == ["0, first pass", "0", "1"]
    rows = bench_data.overlap_rows(result["loads"], result["overlaps"], result["step_s"])
    assert [r[0] for r in rows] == ["0", "1"] and rows[0][-1] == "serial: not overlapped"
    assert rows[1][-1] in ("hidden", "NOT hidden")


def test_cli_help_lists_the_options(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["bench", "data", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for option in ("--images", "--workdir", "--batches", "--workers", "--config", "--skip-index", "--skip-loader"):
        assert option in out


def test_the_default_preset_is_the_one_training_uses():
    from balancedet.cli import BENCHMARKS, DEFAULT_PRESET

    assert BENCHMARKS["data"] == bench_data.__name__
    assert bench_data.parser().parse_args([]).config == DEFAULT_PRESET
