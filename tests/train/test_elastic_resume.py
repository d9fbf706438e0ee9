"""Elastic resume (issue 19): a DeepSpeed ZeRO checkpoint continues on another DP size with
its optimizer state. After loading, every parameter's fp32 master and both Adam moments equal
what DeepSpeed's own load gives on the saved layout, bitwise; the lr, Adam's step and the
schedule continue; the next steps' losses follow the original run's (the bound is the
summation-order noise of a different DP split); and the data position continues the epoch
with no sample seen twice or skipped."""
import json
import shutil

import pytest
import torch

from launch import REPO, run_torchrun

WORKER = REPO / "tests" / "train" / "elastic_worker.py"
MG = ["parallel.engine=megatron", "parallel.zero_stage=0"]
BF16_LOSS_BOUND = 1e-2   # relative; bf16 matmuls split over another TP size round differently
# global batch 16 = micro 4 x grad_accum x dp holds on 1, 2 and 4 processes
COMMON = ["configs/tiny_cpu.yaml", "data.synthetic.num_samples=128", "train.global_batch=16",
          "checkpoint.every=2", "tracking.enabled=false"]
LOSS_BOUND = 2e-5   # relative; the same samples summed in another order


def _metrics(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]


def _state(tmp_path, run, nproc, tag, layout):
    out = tmp_path / f"{tag}.pt"
    res = run_torchrun(nproc, [str(out), *COMMON, *layout, f"output_dir={run}"],
                       script=WORKER, timeout=400)
    assert res.returncode == 0, res.stdout[-4000:]
    return torch.load(out, weights_only=True), res.stdout


def _same_state(a, b):
    assert a["values"].keys() == b["values"].keys()
    for name, (m, e, v) in a["values"].items():
        m2, e2, v2 = b["values"][name]
        assert torch.equal(m, m2), f"fp32 master of {name} differs"
        assert torch.equal(e, e2) and torch.equal(v, v2), f"Adam moments of {name} differ"
    assert a["lr"] == b["lr"] and a["adam_step"] == b["adam_step"] == [2.0]
    assert a["sched"] == b["sched"] and a["step"] == b["step"] == 2


def _resume_and_compare(tmp_path, saved, zero, nproc, reference, ref_state, tp=1, saved_ranks=2,
                        logged="re-partitioning the ZeRO"):
    run = tmp_path / f"z{zero}_dp{nproc}_tp{tp}"
    shutil.copytree(saved, run)
    layout = [f"parallel.zero_stage={zero}", f"parallel.tp={tp}"]
    state, out = _state(tmp_path, run, nproc, run.name, layout)
    assert logged in out, out[-3000:]
    _same_state(ref_state, state)
    res = run_torchrun(nproc, COMMON + layout + ["train.steps=4", f"output_dir={run}"], timeout=400)
    assert res.returncode == 0, res.stdout[-4000:]
    # the DP split changed (on TP=2 DP=1 -> TP=1 DP=2 the world size did not)
    assert (f"checkpoint has {saved_ranks} ranks, this run {nproc}: resuming the epoch at sample 32"
            in res.stdout)
    got = _metrics(run)
    assert [m["step"] for m in got] == [1, 2, 3, 4]
    for m, r in zip(got[2:], reference[2:]):
        for k in ("loss", "ntp_loss", "fm_loss"):
            assert abs(m[k] - r[k]) <= LOSS_BOUND * abs(r[k]), (m["step"], k, m[k], r[k])
        assert m["lr/" + "llm.decay"] == r["lr/" + "llm.decay"]


def _saved_and_reference(tmp_path, zero, tp=1, dp=2):
    saved = tmp_path / f"saved_z{zero}_tp{tp}"
    layout = [f"parallel.zero_stage={zero}", f"parallel.tp={tp}"]
    args = COMMON + layout + ["train.steps=4"]
    n = dp * tp
    res = run_torchrun(n, args + [f"output_dir={saved}", "train.stop_at_step=2"], timeout=600)
    assert res.returncode == 0, res.stdout[-4000:]
    ref = tmp_path / f"ref_z{zero}_tp{tp}"
    shutil.copytree(saved, ref)
    ref_state, _ = _state(tmp_path, ref, n, ref.name, layout)   # DeepSpeed's own load
    res = run_torchrun(n, args + [f"output_dir={ref}"], timeout=600)
    assert res.returncode == 0, res.stdout[-4000:]
    return saved, _metrics(ref), ref_state


def test_zero3_dp2_resumes_on_dp1_with_its_optimizer_state(tmp_path):
    saved, reference, ref_state = _saved_and_reference(tmp_path, 3)
    _resume_and_compare(tmp_path, saved, 3, 1, reference, ref_state)


@pytest.mark.slow   # 4 processes on a 2-core machine: ~3 min
def test_zero3_dp2_resumes_on_dp4_and_zero2_on_dp1(tmp_path):
    saved, reference, ref_state = _saved_and_reference(tmp_path, 3)
    _resume_and_compare(tmp_path, saved, 3, 4, reference, ref_state)
    saved, reference, ref_state = _saved_and_reference(tmp_path, 2)
    _resume_and_compare(tmp_path, saved, 2, 1, reference, ref_state)


