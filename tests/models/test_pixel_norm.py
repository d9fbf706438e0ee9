"""model.vit.pixel_norm: the formula (InternViT's ImageNet mean/std on [0, 1] pixels), how
`auto` resolves from what a config loads, the guard on a tokenizer trained another way, and the
export's remote code computing the same bits as our patch embedding."""
import importlib
import json
import sys
import types

import pytest
import torch
import yaml

from hydra_dist.config import load_config
from hydra_dist.models.vit import IMAGENET_MEAN, IMAGENET_STD, normalise_pixels

REPO_REMOTE = "hydra_dist/export/remote_code"


def test_imagenet_is_torchvision_normalize_of_unit_pixels():
    u = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8)
    x = u.float() / 127.5 - 1.0                       # what the loader / model_pixels give
    want = (u.float() / 255 - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / \
        torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)   # InternVL: ToTensor then Normalize
    torch.testing.assert_close(normalise_pixels(x, "imagenet"), want, rtol=0, atol=1e-6)
    assert normalise_pixels(x, "unit") is x
    bf = normalise_pixels(x.bfloat16(), "imagenet")   # computed in fp32, handed back in bf16
    assert bf.dtype == torch.bfloat16
    assert torch.equal(bf, normalise_pixels(x.bfloat16().float(), "imagenet").bfloat16())


def test_auto_follows_what_the_config_loads(tmp_path):
    tok = ["configs/tokenizer/tiny_stage1.yaml"]
    assert load_config(tok[0]).model.vit.pixel_norm == "unit"
    assert load_config(tok[0], ["tokenizer.teacher_from=/m/internvit"]).model.vit.pixel_norm == "imagenet"
    assert load_config(tok[0], ["tokenizer.init_from=/m/internvit"]).model.vit.pixel_norm == "imagenet"
    assert load_config(tok[0], ["tokenizer.init_from=/m/internvit",
                                "model.vit.pixel_norm=unit"]).model.vit.pixel_norm == "unit"
    uni = "configs/tiny_cpu.yaml"
    assert load_config(uni).model.vit.pixel_norm == "unit"
    run = tmp_path / "tok_run"                         # a HYDRA-TOK run: its resolved config.yaml
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump({"model": {"vit": {"pixel_norm": "imagenet"}}}))
    assert load_config(uni, [f"model.tokenizer_from={run / 'tokenizer.pt'}"]).model.vit.pixel_norm == "imagenet"
    bare = tmp_path / "bare"                           # only tokenizer.pt: its meta holds the config
    bare.mkdir()
    torch.save({"state_dict": {}, "meta": {"config": {"model": {"vit": {"pixel_norm": "imagenet"}}}}},
               bare / "tokenizer.pt")
    assert load_config(uni, [f"model.tokenizer_from={bare}"]).model.vit.pixel_norm == "imagenet"
    old = tmp_path / "old"                             # before the key: trained on [-1, 1]
    old.mkdir()
    torch.save({"state_dict": {}, "meta": {"config": {"model": {"vit": {}}}}}, old / "tokenizer.pt")
    assert load_config(uni, [f"model.tokenizer_from={old}"]).model.vit.pixel_norm == "unit"
    export = tmp_path / "export"                       # an export of an earlier stage
    export.mkdir()
    (export / "config.json").write_text(json.dumps({"vision_config": {"pixel_norm": "imagenet"}}))
    assert load_config(uni, [f"model.init_from={export}"]).model.vit.pixel_norm == "imagenet"
    qwen = tmp_path / "qwen"                           # an LLM folder: nothing about pixels
    qwen.mkdir()
    (qwen / "config.json").write_text(json.dumps({"model_type": "qwen2"}))
    assert load_config(uni, [f"model.init_from={qwen}"]).model.vit.pixel_norm == "unit"


def test_tokenizer_trained_another_way_is_refused_by_name(tmp_path, megatron_tp1):
    from hydra_dist.checkpoint.init_tokenizer import load_tokenizer_parts
    from hydra_dist.models.hydra import HydraModel
    cfg = load_config("configs/tiny_cpu.yaml", ["model.vit.pixel_norm=unit"])
    model = HydraModel(cfg.model)
    sd = {k: v for k, v in model.state_dict().items() if k.startswith(("patch.", "gen_vit.", "gsb.", "sem_vit."))}
    torch.save({"state_dict": sd, "meta": {"config": {"model": {"vit": {"pixel_norm": "imagenet"}}}}},
               tmp_path / "tokenizer.pt")
    with pytest.raises(ValueError, match=r"tokenizer.pt was trained with model.vit.pixel_norm=imagenet, "
                                         r"this run has unit"):
        load_tokenizer_parts(model, str(tmp_path))


def test_export_remote_patch_embed_gives_our_bits(megatron_tp1):
    from hydra_dist.models.vit import PatchEmbed
    pkg = types.ModuleType("hydra_remote_pn")
    pkg.__path__ = [REPO_REMOTE]
    sys.modules["hydra_remote_pn"] = pkg
    remote = importlib.import_module("hydra_remote_pn.modeling_hydra")
    cfg = load_config("configs/tiny_cpu.yaml", ["model.vit.pixel_norm=imagenet"])
    v = cfg.model.vit
    ours = PatchEmbed(v, 0.02)
    theirs = remote.PatchEmbed({"patch_size": v.patch_size, "image_size": v.image_size,
                                "hidden_size": v.hidden_size, "pixel_norm": "imagenet"})
    theirs.load_state_dict(ours.state_dict())
    x = torch.rand(2, 3, v.image_size, v.image_size) * 2 - 1
    with torch.no_grad():
        assert torch.equal(ours(x), theirs(x))
        unit = remote.PatchEmbed({"patch_size": v.patch_size, "image_size": v.image_size,
                                  "hidden_size": v.hidden_size})   # an export from before the key
        unit.load_state_dict(ours.state_dict())
        assert not torch.allclose(unit(x), ours(x), atol=1e-2)       # the normalisation is applied
