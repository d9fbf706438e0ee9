"""Stage 1: every tokenizer parameter gets a gradient. Stage 2: the encoder gets none."""
import torch

from tiny import images, tiny_cfg


def _step(cfg):
    from hydra_dist.models.tokenizer import HydraTok, TeacherViT, TokenizerObjective
    from hydra_dist.models.tokenizer.discriminator import PatchDiscriminator
    torch.manual_seed(0)
    m = HydraTok(cfg)
    m.set_encoder_trainable(cfg.tokenizer.stage == 1)
    teacher = None
    if cfg.tokenizer.weights.dist > 0:
        teacher = TeacherViT(cfg.model.vit, 0.02)
        teacher.load_from_student(m)
    obj = TokenizerObjective(cfg, teacher)
    disc = PatchDiscriminator(cfg.tokenizer.gan) if cfg.tokenizer.weights.gan > 0 else None
    x = images(2)
    out = m({"images": x, "sample_ids": torch.tensor([0, 1])}, semantic=cfg.tokenizer.weights.dist > 0)
    loss, _ = obj.generator(out, x, disc)
    loss.backward()
    return m, teacher


def test_stage1_every_parameter_gets_a_gradient(megatron_tp1):
    cfg = tiny_cfg("model.vit.use_cls_token=true", "model.vit.layer_scale_init=0.1",
                   "tokenizer.weights.gan=0")
    m, teacher = _step(cfg)
    for n, p in m.named_parameters():
        assert p.requires_grad, n
        assert p.grad is not None and p.grad.abs().sum() > 0, f"{n} got no gradient"
    assert all(p.grad is None for p in teacher.parameters())


def test_stage2_encoder_frozen_decoder_trains(megatron_tp1):
    cfg = tiny_cfg("tokenizer.stage=2", "tokenizer.weights.dist=0")
    m, _ = _step(cfg)
    for n, p in m.named_parameters():
        if n.startswith("decoder."):
            assert p.grad is not None and p.grad.abs().sum() > 0, f"{n} got no gradient"
        else:
            assert not p.requires_grad and p.grad is None, f"encoder parameter {n} got a gradient"
