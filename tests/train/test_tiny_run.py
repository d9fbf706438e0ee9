"""A real 2-process ZeRO-3 run (gloo) of the tiny HYDRA: losses, checkpoint, MLflow, exact resume."""
import json

import pytest

from launch import run_torchrun

BASE = ["configs/tiny_cpu.yaml", "train.steps=6", "checkpoint.every=3",
        "data.synthetic.num_samples=256"]


def metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_zero3_two_processes_checkpoint_mlflow_and_exact_resume(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    res = run_torchrun(2, BASE + [f"output_dir={a}"], timeout=400)
    assert res.returncode == 0, res.stdout[-4000:]
    ma = metrics(a)
    assert [m["step"] for m in ma] == [1, 2, 3, 4, 5, 6]
    for m in ma:
        assert m["ntp_loss"] > 0 and m["fm_loss"] > 0 and m["grad_norm"] > 0
        # unpacked rows are padded to the longest sample: a real, reported share
        assert 0.0 < m["padding_share"] < 1.0 and m["mfu"] > 0
    assert ma[-1]["ntp_loss"] < ma[0]["ntp_loss"]
    ck = a / "checkpoints"
    assert (ck / "latest").read_text() == "step00000006"
    assert (ck / "step00000006" / "manifest.json").is_file()
    # ZeRO-3: each rank wrote its own optimizer partition
    assert len(list((ck / "step00000006").glob("zero_pp_rank_*_optim_states.pt"))) == 2
    assert (a / "config.yaml").is_file()

    from mlflow.tracking import MlflowClient
    client = MlflowClient(tracking_uri=f"sqlite:///{a / 'mlflow.db'}")
    run = client.search_runs([client.get_experiment_by_name("hydra-tiny").experiment_id])[0]
    hist = client.get_metric_history(run.info.run_id, "ntp_loss")
    assert sorted(h.step for h in hist) == [1, 2, 3, 4, 5, 6]
    assert run.data.params["parallel.zero_stage"] == "3"
    # the held-out probe ran at the last step (ZeRO-3, both ranks in lockstep): accuracies and
    # the captions themselves reach MLflow
    for k in ("eval/fg_acc", "eval/shape_acc", "eval/bg_acc"):
        hist = client.get_metric_history(run.info.run_id, k)
        assert [h.step for h in hist] == [6] and 0.0 <= hist[0].value <= 1.0
    caps = json.loads((a / "samples" / "captions_step00000006.json").read_text())
    assert len(caps) == 8 and all(set(c) == {"caption", "truth"} for c in caps)
    assert "captions_step00000006.json" in [f.path.rsplit("/", 1)[-1]
                                            for f in client.list_artifacts(run.info.run_id, "samples")]
    assert "held-out step 6:" in res.stdout

    # interrupted at step 3, then the same command again resumes and finishes
    res = run_torchrun(2, BASE + [f"output_dir={b}", "train.stop_at_step=3"], timeout=400)
    assert res.returncode == 0, res.stdout[-4000:]
    assert (b / "checkpoints" / "latest").read_text() == "step00000003"
    res = run_torchrun(2, BASE + [f"output_dir={b}"], timeout=400)
    assert res.returncode == 0, res.stdout[-4000:]
    assert "resumed from" in res.stdout
    mb = metrics(b)
    assert [m["step"] for m in mb] == [1, 2, 3, 4, 5, 6]  # no step lost or repeated
    for x, y in zip(ma, mb):
        for key in ("loss", "ntp_loss", "fm_loss"):
            assert x[key] == pytest.approx(y[key], rel=1e-6, abs=1e-7), (x["step"], key)
    # the resumed run continued the same MLflow run
    client_b = MlflowClient(tracking_uri=f"sqlite:///{b / 'mlflow.db'}")
    runs_b = client_b.search_runs([client_b.get_experiment_by_name("hydra-tiny").experiment_id])
    assert len(runs_b) == 1
    assert sorted(h.step for h in client_b.get_metric_history(runs_b[0].info.run_id, "loss")) == [1, 2, 3, 4, 5, 6]
