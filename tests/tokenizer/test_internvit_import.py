"""InternViT (transformers InternVLVisionModel) -> our ViT: same features within 1e-5 in fp32."""
import pytest
import torch

from tiny import tiny_cfg

transformers = pytest.importorskip("transformers")


def hf_tiny(tmp_path, **kw):
    from transformers import InternVLVisionConfig, InternVLVisionModel
    cfg = InternVLVisionConfig(hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
                               intermediate_size=64, image_size=[16, 16], patch_size=[4, 4],
                               layer_scale_init_value=0.1, **kw)
    torch.manual_seed(0)
    model = InternVLVisionModel(cfg).eval()
    # non-trivial values where HF's init leaves constants (zeros, ones, the layer-scale value)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "cls_token" in n or "position" in n or "lambda" in n or "norm" in n or "bias" in n:
                p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(tmp_path / "hf")
    return model


def hf_block_outputs(hf, x):
    """Every block's output from HF's own forward (hooks: output_hidden_states=True raises a
    TypeError in transformers 4.57's InternVLVisionModel)."""
    outs = []
    hooks = [layer.register_forward_hook(lambda m, i, o: outs.append(o.detach()))
             for layer in hf.encoder.layer]
    with torch.no_grad():
        last = hf(pixel_values=x).last_hidden_state
    for h in hooks:
        h.remove()
    torch.testing.assert_close(outs[-1], last)  # use_mean_pooling: no final norm
    return outs


VIT_OPTS = ["model.vit.use_cls_token=true", "model.vit.layer_scale_init=0.1",
            "model.vit.qkv_bias=false"]


@pytest.mark.parametrize("variant", ["plain", "qknorm_rms_bias"])
def test_internvit_import_matches_transformers(tmp_path, megatron_tp1, variant):
    from hydra_dist.export.internvit import import_into_student, import_into_teacher
    from hydra_dist.models.tokenizer import HydraTok, TeacherViT
    kw, opts = {}, list(VIT_OPTS)
    if variant != "plain":
        kw = dict(use_qk_norm=True, norm_type="rms_norm", attention_bias=True)
        opts = ["model.vit.use_cls_token=true", "model.vit.layer_scale_init=0.1",
                "model.vit.qk_norm=true", "model.vit.norm_type=rms_norm"]
    hf = hf_tiny(tmp_path, **kw)
    cfg = tiny_cfg(*opts)
    x = torch.rand(3, 3, 16, 16) * 2 - 1
    ref = hf_block_outputs(hf, x)

    teacher = TeacherViT(cfg.model.vit, 0.02)
    import_into_teacher(teacher, tmp_path / "hf")
    got = teacher(x)
    assert len(got) == len(ref) == 4
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)

    student = HydraTok(cfg)
    import_into_student(student, tmp_path / "hf")
    with torch.no_grad():
        _, gen_hidden, *_ = student.encode(x)
    for a, b in zip(gen_hidden, ref[:2]):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    # Sem-ViT blocks are the checkpoint's blocks 2, 3: fed block 1's output they give HF's
    with torch.no_grad():
        out, sem_hidden = student.sem_vit(ref[1], return_all=True)
    for a, b in zip(sem_hidden, ref[2:]):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    # Sem-ViT's CLS starts as the checkpoint's CLS + its position embedding
    emb = hf.embeddings
    torch.testing.assert_close(student.sem_cls.token.detach(),
                               emb.cls_token + emb.position_embeddings[:, :1])


def test_import_refuses_mismatched_options(tmp_path, megatron_tp1):
    from hydra_dist.export.internvit import import_into_teacher
    from hydra_dist.models.tokenizer import TeacherViT
    hf_tiny(tmp_path)
    cfg = tiny_cfg("model.vit.use_cls_token=true")  # no layer scale, q/k/v bias on
    with pytest.raises(ValueError, match="model.vit.layer_scale_init"):
        import_into_teacher(TeacherViT(cfg.model.vit, 0.02), tmp_path / "hf")


def test_imagenet_pixel_norm_feeds_internvit_what_internvl_feeds_it(tmp_path, megatron_tp1):
    """With model.vit.pixel_norm=imagenet (what auto resolves to when InternViT is loaded), our
    teacher and student on [-1, 1] pixels equal HF's InternViT on InternVL's preprocessing
    (pixels in [0, 1], ImageNet mean/std); on unit pixels they would not."""
    from hydra_dist.export.internvit import import_into_student, import_into_teacher
    from hydra_dist.models.tokenizer import HydraTok, TeacherViT
    hf = hf_tiny(tmp_path)
    cfg = tiny_cfg(*VIT_OPTS, "model.vit.pixel_norm=imagenet")
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    ref = hf_block_outputs(hf, ((x + 1) / 2 - mean) / std)
    teacher = TeacherViT(cfg.model.vit, 0.02)
    import_into_teacher(teacher, tmp_path / "hf")
    for a, b in zip(teacher(x), ref):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    student = HydraTok(cfg)
    import_into_student(student, tmp_path / "hf")
    with torch.no_grad():
        _, gen_hidden, *_ = student.encode(x)
    for a, b in zip(gen_hidden, ref[:2]):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    unit = hf_block_outputs(hf, x)
    assert (unit[-1] - ref[-1]).norm() / ref[-1].norm() > 0.05
