from balancedet.bench import detector as bench_detector

TINY = bench_detector.Config(depth=18, norm="frozen_bn", batch=1, height=64, width=96, classes=3, boxes=2)


def test_batch_boxes_lie_inside_the_images():
    images, targets = bench_detector.make_batch(2, 64, 96, num_classes=3, boxes_per_image=5)
    assert images.shape == (2, 3, 64, 96) and targets[0]["boxes"].shape == (5, 4)
    for t in targets:
        assert (t["boxes"][:, 2] <= 96).all() and (t["boxes"][:, 3] <= 64).all() and (t["boxes"] >= 0).all()
        assert (t["boxes"][:, 2:] - t["boxes"][:, :2] >= 16).all()


def test_both_models_have_the_same_architecture_and_train():
    for stage in bench_detector.STAGES:
        results = bench_detector.run_stage(stage, TINY, repeat=1, warmup=1, memory="inline")
        ours, theirs = results
        # The same weights' shapes: torchvision's FPN and heads are ours, layer for layer.
        assert ours.params == theirs.params
        assert all(r.seconds > 0 and r.peak_bytes > 0 for r in results)


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
