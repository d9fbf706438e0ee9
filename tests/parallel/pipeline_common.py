"""The pipeline harness both tasks share: the megatron engine run through the task interface
(engine_run), comparing a run with its one-process reference, gathering per-stage results in
the workers, and the interrupted-run resume check. The workers (pipeline_worker.py: unified,
tok_pipeline_worker.py: HYDRA-TOK) add only their task's config, batches and reference."""
import json

import pytest
import torch


def assert_same(ref, got, keys):
    """Loss parts (`keys`), grad norm, every gradient and the loss trajectory, fp32 tolerances."""
    for k in keys:
        assert got[k] == pytest.approx(ref[k], rel=1e-5, abs=1e-6), k
    assert got["grad_norm"] == pytest.approx(ref["grad_norm"], rel=1e-5)
    assert ref["grads"].keys() == got["grads"].keys()
    for n, g in ref["grads"].items():
        torch.testing.assert_close(got["grads"][n], g, rtol=1e-4, atol=2e-5, msg=n)
    assert got["trajectory"] == pytest.approx(ref["trajectory"], rel=1e-4, abs=1e-5)


def gather_stages(engine, mine: dict, key, traj: list, first: dict) -> dict:
    """Worker side: every rank's gradients and parameter names (under `key`) in one result."""
    import torch.distributed as dist
    names = sorted(n.split(".", 1)[1] for n, _ in engine.model.chunks.named_parameters())
    everyone = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, {"grads": mine, "names": {key: names}})
    res = {"grads": {}, "names": {}, "trajectory": traj, **first}
    for m in everyone:
        res["grads"].update(m["grads"])
        res["names"].update(m["names"])
    return res


def engine_run(cfg, layout, batches, steps: int, stage_kwargs) -> dict:
    """Worker side: `steps` steps of the task's megatron engine over the same micro-batches, with
    the chunks' forward kwargs of each step from stage_kwargs(step) (fixed noise seeds, the
    reference's loss denominators). -> the first step's mean loss terms and grad norm, every
    gradient before clipping (TP-gathered, from TP rank 0), parameter names per (pp, tp) rank
    and the loss trajectory, gathered to every rank."""
    from megatron.core import parallel_state as ps

    from equivalence_worker import full_grad  # same directory: on sys.path under torchrun
    from hydra_dist.train.tasks import make_task
    task = make_task(cfg)
    engine = task.build_engine(layout)
    tp_group = ps.get_tensor_model_parallel_group()
    grads, traj, first = {}, [], {}
    clip = engine._clip

    def capture(gs, max_norm):  # gradients after the DP all-reduce, before clipping
        if not grads:
            for n, p in engine.model.chunks.named_parameters():
                if p.grad is not None and p.requires_grad:
                    grads[n.split(".", 1)[1]] = full_grad(p, tp_group)
        return clip(gs, max_norm)
    engine._clip = capture
    for step in range(steps):
        shaped, spec = task.prepare_step(batches, step, layout)   # padded rows, p2p length
        spec.stage_kwargs = stage_kwargs(step)
        r = engine.train_step(shaped, spec)
        mean = dict(zip(spec.keys, (r.acc / (len(batches) * layout.dp)).tolist()))
        if step == 0:
            first = {**mean, "grad_norm": engine.get_global_grad_norm()}
        traj.append(mean["loss"])
    return gather_stages(engine, grads if layout.tp_rank == 0 else {},
                         (layout.pp_rank, layout.tp_rank), traj, first)


def metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def run_pp2(args, run_dir) -> list:
    """A 4-step 2-process PP=2 run: the loss falls, and each stage wrote its shard at step 4.
    Returns its metrics."""
    from launch import run_torchrun
    res = run_torchrun(2, args + [f"output_dir={run_dir}"], timeout=400)
    assert res.returncode == 0, res.stdout[-4000:]
    ms = metrics(run_dir)
    assert [m["step"] for m in ms] == [1, 2, 3, 4]
    assert ms[-1]["loss"] < ms[0]["loss"] and all(m["grad_norm"] > 0 for m in ms)
    ck = run_dir / "checkpoints" / "step00000004"
    assert sorted(p.name for p in ck.glob("model_pp*")) == ["model_pp00_tp00.safetensors",
                                                            "model_pp01_tp00.safetensors"]
    assert (ck / "manifest.json").is_file()
    return ms


def assert_resumes_exactly(args, run_dir, straight, keys):
    """Stop a fresh run at step 2, resume it, and match the uninterrupted run's metrics."""
    from launch import run_torchrun  # tests/ (pytest's path); the workers never need it
    res = run_torchrun(2, args + [f"output_dir={run_dir}", "train.stop_at_step=2"], timeout=400)
    assert res.returncode == 0, res.stdout[-4000:]
    res = run_torchrun(2, args + [f"output_dir={run_dir}"], timeout=400)
    assert res.returncode == 0, res.stdout[-4000:]
    assert "resumed from" in res.stdout
    resumed = metrics(run_dir)
    assert [m["step"] for m in resumed] == [m["step"] for m in straight]
    for x, y in zip(straight, resumed):
        for key in keys:
            assert x[key] == pytest.approx(y[key], rel=1e-6, abs=1e-7), (x["step"], key)
