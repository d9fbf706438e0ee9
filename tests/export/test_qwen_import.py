"""HF Qwen2 -> our QwenLM: the name/shape map, vocabulary padding, tying, and equal logits."""
import json

import pytest
import torch

from hf_tiny import our_llm_logits, save_tiny_qwen2


def _our_model(tmp_path, init_from, vocab=384, tie=False):
    from hydra_dist.config.schema import LLMConfig, ModelConfig
    from hydra_dist.models.hydra import HydraModel
    llm = LLMConfig(vocab_size=vocab, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                    ffn_size=128, tie_word_embeddings=tie)
    torch.manual_seed(3)
    return HydraModel(ModelConfig(llm=llm, init_from=str(init_from))).eval()


def test_name_map_round_trip():
    from hydra_dist.config.schema import LLMConfig
    from hydra_dist.export.qwen_map import expected_shapes, hf_to_ours_name, ours_to_hf_name, tp_partition_dim
    c = LLMConfig(num_layers=3)
    names = expected_shapes(c)
    assert len(names) == 3 + 12 * 3
    for n in names:
        hf = ours_to_hf_name(n)
        assert hf and hf_to_ours_name(hf) == n
    assert tp_partition_dim("model.layers.1.self_attn.o_proj.weight") == 1
    assert tp_partition_dim("model.layers.1.mlp.up_proj.weight") == 0
    assert tp_partition_dim("model.embed_tokens.weight") == 0
    assert tp_partition_dim("model.norm.weight") is None


@pytest.mark.parametrize("tie,vocab", [(False, 384), (True, 448)])
def test_import_gives_same_logits(tmp_path, megatron_tp1, tie, vocab):
    from transformers import Qwen2ForCausalLM
    from hydra_dist.checkpoint.init_weights import load_initial_weights
    from hydra_dist.cli.import_hf import main as import_main
    hf_dir, out = tmp_path / "hf", tmp_path / "init.safetensors"
    save_tiny_qwen2(hf_dir, tie=tie)
    hf = Qwen2ForCausalLM.from_pretrained(hf_dir, local_files_only=True, torch_dtype=torch.float32).eval()
    assert import_main([str(hf_dir), str(out)]) == 0
    model = _our_model(tmp_path, out, vocab=vocab, tie=tie)
    init_rows = model.llm.embed.weight[384:].clone()
    rep = load_initial_weights(model, model.cfg)
    assert all(k.startswith("llm.") for k in rep["loaded"])
    assert ("llm.lm_head.weight" in rep["loaded"]) == (not tie)
    # padded vocabulary rows keep the model's own initialisation
    assert torch.equal(model.llm.embed.weight[384:], init_rows)
    ids = torch.randint(0, 384, (2, 17), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = hf(input_ids=ids).logits
        ours = our_llm_logits(model, ids)
    assert ours.shape[-1] == vocab
    torch.testing.assert_close(ours[..., :384], ref, atol=1e-4, rtol=0)


def test_import_checks_config(tmp_path):
    from hydra_dist.cli.import_hf import main as import_main
    hf_dir = tmp_path / "hf"
    save_tiny_qwen2(hf_dir)
    # the tiny CPU config's LLM is 128 wide: refused before writing anything
    rc = import_main([str(hf_dir), str(tmp_path / "x.safetensors"), "--config", "configs/tiny_cpu.yaml"])
    assert rc == 1 and not (tmp_path / "x.safetensors").exists()
    rc = import_main([str(hf_dir), str(tmp_path / "y.safetensors"), "--config", "configs/tiny_cpu.yaml",
                      "model.llm.hidden_size=64", "model.llm.ffn_size=128"])
    assert rc == 0
    from hydra_dist.export.st_io import read_metadata
    meta = read_metadata(tmp_path / "y.safetensors")
    assert json.loads(meta["hf_config"])["hidden_size"] == 64 and meta["hf_vocab_size"] == "384"


def test_init_from_hf_folder_directly(tmp_path, megatron_tp1):
    from hydra_dist.checkpoint.init_weights import load_initial_weights
    hf_dir = tmp_path / "hf"
    hf = save_tiny_qwen2(hf_dir, tie=True)
    model = _our_model(tmp_path, hf_dir, tie=False)  # untied model from a tied source
    load_initial_weights(model, model.cfg)
    w = hf.model.embed_tokens.weight
    assert torch.equal(model.llm.embed.weight, w) and torch.equal(model.llm.lm_head.weight, w)
    assert load_initial_weights(model, type("C", (), {"init_from": ""})()) is None
