"""Config validation of the megatron engine's layouts (no process group needed)."""
import pytest

from hydra_dist.config import load_config
from hydra_dist.config.schema import check_layout

OK = ["parallel.engine=megatron", "parallel.zero_stage=0", "parallel.pp=2", "parallel.grad_accum=4",
      "model.llm.num_layers=4"]


def errors(*overrides, world=2):
    cfg = load_config(None, list(overrides))
    return dict(check_layout(cfg, world))


def test_valid_pipeline_layouts_pass():
    assert errors(*OK) == {}
    assert errors(*OK, "parallel.virtual_pp=2") == {}
    assert errors(*OK, "parallel.tp=2", world=4) == {}


@pytest.mark.parametrize("extra, key, says", [
    (["parallel.zero_stage=3"], "parallel.zero_stage", "zero_stage=0"),
    (["parallel.grad_accum=1"], "parallel.grad_accum", "fewer than the 2 pipeline stages"),
    (["parallel.virtual_pp=2", "parallel.grad_accum=3"], "parallel.grad_accum", "divisible by pp"),
    (["model.llm.num_layers=3"], "model.llm.num_layers", "pipeline chunks"),
    (["parallel.virtual_pp=4"], "model.llm.num_layers", "pp*virtual_pp = 8"),
    (["data.pack_tokens=256"], "data.pack_tokens", "fixed-shape"),
    (["model.llm.tie_word_embeddings=true"], "model.llm.tie_word_embeddings", "first and the last"),
    (["parallel.precision=fp32", "model.attention=flash"], "model.attention", "bf16/fp16 only"),
])
def test_refused_layouts_name_the_key(extra, key, says):
    errs = errors(*OK, *extra)
    assert key in errs and says in errs[key], errs


def test_deepspeed_refuses_pp_and_virtual_pp():
    errs = errors("parallel.pp=2", "parallel.virtual_pp=2", "model.llm.num_layers=4")
    assert "ZeRO-2/3 with pipeline" in errs["parallel.pp"]
    assert "parallel.engine=megatron" in errs["parallel.virtual_pp"]
