import pytest
import torch

from balancedet.bench import assign as bench_assign


def test_prints_one_table_with_assignment_and_sampling_rows(capsys):
    argv = ["--images", "2", "--anchors", "3000", "--boxes", "6", "--proposals", "300", "--repeat", "1"]
    assert bench_assign.main(argv) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].startswith("balancedet bench assign: 2 images x 3000 anchors")
    header = next(i for i, line in enumerate(lines) if line.startswith("case"))
    assert lines[header + 1].startswith("----")
    rows = lines[header + 2 : header + 6]
    assert rows[0].startswith("MaxIoUAssigner 2x3000x6") and "box_iou + Matcher per image" in rows[0]
    assert "100.00% w/o low-quality" in rows[0]
    assert rows[1].startswith("IoU-balanced neg + instance-balanced pos 2x300")
    assert rows[2].startswith("instance-balanced pos + random neg 2x300")
    assert rows[3].startswith("random (reference) 2x300")
    for word in ("speed-up", "ours peak", "base peak", "labels equal", "kept"):
        assert word in out
    assert lines[-1] in ("all goals met", "some goals missed")


def test_problem_has_the_requested_sizes_and_boxes_inside_the_input():
    problem = bench_assign.make_problem(3, 5000, 7, torch.device("cpu"))
    assert problem.anchors.shape == (5000, 4)
    assert problem.boxes.shape == (3, 7, 4) and problem.labels.shape == (3, 7)
    assert (problem.boxes >= 0).all() and (problem.boxes <= problem.side).all()
    assert (problem.boxes[..., 2:] - problem.boxes[..., :2] >= 8 - 1e-3).all()


def test_labels_agree_with_torchvision_without_low_quality_matches():
    problem = bench_assign.make_problem(2, 3000, 10, torch.device("cpu"))
    plain, with_claims, differ = bench_assign.label_agreement(problem)
    assert plain == 1.0
    assert with_claims == pytest.approx(1.0 - differ / (2 * 3000), abs=1e-12)


def test_peak_bytes_sees_torch_cpu_allocations():
    def allocate():
        a = torch.empty(1_000_000)  # 4 MB
        b = torch.empty(500_000)  # 2 MB while a lives
        del a
        c = torch.empty(250_000)  # after a is freed: no new peak
        return b, c

    assert bench_assign.peak_bytes(allocate, torch.device("cpu")) == 6_000_000
    with pytest.raises(ValueError, match="no peak-memory measurement"):
        bench_assign.peak_bytes(allocate, torch.device("meta"))


def test_sampling_inputs_have_positives_and_negatives():
    matched, max_iou = bench_assign.sampling_inputs(2, 600, torch.device("cpu"))
    assert matched.shape == max_iou.shape == (2, 600)
    assert ((matched >= 0).sum(1) > 50).all() and ((matched == -1).sum(1) > 200).all()
    assert not (matched == -2).any()  # one threshold: no ignored band
