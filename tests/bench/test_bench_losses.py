import torch

from balancedet.bench import losses as bench_losses
from balancedet.cli import main as cli_main


def test_every_case_matches_its_baseline_on_a_small_problem():
    device = torch.device("cpu")
    for case in bench_losses.build_cases(n=3000, c=7, device=device):
        result = bench_losses.run_case(case, device, repeat=1, warmup=1)
        assert result.loss_diff < 1e-5, case.name
        assert result.grad_diff < 1e-5, case.name
        assert result.ours_s > 0 and result.base_s > 0
        assert result.ours_saved > 0 and result.base_saved > 0


def test_fused_losses_keep_less_for_backward_than_their_baselines():
    device = torch.device("cpu")
    cases = {c.name: c for c in bench_losses.build_cases(n=3000, c=7, device=device)}
    for name in ("sigmoid_focal_loss", "quality_focal_loss"):
        result = bench_losses.run_case(cases[name], device, repeat=1, warmup=1)
        # one N x C float32 tensor for backward
        assert result.ours_saved == 3000 * 7 * 4, name
        assert result.base_saved > result.ours_saved, name
    # GHM-C keeps N x C one-byte bin indices, the (N,) int64 labels and the (31,) float32 weight table.
    result = bench_losses.run_case(cases["GHMC (30 bins)"], device, repeat=1, warmup=1)
    assert result.ours_saved == 3000 * 7 + 3000 * 8 + 31 * 4
    assert result.base_saved > 3 * result.ours_saved


def test_cli_prints_the_table(capsys):
    assert cli_main(["bench", "losses", "--n", "500", "--c", "3", "--repeat", "1", "--warmup", "1"]) == 0
    out = capsys.readouterr().out
    for word in ("sigmoid_focal_loss", "torchvision.ops.sigmoid_focal_loss", "GHMC", "speed-up", "ours saved"):
        assert word in out
