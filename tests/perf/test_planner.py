"""hydra-plan: the search returns layouts that fit, the CLI prints the tables, and the planner's
numbers move the way the layout says they must."""
import json

from hydra_dist.cli.plan import main
from hydra_dist.config import load_config
from hydra_dist.perf.planner import GPUS, evaluate, search


def test_cli_recommends_a_fitting_layout(capsys):
    assert main(["configs/model/hydra_7b.yaml", "--nodes", "2", "--json",
                 "parallel.micro_batch_size=4", "parallel.grad_accum=8"]) == 0
    res = json.loads(capsys.readouterr().out)
    best = res["recommended"]
    assert best and best["total_gb"] <= res["limit_gb"] and not best["runnable"]
    if best["pp"] > 1:  # the megatron engine: no ZeRO, at least pp micro-batches
        assert best["zero"] == 0 and best["grad_accum"] >= best["pp"]
    assert 0.05 < best["mfu"] < 0.6
    assert main(["configs/model/hydra_1.5b.yaml", "--nodes", "1", "--gpu", "h200"]) == 0
    out = capsys.readouterr().out
    assert "configured layout" in out and "recommended:" in out


def test_layout_monotonicity():
    cfg = load_config("configs/model/hydra_7b.yaml", ["parallel.micro_batch_size=4"])
    hw = GPUS["h100"]
    z0 = evaluate(cfg, hw, 2, 8, 1, 1, 0, False)
    z3 = evaluate(cfg, hw, 2, 8, 1, 1, 3, False)
    assert z3.mem["optimizer"] < z0.mem["optimizer"] / 8
    ck = evaluate(cfg, hw, 2, 8, 1, 1, 3, True)
    assert ck.mem["activations"] < z3.mem["activations"] / 3 and ck.step_s > z3.step_s
    tp4 = evaluate(cfg, hw, 2, 8, 4, 1, 3, False)
    assert tp4.mem["params"] < z3.mem["params"] * 2   # TP shards what DP would otherwise gather
    plans, limit = search(cfg, hw, 2, 8)
    assert plans[0].total_gb <= limit
    # the full 7B without ZeRO, TP or checkpointing does not fit in 80 GB
    assert evaluate(cfg, hw, 2, 8, 1, 1, 0, False).total_gb > 80
