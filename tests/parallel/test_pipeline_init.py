"""model.init_from and model.tokenizer_from on the megatron engine: every pipeline chunk takes
exactly the source tensors it holds (vision tower on the first, LM head on the last), and a
source that does not fit the whole model fails on every chunk alike."""
import pytest
import torch

from hydra_dist.config import load_config


def _stages(cfg, n=2):
    from hydra_dist.models.hydra import init_base_seed
    from hydra_dist.models.layers import mp_config
    from hydra_dist.models.pipeline_stage import HydraStage
    torch.manual_seed(0)
    base = init_base_seed()
    return [HydraStage(cfg.model, mp_config(), c, n, base) for c in range(n)]


def test_chunks_take_their_share_of_init_and_tokenizer_weights(tmp_path, megatron_tp1):
    from safetensors.torch import save_file
    from hydra_dist.models.hydra import HydraModel
    from hydra_dist.train.tasks.unified import load_pretrained
    base = load_config("configs/tiny_cpu.yaml", ["model.llm.num_layers=4"])
    torch.manual_seed(123)  # a source unlike the stages' own initialisation
    src = {n: p.detach().clone() for n, p in HydraModel(base.model).named_parameters()}
    save_file({n: t for n, t in src.items() if n.startswith("llm.")}, str(tmp_path / "init.safetensors"))
    vision = {n: t for n, t in src.items() if n.split(".")[0] in ("patch", "gen_vit", "gsb", "sem_vit")}
    torch.save({"state_dict": vision}, tmp_path / "tokenizer.pt")
    cfg = load_config("configs/tiny_cpu.yaml", ["model.llm.num_layers=4",
                                                f"model.init_from={tmp_path / 'init.safetensors'}",
                                                f"model.tokenizer_from={tmp_path}"])
    stages = _stages(cfg)
    rng = torch.get_rng_state()
    load_pretrained(stages, cfg.model)
    assert torch.equal(torch.get_rng_state(), rng)  # the meta build left the RNG stream alone
    expect = {n for n in src if n.split(".")[0] in ("llm", "patch", "gen_vit", "gsb", "sem_vit")}
    seen = {}
    for c, stage in enumerate(stages):
        for n, p in stage.named_parameters():
            assert n not in seen, f"{n} on chunks {seen[n]} and {c}"
            seen[n] = c
            if n in expect:
                assert torch.equal(p, src[n]), n
    assert expect <= set(seen)
    # the projector is in neither source: it keeps the stage's own initialisation
    assert not torch.equal(dict(stages[0].named_parameters())["projector.mlp.fc1.weight"],
                           src["projector.mlp.fc1.weight"])
    assert seen["patch.proj.weight"] == 0 and seen["llm.embed.weight"] == 0
    assert seen["llm.lm_head.weight"] == 1 and seen["llm.layers.3.attn.q.weight"] == 1

    # a tensor the whole model lacks fails on the chunk that does not hold it too
    bad = {n: t for n, t in src.items() if n.startswith("llm.")}
    bad["llm.layers.9.mlp.up.weight"] = torch.zeros(2, 2)
    save_file(bad, str(tmp_path / "bad.safetensors"))
    cfg_bad = load_config("configs/tiny_cpu.yaml", ["model.llm.num_layers=4",
                                                    f"model.init_from={tmp_path / 'bad.safetensors'}"])
    for stage in _stages(cfg_bad):
        with pytest.raises(ValueError, match="llm.layers.9.mlp.up.weight"):
            load_pretrained([stage], cfg_bad.model)
