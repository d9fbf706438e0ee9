"""model.vit.use_cls_token (InternViT's CLS) in the unified model: a HYDRA-TOK trained with a CLS
token loads into it (model.tokenizer_from) and gives the same latent and Sem-ViT features, every
parameter (Sem-ViT's CLS included) gets a gradient, and the exported modeling code reproduces it."""
import importlib
import sys

import torch

from hydra_dist.config import load_config

CLS = ["model.vit.use_cls_token=true", "model.vit.layer_scale_init=0.1",
       "model.head.latent_skip=true"]  # the exported code's skip path is checked here too


def _images(n=3):
    return torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(3)) * 2 - 1


def _randomise(module, seed):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.05)


def test_tokenizer_with_cls_loads_into_unified_model(tmp_path, single_process_mp):
    from hydra_dist.checkpoint.init_tokenizer import load_tokenizer_parts
    from hydra_dist.models.hydra import HydraModel
    from hydra_dist.models.tokenizer.model import HydraTok
    torch.manual_seed(0)
    tok = HydraTok(load_config("configs/tokenizer/tiny_stage1.yaml", CLS)).eval()
    _randomise(tok, 1)  # CLS tokens and layer scales off their zero / constant init
    from hydra_dist.models.tokenizer.weights import full_state_dict
    torch.save({"state_dict": full_state_dict(tok)}, tmp_path / "tokenizer.pt")
    torch.manual_seed(1)
    model = HydraModel(load_config("configs/tiny_cpu.yaml", CLS).model).eval()
    loaded = load_tokenizer_parts(model, str(tmp_path))
    assert "sem_cls.token" in loaded and "patch.cls" in loaded
    x = _images()
    with torch.no_grad():
        _, _, mu, _, _, _ = tok.encode(x)
        torch.testing.assert_close(model.encode_latent(x), mu, rtol=0, atol=0)
        _, sem_hidden = tok.semantic(mu)
        ours = model.sem_vit(model.sem_cls(model.gsb.decode(mu)))
    torch.testing.assert_close(ours, sem_hidden[-1], rtol=0, atol=0)
    assert mu.shape == (3, 64, 16)  # the GSB compresses the 64 patch tokens, not the CLS


def _batch():
    from hydra_dist.data.collate import HydraCollator
    from hydra_dist.data.synthetic import make_sample
    from hydra_dist.data.tokenizer import ByteTokenizer
    samples = [dict(zip(("image", "caption"), make_sample(i, 7, 32)[:2]), id=i) for i in range(6)]
    return HydraCollator(ByteTokenizer(), 32, 16, 48, 0.5, 17)(samples)


def test_cls_unified_model_trains_every_part_and_exports(single_process_mp):
    from hydra_dist.export import hf_export
    from hydra_dist.models.hydra import HydraModel
    cfg = load_config("configs/tiny_cpu.yaml", CLS + ["model.freeze=[]"])
    torch.manual_seed(2)
    model = HydraModel(cfg.model)
    _randomise(model.flow_head, 4)
    with torch.no_grad():
        model.sem_cls.token.normal_(0, 0.5)
    batch = _batch()
    out = model(batch, noise_seed=5)
    out["loss"].backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not no_grad, no_grad
    # the exported modeling code, built from the exported config, on the same weights
    sys.path.insert(0, str(hf_export.REMOTE_CODE.parent))
    try:
        conf = importlib.import_module("remote_code.configuration_hydra")
        modeling = importlib.import_module("remote_code.modeling_hydra")
    finally:
        sys.path.pop(0)
    hf_cfg = conf.HydraConfig(**{k: v for k, v in hf_export._hydra_config(cfg, "all").items()
                                 if k not in ("architectures", "model_type", "auto_map")})
    hf = modeling.HydraForPretraining(hf_cfg).eval()
    from hydra_dist.export.qwen_map import ours_to_export_name
    ours = {ours_to_export_name(k): v for k, v in model.state_dict().items()
            if not k.endswith("_extra_state")}
    missing, unexpected = hf.load_state_dict(ours, strict=False)
    assert not missing and not unexpected, (missing, unexpected)
    model.eval()
    with torch.no_grad():
        ref = model(batch, noise_seed=5)
        got = hf(**batch, noise_seed=5)
    torch.testing.assert_close(got.ntp_loss, ref["ntp"], atol=1e-5, rtol=0)
    torch.testing.assert_close(got.fm_loss, ref["fm"], atol=1e-5, rtol=0)
