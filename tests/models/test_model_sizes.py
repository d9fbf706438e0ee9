"""The 1.5B and 7B configs have Qwen2.5's exact LLM shapes: built on the meta device, our LLM has
exactly the parameter count of transformers' Qwen2ForCausalLM (also on meta) for the same shape."""
import pytest
import torch

from hydra_dist.config import load_config

# Published totals (Qwen2.5 model cards): 1.54B and 7.61B.
PUBLISHED = {"hydra_1.5b": 1.54e9, "hydra_7b": 7.61e9}


def hf_count(llm):
    from transformers import Qwen2Config, Qwen2ForCausalLM
    c = Qwen2Config(vocab_size=llm.vocab_size, hidden_size=llm.hidden_size,
                    intermediate_size=llm.ffn_size, num_hidden_layers=llm.num_layers,
                    num_attention_heads=llm.num_heads, num_key_value_heads=llm.num_kv_heads,
                    tie_word_embeddings=llm.tie_word_embeddings)
    with torch.device("meta"):
        m = Qwen2ForCausalLM(c)
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("name", ["hydra_1.5b", "hydra_7b"])
def test_llm_matches_qwen25_shapes(single_process_mp, name):
    from hydra_dist.models.hydra import HydraModel
    cfg = load_config(f"configs/model/{name}.yaml")
    with torch.device("meta"):
        model = HydraModel(cfg.model)
    ours = sum(p.numel() for p in model.llm.parameters())
    assert ours == hf_count(cfg.model.llm)
    assert ours == pytest.approx(PUBLISHED[name], rel=0.02)
    vision = sum(p.numel() for m in (model.patch, model.gen_vit, model.gsb, model.sem_vit)
                 for p in m.parameters())
    assert vision == pytest.approx(0.30e9, rel=0.03)   # InternViT-300M + GSB
    assert all(p.device.type == "meta" for p in model.parameters())
