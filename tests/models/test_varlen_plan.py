"""The flash-attn varlen planner (run on its CPU emulation, same call interface) equals the
dense-mask reference on random packed layouts, forward and gradients."""
import random

import pytest
import torch

from hydra_dist.ops.attention import attention, build_mask
from hydra_dist.ops.varlen import flash_attn_varlen_emulated, plan_varlen, varlen_attention


def random_layout(rng, B, S):
    seg, img = torch.zeros(B, S, dtype=torch.long), torch.zeros(B, S, dtype=torch.long)
    for b in range(B):
        pos, sid, iid = 0, 0, 0
        while pos < S - 2 and rng.random() < 0.9:
            n = rng.randint(2, min(14, S - pos))
            sid += 1
            seg[b, pos:pos + n] = sid
            j = pos
            while j < pos + n:  # text runs and image blocks inside the sample
                run = rng.randint(1, 4)
                if rng.random() < 0.4:
                    iid += 1
                    img[b, j:min(j + run, pos + n)] = iid
                j += run
            pos += n
    return seg, img


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("heads,kv", [(4, 4), (4, 2)])
def test_planner_equals_dense_reference(seed, heads, kv):
    rng = random.Random(seed)
    torch.manual_seed(seed)
    B, S, d = 3, 29, 8
    seg, img = random_layout(rng, B, S)
    q = torch.randn(B, heads, S, d, requires_grad=True)
    k = torch.randn(B, kv, S, d, requires_grad=True)
    v = torch.randn(B, kv, S, d, requires_grad=True)
    real = (seg > 0)[:, None, :, None].float()  # padding outputs are unused by design
    ref = attention(q, k, v, build_mask(seg, img)) * real
    got = varlen_attention(q, k, v, plan_varlen(seg, img), flash_attn_varlen_emulated) * real
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    w = torch.randn_like(ref)
    g_ref = torch.autograd.grad((ref * w).sum(), (q, k, v))
    g_got = torch.autograd.grad((got * w).sum(), (q, k, v))
    for a, b in zip(g_got, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_plan_shape():
    seg = torch.tensor([[1, 1, 1, 1, 1, 0]])
    img = torch.tensor([[0, 1, 1, 0, 0, 0]])
    plan = plan_varlen(seg, img)
    by = {c.causal: c for c in plan.calls}
    assert by[True].cu_seqlens_q.tolist() == [0, 1, 3]      # text [0,1) and [3,5)
    assert by[True].cu_seqlens_k.tolist() == [0, 1, 6]      # keys [0,1) and [0,5)
    assert by[False].cu_seqlens_q.tolist() == [0, 2]        # the image block [1,3)
    assert by[False].cu_seqlens_k.tolist() == [0, 3]        # sees [0,3)


# --- on a GPU (benchmarks/gpu_check.sh): the paths training takes there, against the fp32 dense
# reference on the CPU. Skipped without CUDA; the CPU twin of the planner is tested above.
on_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU (gpu_check.sh runs it)")


@on_gpu
@pytest.mark.parametrize("path", ["sdpa_dense", "flash_varlen"])
def test_gpu_attention_paths_equal_fp32_reference(path):
    if path == "flash_varlen":
        pytest.importorskip("flash_attn", reason="flash-attn not installed: training uses SDPA")
    rng = random.Random(7)
    torch.manual_seed(7)
    B, S, heads, kv, d = 2, 384, 12, 2, 128          # Qwen2.5-1.5B's heads and head size
    seg, img = random_layout(rng, B, S)
    q, k, v = (torch.randn(B, h, S, d) for h in (heads, kv, kv))
    real = (seg > 0)[:, None, :, None].float()
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    ref = attention(*leaves, build_mask(seg, img)) * real
    w = torch.randn_like(ref)
    g_ref = torch.autograd.grad((ref * w).sum(), leaves)
    dev = [t.cuda().bfloat16().requires_grad_() for t in (q, k, v)]
    mask = plan_varlen(seg.cuda(), img.cuda()) if path == "flash_varlen" else build_mask(seg.cuda(), img.cuda())
    got = attention(*dev, mask) * real.cuda()
    g_got = torch.autograd.grad((got.float() * w.cuda()).sum(), dev)
    # bf16 inputs: ~3 significant digits; errors grow with the sum over keys (S = 384)
    torch.testing.assert_close(got.float().cpu(), ref, rtol=2e-2, atol=2e-2)
    for a, b in zip(g_got, g_ref):
        torch.testing.assert_close(a.float().cpu(), b, rtol=5e-2, atol=5e-2)
