"""Start-up output (hydra_dist/logs.py): a real 2-rank run prints none of the dependency
notices that say nothing to our user, states once which fast paths run, and keeps our own log;
the filters are specific (same message elsewhere, or another megatron warning, still shows)."""
import warnings

from launch import run_torchrun

NOISE = ("Transformer Engine and Apex are not installed", "No CUDA runtime is found",
         "Detected Megatron Core", "Using Megatron-FSDP", "Because `predownload`",
         "Because `num_canonical_nodes`", "Because `shuffle_block_size`",
         "Creating initial MLflow database tables", "Updating database tables")


def test_two_rank_startup_has_no_dependency_noise(tmp_path):
    res = run_torchrun(2, ["configs/tiny_cpu.yaml", "train.steps=1", "data.synthetic.num_samples=32",
                           f"output_dir={tmp_path / 'run'}"], timeout=300)
    assert res.returncode == 0, res.stdout[-4000:]
    out = res.stdout
    for n in NOISE:
        assert n not in out, (n, out[:3000])
    lines = [ln for ln in out.splitlines() if "fast paths on" in ln]
    assert len(lines) == 1, out[:3000]       # once, on the logging rank
    assert "attention reference" in lines[0] and "GSB ops fused" in lines[0]
    assert "not installed:" in lines[0] and "Transformer Engine" in lines[0]
    assert "step 1/1 loss" in out and "global batch" in out    # our own log is intact


def test_filters_are_specific():
    from hydra_dist.logs import TE_APEX, quiet_dependencies
    with warnings.catch_warnings(record=True) as seen:
        warnings.resetwarnings()
        quiet_dependencies(cuda=False)

        def warn(msg, module, category=UserWarning):
            warnings.warn_explicit(msg, category, "f.py", 1, module=module, registry={})
        warn(TE_APEX + ". Falling back to Torch optimizers.", "megatron.core.optimizer")
        warn(TE_APEX + ".", "hydra_dist.models.layers")               # ours: shown
        warn("megatron says something else", "megatron.core.optimizer")   # shown
        warn("some deprecation", "torch.distributed.c10d", FutureWarning)
        warn("another deprecation", "torch.nn", FutureWarning)              # shown
    got = [(str(w.message), w.category) for w in seen]
    assert got == [(TE_APEX + ".", UserWarning), ("megatron says something else", UserWarning),
                   ("another deprecation", FutureWarning)]
