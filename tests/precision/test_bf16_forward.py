"""bf16 compute, fp32 losses: both models run a bf16 forward/backward, every loss term comes out
in fp32, and the bf16 losses stay close to the fp32 ones from the same weights."""
import pytest
import torch

from hydra_dist.config import load_config


def unified_batch(cfg, n=4):
    from hydra_dist.data.collate import HydraCollator
    from hydra_dist.data.synthetic import make_sample
    from hydra_dist.data.tokenizer import ByteTokenizer
    n_vis = ((cfg.model.vit.image_size // cfg.model.vit.patch_size) // cfg.model.head.merge) ** 2
    col = HydraCollator(ByteTokenizer(), cfg.model.vit.image_size, n_vis, cfg.data.max_text_tokens,
                        0.5, seed=3)
    samples = []
    for i in range(n):
        img, cap, _ = make_sample(i, 11, cfg.model.vit.image_size)
        samples.append({"id": i, "image": img, "caption": cap})
    return col(samples)


@pytest.mark.parametrize("tied", [False, True])
def test_unified_bf16_forward_backward(single_process_mp, tied):
    from hydra_dist.models.hydra import HydraModel
    cfg = load_config(None, [f"model.llm.tie_word_embeddings={str(tied).lower()}",
                             "model.head.latent_skip=true"])
    batch = unified_batch(cfg)
    torch.manual_seed(0)
    ref = HydraModel(cfg.model)
    torch.manual_seed(0)
    low = HydraModel(cfg.model).to(torch.bfloat16)  # the same weights, rounded
    out32 = ref(batch, noise_seed=4)
    out16 = low(batch, noise_seed=4)
    for k in ("loss", "ntp", "fm"):
        assert out16[k].dtype == torch.float32, k       # losses reduced in fp32
        assert torch.isfinite(out16[k]), k
        assert out16[k].item() == pytest.approx(out32[k].item(), rel=3e-2), k
    out16["loss"].backward()
    grads = [p.grad for p in low.parameters() if p.requires_grad]
    assert all(g is not None and g.dtype == torch.bfloat16 and torch.isfinite(g).all() for g in grads)


def test_tokenizer_bf16_forward_backward(megatron_tp1):
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tokenizer"))
    from tiny import images, tiny_cfg
    from hydra_dist.models.tokenizer import HydraTok
    cfg = tiny_cfg()
    torch.manual_seed(0)
    ref = HydraTok(cfg)
    torch.manual_seed(0)
    low = HydraTok(cfg).to(torch.bfloat16)
    batch = {"images": images(3), "sample_ids": torch.tensor([5, 9, 2])}
    out32, out16 = ref(batch, noise_seed=7), low(batch, noise_seed=7)
    for k in ("fm", "reg", "kl", "cos"):
        assert out16[k].dtype == torch.float32, k
        assert out16[k].item() == pytest.approx(out32[k].item(), rel=5e-2, abs=1e-3), k
    assert out16["eps"].dtype == torch.float32        # the flow target eps - x is formed in fp32
    (out16["fm"] + out16["reg"]).backward()
    assert all(torch.isfinite(p.grad).all() for p in low.parameters() if p.grad is not None)