@pytest.mark.slow   # 4 processes (TP=2 x DP=2) on a 2-core machine: ~4 min
def test_zero1_tp2_dp2_resumes_on_tp1_dp2(tmp_path):
    saved, reference, ref_state = _saved_and_reference(tmp_path, 1, tp=2)
    _resume_and_compare(tmp_path, saved, 1, 2, reference, ref_state, tp=1, saved_ranks=4)


def test_zero0_tp2_resumes_on_tp1_dp2(tmp_path):
    """fp32 ZeRO-0 (whole torch-optimizer state per replica) saved on TP=2 continues on TP=1
    DP=2: the module and optimizer states are merged over TP by name."""
    saved, reference, ref_state = _saved_and_reference(tmp_path, 0, tp=2, dp=1)
    _resume_and_compare(tmp_path, saved, 0, 2, reference, ref_state, tp=1, saved_ranks=2,
                        logged="filling the ZeRO-0 weights and Adam state from the files")


# --- the megatron engine: another TP and/or PP size -------------------------------------------
def _mg_saved_and_reference(tmp_path, layout, nproc, name):
    """A run stopped at step 2 (saved), and the same run continued to step 4 on its own layout
    (the reference curve), with the state the engine's own load gives there."""
    saved, ref = tmp_path / f"saved_{name}", tmp_path / f"ref_{name}"
    args = COMMON + MG + layout + ["train.steps=4"]
    res = run_torchrun(nproc, args + [f"output_dir={saved}", "train.stop_at_step=2"], timeout=600)
    assert res.returncode == 0, res.stdout[-4000:]
    shutil.copytree(saved, ref)
    ref_state, _ = _state(tmp_path, ref, nproc, ref.name, MG + layout)
    res = run_torchrun(nproc, args + [f"output_dir={ref}"], timeout=600)
    assert res.returncode == 0, res.stdout[-4000:]
    return saved, _metrics(ref), ref_state


def _mg_resume_and_compare(tmp_path, saved, layout, nproc, reference, ref_state, saved_ranks,
                           bound=LOSS_BOUND):
    run = tmp_path / ("resumed_" + "_".join(x.split("=")[1] for x in layout))
    shutil.copytree(saved, run)
    state, out = _state(tmp_path, run, nproc, run.name, MG + layout)
    assert "filling each stage's weights and Adam state from the files by name" in out, out[-3000:]
    _same_state(ref_state, state)
    res = run_torchrun(nproc, COMMON + MG + layout + ["train.steps=4", f"output_dir={run}"], timeout=600)
    assert res.returncode == 0, res.stdout[-4000:]
    if saved_ranks != nproc:
        assert (f"checkpoint has {saved_ranks} ranks, this run {nproc}: resuming the epoch at "
                "sample 32" in res.stdout)
    got = _metrics(run)
    assert [m["step"] for m in got] == [1, 2, 3, 4]
    for m, r in zip(got[2:], reference[2:]):
        for k in ("loss", "ntp_loss", "fm_loss"):
            assert abs(m[k] - r[k]) <= bound * abs(r[k]), (m["step"], k, m[k], r[k])
        assert m["lr/llm.decay"] == r["lr/llm.decay"]


def test_megatron_pp2_resumes_on_pp1_with_its_optimizer_state(tmp_path):
    pp2 = ["parallel.pp=2", "parallel.tp=1"]
    saved, reference, ref_state = _mg_saved_and_reference(tmp_path, pp2, 2, "pp2")
    _mg_resume_and_compare(tmp_path, saved, ["parallel.pp=1", "parallel.tp=1"], 1, reference,
                           ref_state, saved_ranks=2)
    # a checkpoint from before param_names: refused before anything loads, naming the file
    # and the layout it still resumes on
    old = tmp_path / "old_format"
    shutil.copytree(saved, old)
    f = old / "checkpoints" / "step00000002" / "optim_pp01_tp00.pt"
    sd = torch.load(f, weights_only=True)
    del sd["param_names"]
    torch.save(sd, f)
    from hydra_dist.export.manifest import MANIFEST, file_hash, write_manifest
    folder = f.parent   # re-hashed: an old-format file, not a damaged one
    write_manifest(folder, {str(q.relative_to(folder)): file_hash(q) for q in folder.rglob("*")
                            if q.is_file() and q.name != MANIFEST})
    res = run_torchrun(1, COMMON + MG + ["train.steps=4", f"output_dir={old}"], timeout=400)
    assert res.returncode != 0
    assert ("optim_pp01_tp00.pt has no param_names (saved by an older hydra_dist): it resumes "
            "only on its own TP and PP sizes (tp=1 pp=2)") in res.stdout, res.stdout[-3000:]


def test_megatron_bf16_tp2_resumes_on_pp2(tmp_path):   # ~1 min
    """bf16: the fp32 masters (not the bf16 weights) are what moves; TP slices merge and the
    layers move to the other pipeline stage."""
    tp2 = ["parallel.tp=2", "parallel.pp=1", "parallel.precision=bf16"]
    saved, reference, ref_state = _mg_saved_and_reference(tmp_path, tp2, 2, "tp2_bf16")
    _mg_resume_and_compare(tmp_path, saved, ["parallel.tp=1", "parallel.pp=2", "parallel.precision=bf16"],
                           2, reference, ref_state, saved_ranks=2, bound=BF16_LOSS_BOUND)
