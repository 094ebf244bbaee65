import pytest
import torch
import torch.distributed as dist

from balancedet.models.normalizer import PositiveNormalizer


def test_plain_count_is_at_least_one():
    norm = PositiveNormalizer()
    assert norm(torch.tensor(7)).item() == 7.0
    assert norm(torch.tensor(0)).item() == 1.0
    out = norm(torch.tensor(3, dtype=torch.int64))
    assert out.dtype == torch.float32 and out.shape == () and not out.requires_grad


def test_ema_follows_detectron2_and_is_saved():
    norm = PositiveNormalizer(momentum=0.9)
    values = [norm(torch.tensor(n)).item() for n in (10, 0, 30)]
    expected, v = [], 100.0
    for n in (10, 1, 30):
        v = 0.9 * v + 0.1 * n
        expected.append(v)
    assert values == pytest.approx(expected)
    restored = PositiveNormalizer(momentum=0.9)
    restored.load_state_dict(norm.state_dict())
    assert restored.value.item() == pytest.approx(expected[-1])


def test_eval_mode_reads_the_ema_without_updating_it():
    norm = PositiveNormalizer(momentum=0.5, initial=10).eval()
    assert norm(torch.tensor(20)).item() == pytest.approx(15.0)
    assert norm.value.item() == 10.0


def test_count_is_averaged_over_processes(monkeypatch):
    # Two simulated processes with 3 and 5 positives: all_reduce gives 8, the divisor is 8 / 2 = 4,
    # so that DDP's averaged gradient equals the batch's summed loss over its 8 positives.
    def all_reduce(tensor, group=None):
        tensor.add_(5)

    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "all_reduce", all_reduce)
    monkeypatch.setattr(dist, "get_world_size", lambda group=None: 2)
    count = torch.tensor(3)
    assert PositiveNormalizer()(count).item() == 4.0
    assert count.item() == 3  # the caller's tensor is not reduced in place


def test_single_process_group(tmp_path):
    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        assert PositiveNormalizer()(torch.tensor(6)).item() == 6.0
    finally:
        dist.destroy_process_group()


def test_bad_momentum():
    with pytest.raises(ValueError, match="momentum"):
        PositiveNormalizer(momentum=1.0)
