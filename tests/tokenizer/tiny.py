"""Tiny tokenizer configs and images for the tests."""
import torch

from hydra_dist.config import load_config

TINY = ["task=tokenizer", "model.vit.image_size=16", "model.vit.patch_size=4",
        "model.vit.hidden_size=32", "model.vit.num_heads=4", "model.vit.mlp_size=64",
        "model.vit.gen_layers=2", "model.vit.sem_layers=2", "model.gsb.latent_channels=8",
        "model.gsb.kernel=reference", "tokenizer.decoder.hidden_size=32",
        "tokenizer.decoder.num_layers=2", "tokenizer.decoder.num_heads=4",
        "tokenizer.decoder.mlp_size=64", "tokenizer.decoder.time_embed_dim=32",
        "tokenizer.gan.channels=8", "tokenizer.gan.num_layers=2",
        "tokenizer.weights.lpips=0", "tokenizer.distill_layers=[0,3]"]


def tiny_cfg(*overrides):
    return load_config(None, TINY + list(overrides))


def images(n, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=g) * 2 - 1
