"""Per-part learning rates and freezing reach the optimizer exactly."""
import pytest
import torch

from hydra_dist.config import ConfigError, load_config


def test_lr_per_part_validation():
    with pytest.raises(ConfigError, match=r"train\.optim\.lr_per_part\.vision: unknown part"):
        load_config(None, ["train.optim.lr_per_part={vision: 1e-4}"])
    with pytest.raises(ConfigError, match=r"train\.optim\.lr_per_part\.llm: expected float"):
        load_config(None, ["train.optim.lr_per_part={llm: fast}"])


def test_param_groups_follow_parts_and_freezing(single_process_mp):
    from hydra_dist.models.hydra import HydraModel
    from hydra_dist.parallel.deepspeed_engine import param_groups
    cfg = load_config(None, ["model.freeze=[gen_vit, gsb, llm]",
                             "train.optim.lr_per_part={projector: 1.0e-4, flow_head: 1.0e-4, sem_vit: 5.0e-5}"])
    model = HydraModel(cfg.model)
    groups = param_groups(model, cfg)
    by_part = {}
    for g in groups:
        by_part.setdefault(g["name"].split(".")[0], set()).add(g["lr"])
    assert by_part == {"sem_vit": {5e-5}, "projector": {1e-4}, "flow_head": {1e-4}}
    in_groups = {id(p) for g in groups for p in g["params"]}
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert in_groups == trainable  # frozen parts: no optimizer state
    assert not any(p.requires_grad for p in model.llm.parameters())
