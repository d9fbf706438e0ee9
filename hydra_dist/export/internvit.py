"""Import an InternViT vision checkpoint into HYDRA-TOK's ViT (student halves or teacher).

Accepted formats (a folder with model.safetensors[.index.json] / pytorch_model.bin, or one file):
  - transformers' InternVLVisionModel (transformers >= 4.52: embeddings.cls_token,
    encoder.layer.N.attention.q_proj, lambda_1, layernorm_before, ...), alone or inside a full
    InternVL checkpoint (prefix vision_tower. / model.vision_tower.);
  - OpenGVLab's original InternViT (embeddings.class_embedding, encoder.layers.N.attn.qkv,
    ls1, norm1, ...; prefix vision_model. inside InternVL chat checkpoints).
Both are first mapped to one full layout (patch.*, blocks.N.*), then TP-sliced into our
parameters. The block options must match (model.vit.use_cls_token, layer_scale_init > 0,
qk_norm, norm_type, qkv_bias): a mismatch is an error naming the key. A final layernorm
(use_mean_pooling=False) is not part of our ViT and is ignored; so is pooling.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from hydra_dist.models.tokenizer.weights import load_full

PREFIXES = ("model.vision_tower.", "vision_tower.", "vision_model.", "model.vision_model.")
HF_LAYER = {"attention.q_proj": "attn.q", "attention.k_proj": "attn.k", "attention.v_proj": "attn.v",
            "attention.projection_layer": "attn.o", "attention.q_norm": "attn.q_norm",
            "attention.k_norm": "attn.k_norm", "layernorm_before": "norm1",
            "layernorm_after": "norm2", "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2"}
ORIG_LAYER = {"attn.proj": "attn.o", "attn.q_norm": "attn.q_norm", "attn.k_norm": "attn.k_norm",
              "norm1": "norm1", "norm2": "norm2", "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2"}


def read_state(path: str | Path) -> dict:
    """All tensors of a checkpoint folder or file, vision prefixes stripped."""
    p = Path(path)
    if p.is_dir():
        for name in ("model.safetensors.index.json", "model.safetensors", "pytorch_model.bin"):
            if (p / name).is_file():
                p = p / name
                break
        else:
            raise FileNotFoundError(f"{path}: no model.safetensors[.index.json] or pytorch_model.bin")
    if p.name.endswith(".index.json"):
        files = sorted(set(json.loads(p.read_text())["weight_map"].values()))
        sd = {}
        for f in files:
            sd.update(read_state(p.parent / f))
        return sd
    if not p.is_file():
        raise FileNotFoundError(f"InternViT checkpoint not found: {path}")
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file
        sd = load_file(str(p))
    else:
        sd = torch.load(p, map_location="cpu", weights_only=True)
    out = {}
    for k, v in sd.items():
        for pre in PREFIXES:
            if k.startswith(pre):
                k = k[len(pre):]
                break
        out[k] = v
    return out


def to_full_layout(sd: dict) -> dict:
    """InternViT tensors -> {patch.proj.weight [D,3pp], patch.pos, patch.cls, patch.cls_pos,
    blocks.N.<our block names>}."""
    out = {}
    if "embeddings.cls_token" in sd:          # transformers InternVLVisionModel
        w = sd["embeddings.patch_embeddings.projection.weight"]
        out["patch.proj.bias"] = sd["embeddings.patch_embeddings.projection.bias"]
        out["patch.cls"], pos = sd["embeddings.cls_token"], sd.get("embeddings.position_embeddings")
        layer_re, table, ls = re.compile(r"encoder\.layer\.(\d+)\.(.+)"), HF_LAYER, ("lambda_1", "lambda_2")
    elif "embeddings.class_embedding" in sd:  # OpenGVLab InternViT
        w = sd["embeddings.patch_embedding.weight"]
        out["patch.proj.bias"] = sd["embeddings.patch_embedding.bias"]
        out["patch.cls"], pos = sd["embeddings.class_embedding"], sd.get("embeddings.position_embedding")
        layer_re, table, ls = re.compile(r"encoder\.layers\.(\d+)\.(.+)"), ORIG_LAYER, ("ls1", "ls2")
    else:
        raise KeyError("not an InternViT checkpoint (neither embeddings.cls_token nor "
                       "embeddings.class_embedding found)")
    if pos is None:
        raise KeyError("InternViT checkpoint without absolute position embeddings is not supported")
    out["patch.proj.weight"] = w.reshape(w.shape[0], -1)   # conv [D,3,p,p] == our (c, ph, pw) order
    out["patch.cls_pos"], out["patch.pos"] = pos[:, :1], pos[:, 1:]
    for k, v in sd.items():
        m = layer_re.fullmatch(k)
        if not m:
            continue
        i, rest = m.group(1), m.group(2)
        if rest in ls:
            out[f"blocks.{i}.{'ls1' if rest == ls[0] else 'ls2'}"] = v
            continue
        if rest.startswith("attn.qkv."):          # fused [3D, D] in q, k, v order
            for name, part in zip("qkv", v.chunk(3, dim=0)):
                out[f"blocks.{i}.attn.{name}.{rest.rsplit('.', 1)[1]}"] = part
            continue
        mod, _, leaf = rest.rpartition(".")
        if mod in table:
            out[f"blocks.{i}.{table[mod]}.{leaf}"] = v
    return out


def _check_options(full: dict, v, where: str) -> None:
    def need(ok, key, why):
        if not ok:
            raise ValueError(f"{where}: {key}: {why}")
    need(v.use_cls_token, "model.vit.use_cls_token", "InternViT has a CLS token: set true")
    need((v.layer_scale_init > 0) == ("blocks.0.ls1" in full), "model.vit.layer_scale_init",
         "must be > 0 exactly when the checkpoint has layer scales (lambda_1/ls1)")
    need(v.qk_norm == ("blocks.0.attn.q_norm.weight" in full), "model.vit.qk_norm",
         f"checkpoint {'has' if 'blocks.0.attn.q_norm.weight' in full else 'has no'} QK-norm")
    need(v.qkv_bias == ("blocks.0.attn.q.bias" in full), "model.vit.qkv_bias",
         f"checkpoint {'has' if 'blocks.0.attn.q.bias' in full else 'has no'} q/k/v biases")
    need((v.norm_type == "layer_norm") == ("blocks.0.norm1.bias" in full), "model.vit.norm_type",
         "layer_norm has a bias, rms_norm none: does not match the checkpoint")
    n = (v.image_size // v.patch_size) ** 2
    need(full["patch.pos"].shape[1] == n, "model.vit.image_size",
         f"{v.image_size}/{v.patch_size} gives {n} patches, the checkpoint's positions "
         f"{full['patch.pos'].shape[1]} (no interpolation)")
    depth = 1 + max(int(k.split(".")[1]) for k in full if k.startswith("blocks."))
    need(depth == v.gen_layers + v.sem_layers, "model.vit.gen_layers",
         f"gen_layers + sem_layers = {v.gen_layers + v.sem_layers}, the checkpoint has {depth} blocks")


def load_internvit(path: str | Path) -> dict:
    return to_full_layout(read_state(path))


def import_into_student(model, path: str | Path) -> None:
    """HydraTok: patch, Gen-ViT (first gen_layers blocks), Sem-ViT (the rest); Sem-ViT's CLS
    starts as the checkpoint's CLS + its position (what the teacher's block gen_layers sees)."""
    full, v = load_internvit(path), model.vit_cfg
    _check_options(full, v, str(path))
    ours = {}
    for k, t in full.items():
        if k.startswith("blocks."):
            _, i, rest = k.split(".", 2)
            i = int(i)
            ours[f"gen_vit.blocks.{i}.{rest}" if i < v.gen_layers
                 else f"sem_vit.blocks.{i - v.gen_layers}.{rest}"] = t
        else:
            ours[k] = t
    if model.sem_cls is not None:
        ours["sem_cls.token"] = full["patch.cls"] + full["patch.cls_pos"]
    names = load_full(model, ours, strict=False, where=str(path))
    expected = [n for n, _ in model.named_parameters()
                if n.split(".")[0] in ("patch", "gen_vit", "sem_vit", "sem_cls")]
    missing = sorted(set(expected) - set(names))
    if missing:
        raise KeyError(f"{path}: no tensors for {missing[:8]}")


def import_into_teacher(teacher, path: str | Path) -> None:
    full = load_internvit(path)
    v = teacher.vit_cfg
    _check_options(full, v, str(path))
    ours = {(f"vit.{k}" if k.startswith("blocks.") else k): t for k, t in full.items()}
    load_full(teacher, ours, strict=True, where=str(path))
