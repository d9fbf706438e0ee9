"""A HYDRA-TOK run gets the unified loop's guards (one loop, train/trainer.py): a non-finite
loss is skipped on every rank and counted (the replicated GAN discriminator skips too), too many
in a row save and stop with the same error; the CLI prints the tokenizer's own final losses."""
import json
import math

from common import latest, metrics
from launch import run_torchrun

TOK = ["configs/tokenizer/tiny_stage1.yaml", "data.synthetic.num_samples=128",
       "parallel.timeout_s=30", "parallel.micro_batch_size=4", "tokenizer.eval_images=0",
       "tokenizer.weights.gan=0.05", "tokenizer.gan.start_step=0"]
KEYS = ("loss", "fm", "reg", "dist", "gan_g", "gan_d")


def test_tokenizer_nan_steps_skipped_then_too_many_in_a_row_stop(tmp_path):
    run = tmp_path / "run"
    args = TOK + ["parallel.grad_accum=2", "train.steps=8", "checkpoint.every=10",
                  "train.inject_nan_at_steps=[3,5,6]", "train.max_skipped_in_row=2",
                  f"output_dir={run}"]
    res = run_torchrun(2, args, timeout=400, env={"HYDRA_FAULT": "nan_micro=1"})
    assert res.returncode != 0, res.stdout[-4000:]
    assert "step 3: non-finite loss on some rank; step skipped (1 in a row, 1 total)" in res.stdout
    assert "training stopped at step 6: 2 non-finite steps in a row (checkpoint saved" in res.stdout
    ms = metrics(run)
    assert [m["step"] for m in ms] == [1, 2, 3, 4, 5, 6]
    for m in ms:
        bad = m["step"] in (3, 5, 6)
        assert all(math.isnan(m[k]) == bad for k in KEYS), m
        assert m["skipped_steps"] == sum(s <= m["step"] for s in (3, 5, 6))
    assert latest(run) == "step00000006"
    # the discriminator stepped on the 3 good steps only: its Adam step count says so
    import torch
    extra = torch.load(run / "checkpoints" / "step00000006" / "extra_state.pt", weights_only=True)
    assert {int(s["step"]) for s in extra["disc_opt"]["state"].values()} == {3}


def test_tokenizer_cli_prints_its_final_losses(tmp_path):
    run = tmp_path / "run"
    res = run_torchrun(1, TOK + ["train.steps=2", "checkpoint.every=10", f"output_dir={run}"],
                       timeout=300)
    assert res.returncode == 0, res.stdout[-4000:]
    final = json.loads([ln for ln in res.stdout.splitlines() if ln.startswith('{"final_step"')][-1])
    last = metrics(run)[-1]
    assert final["final_step"] == 2 and "ntp_loss" not in final
    for k in KEYS:
        assert final[k] == last[k] and math.isfinite(final[k]), k
