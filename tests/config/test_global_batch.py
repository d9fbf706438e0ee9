"""train.global_batch: grad_accum derived from it, the world size and the layout; a batch that
does not divide is an error naming the numbers, before launch; the planner holds it fixed."""
import pytest

from hydra_dist.cli.pretrain import main as pretrain_main
from hydra_dist.config import ConfigError, load_config
from hydra_dist.distributed.init import Layout
from hydra_dist.perf.planner import GPUS, evaluate
from hydra_dist.train.run_setup import resolve_batch, run_tags

TINY = "configs/unified/tiny_stage1_alignment.yaml"


def test_stage_configs_state_the_papers_batch_and_derive_grad_accum():
    for path, gb in (("configs/unified/stage1_alignment.yaml", 1024),
                     ("configs/unified/stage2_pretrain.yaml", 1024),
                     ("configs/unified/stage3_sft.yaml", 1024),
                     ("configs/unified/stage2_pretrain_7b.yaml", 1024),
                     ("configs/tokenizer/stage1_foundation.yaml", 256),
                     ("configs/tokenizer/stage2_decoder.yaml", 256)):
        for world in (64, 128):
            cfg = load_config(path, world_size=world)
            p = cfg.parallel
            assert cfg.train.global_batch == gb
            assert p.micro_batch_size * p.grad_accum * (world // (p.tp * p.pp)) == gb, (path, world)
    s2 = load_config("configs/unified/stage2_pretrain.yaml", world_size=64)   # tp 2, mb 8: dp 32
    assert (s2.parallel.tp, s2.parallel.grad_accum) == (2, 4)


def test_batch_that_does_not_divide_is_an_error_naming_the_numbers():
    with pytest.raises(ConfigError) as e:
        load_config(TINY, ["train.global_batch=12", "parallel.micro_batch_size=4"], world_size=2)
    msg = str(e.value)
    assert "train.global_batch" in msg and "12 samples" in msg and "4 x dp 2 = 8" in msg
    assert "world size 2" in msg


def test_explicit_grad_accum_must_agree():
    ok = load_config(TINY, ["train.global_batch=16", "parallel.micro_batch_size=4",
                            "parallel.grad_accum=2"], world_size=2)
    assert ok.parallel.grad_accum == 2
    with pytest.raises(ConfigError, match=r"parallel\.grad_accum: 3 contradicts train\.global_batch=16"):
        load_config(TINY, ["train.global_batch=16", "parallel.micro_batch_size=4",
                           "parallel.grad_accum=3"], world_size=2)
    legacy = load_config(TINY, ["parallel.grad_accum=3"], world_size=2)   # global_batch 0: as given
    assert legacy.parallel.grad_accum == 3


def test_launcher_refuses_before_torchrun(capsys):
    rc = pretrain_main(["--nproc-per-node", "3", TINY, "train.global_batch=16"])
    assert rc == 2
    assert "train.global_batch" in capsys.readouterr().err


def test_trainer_side_resolution_logs_and_tags_the_batch():
    cfg = load_config(TINY, ["train.global_batch=32", "parallel.micro_batch_size=4"])
    lay = Layout(rank=0, world=4, local_rank=0, tp=1, pp=1, dp=4, tp_rank=0, pp_rank=0, dp_rank=0)
    assert resolve_batch(cfg, lay) == 32 and cfg.parallel.grad_accum == 2
    tags = run_tags(cfg, lay)
    assert tags["global_batch"] == 32 and tags["grad_accum"] == 2
    with pytest.raises(ConfigError, match="train.global_batch"):
        resolve_batch(load_config(TINY, ["train.global_batch=30"]), lay)


def test_planner_holds_the_global_batch_when_tp_changes_dp():
    cfg = load_config("configs/unified/stage2_pretrain.yaml")
    hw = GPUS["h100"]
    tp1 = evaluate(cfg, hw, 8, 8, 1, 1, 2, False)
    tp2 = evaluate(cfg, hw, 8, 8, 2, 1, 2, False)
    tp4 = evaluate(cfg, hw, 8, 8, 4, 1, 2, False)
    for p in (tp1, tp2, tp4):
        assert p.global_batch == 1024 and 8 * p.grad_accum * p.dp == 1024
    assert (tp1.grad_accum, tp2.grad_accum, tp4.grad_accum) == (2, 4, 8)
    # tokens per second: same samples per step, so tokens/s ratio is the inverse step ratio
    assert tp2.tokens_per_s / tp1.tokens_per_s == pytest.approx(tp1.step_s / tp2.step_s)
    odd = evaluate(cfg, hw, 3, 8, 1, 1, 2, False)   # 24 GPUs: 1024 / (8 x 24) does not divide
    assert "do not divide" in odd.runnable
    # with global_batch 0, the configured layout's micro x grad_accum x dp is held
    legacy = load_config("configs/model/hydra_1.5b.yaml", ["parallel.micro_batch_size=4",
                                                             "parallel.grad_accum=4"])
    a, b = evaluate(legacy, hw, 2, 8, 1, 1, 2, False), evaluate(legacy, hw, 2, 8, 2, 1, 2, False)
    assert a.global_batch == b.global_batch == 256 and (a.grad_accum, b.grad_accum) == (4, 8)
