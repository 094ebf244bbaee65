from balancedet.bench import detector as bench_detector

TINY = bench_detector.Config(depth=18, norm="frozen_bn", batch=1, height=64, width=96, classes=3, boxes=2)
#: the two-stage round at a fraction of its RoIs: the 2-fc head on 512 RoIs would dominate the test's time
TINY_RCNN = bench_detector.Config(**{**TINY.__dict__, "rois": 32, "proposals": 64})


def test_batch_boxes_lie_inside_the_images():
    images, targets = bench_detector.make_batch(2, 64, 96, num_classes=3, boxes_per_image=5)
    assert images.shape == (2, 3, 64, 96) and targets[0]["boxes"].shape == (5, 4)
    for t in targets:
        assert (t["boxes"][:, 2] <= 96).all() and (t["boxes"][:, 3] <= 64).all() and (t["boxes"] >= 0).all()
        assert (t["boxes"][:, 2:] - t["boxes"][:, :2] >= 16).all()


def test_both_models_have_the_same_architecture_and_train():
    for stage in ("step", "loss"):
        results = bench_detector.run_stage(stage, TINY, repeat=1, warmup=1, memory="inline")
        ours, theirs = results
        # The same weights' shapes: torchvision's FPN and heads are ours, layer for layer.
        assert ours.params == theirs.params
        assert all(r.seconds > 0 and r.peak_bytes > 0 for r in results)


def test_the_two_stage_round_times_both_faster_rcnns_and_the_remedies():
    results = bench_detector.run_stage("rcnn", TINY_RCNN, repeat=1, warmup=1, memory="inline")
    by_kind = {r.kind: r for r in results}
    assert tuple(by_kind) == bench_detector.RCNN_KINDS
    assert all(r.seconds > 0 and r.peak_bytes > 0 for r in results)
    # the same network but for torchvision's box regressor of the background class: 4 outputs of a 1024 fc
    assert by_kind["torchvision"].params - by_kind["balancedet"].params == 4 * 1024 + 4
    assert by_kind["ohem"].params == by_kind["balancedet"].params
    assert by_kind["libra"].params > by_kind["balancedet"].params  # the BFP's non-local block
    table = bench_detector.format_stage("rcnn", TINY_RCNN, results)
    for name in bench_detector.RCNN_NAMES.values():
        assert name in table
    line = bench_detector.summary("rcnn", results)
    assert "ohem" in line and "libra" in line and "x random" in line


def test_the_two_stage_models_are_configured_alike():
    ours = bench_detector.build_model("balancedet", TINY_RCNN, "rcnn")
    theirs = bench_detector.build_model("torchvision", TINY_RCNN, "rcnn")
    assert ours.rpn.post_nms_top_n_train == theirs.rpn._post_nms_top_n["training"] == 64
    assert ours.roi_head.criterion.sampler.num == theirs.roi_heads.fg_bg_sampler.batch_size_per_image == 32
    assert ours.rpn.pre_nms_top_n_train == theirs.rpn._pre_nms_top_n["training"] == 2000
    assert theirs.roi_heads.box_predictor.cls_score.out_features == ours.roi_head.box_head.cls_score.out_features
    libra = bench_detector.build_model("libra", TINY_RCNN, "rcnn")
    assert libra.neck.bfp.refine_level == 2 and libra.rpn.criterion.sampler.neg_pos_ub == 5


def test_peak_memory_in_a_fresh_process():
    peak = bench_detector.peak_in_subprocess("balancedet", "loss", TINY)
    _, step = bench_detector.build_step("balancedet", "loss", TINY)
    step()
    assert peak == bench_detector.peak_step_bytes(step)


def test_main_prints_the_table(capsys):
    # The training-step stage runs in test_both_models_have_the_same_architecture_and_train.
    argv = ["--stages", "loss", "--loss-size", "64x96", "--loss-batch", "1", "--loss-classes", "3"]
    argv += ["--repeat", "1", "--warmup", "1", "--memory", "off"]
    assert bench_detector.main(argv) == 0
    out = capsys.readouterr().out
    for word in ("balancedet RetinaNet", "torchvision RetinaNet", "images/s", "loss stage", "speed-up"):
        assert word in out


def test_the_pool_round_times_both_roialigns_on_one_problem_and_reports_their_difference():
    cfg = bench_detector.Config(**{**TINY.__dict__, "batch": 2, "rois": 40})
    results = bench_detector.run_stage("pool", cfg, repeat=1, warmup=1, memory="inline")
    assert [r.kind for r in results] == list(bench_detector.KINDS)
    assert all(r.seconds > 0 and r.peak_bytes > 0 and r.params == 0 for r in results)
    values, grads = bench_detector.pool_difference(cfg)
    assert 0 <= values < 1e-5 and 0 <= grads < 1e-5
    # the problem reaches every level pooled from, and pools 40 RoIs an image
    levels, boxes, size = bench_detector.pool_problem(cfg)
    assert [lv.shape[-2:] for lv in levels] == [(16, 24), (8, 12), (4, 6), (2, 3)] and size == (64, 96)
    assert [b.shape for b in boxes] == [(40, 4)] * 2
    line = bench_detector.summary("pool", results, (values, grads))
    assert "pool: speed-up" in line and "largest difference from torchvision's" in line
    table = bench_detector.format_stage("pool", cfg, results)
    assert all(name in table for name in bench_detector.POOL_NAMES.values())
