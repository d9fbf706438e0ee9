"""Fused GSB kernels (CPU) against the pure-PyTorch reference: odd sizes, fresh random inputs,
fp32 tight, bf16 within bf16 bounds, fp64 gradcheck."""
import pytest
import torch

from hydra_dist.ops import gsb, gsb_fused

SHAPES = [(1, 1), (3, 7), (5, 37), (2, 3, 64), (4, 9, 129)]  # (..., C)


def _reparam_both(proj, backward_weights, **kw):
    """Outputs and d(sum w*out)/dproj for fused and reference, grads through all four outputs."""
    res = []
    for impl in ("fused", "reference"):
        p = proj.detach().clone().requires_grad_()
        outs = gsb.gsb_reparam_kl(p, impl=impl, **kw)
        loss = sum((o.float() * w).sum() for o, w in zip(outs, backward_weights))
        res.append((outs, torch.autograd.grad(loss, p)[0]))
    return res


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("sample", [True, False])
def test_reparam_kl_fp32_matches_reference(cpu_ext, shape, sample):
    *lead, c = shape
    proj = torch.randn(*lead, 2 * c) * 3  # wide enough that the clamp below is hit
    ws = [torch.randn(*lead, c) for _ in range(3)] + [torch.randn(*lead)]
    kw = dict(seed=17, offset=3, logvar_min=-4.0, logvar_max=3.0, sample=sample)
    (of, gf), (or_, gr) = _reparam_both(proj, ws, **kw)
    for a, b in zip(of, or_):
        assert a.shape == b.shape and a.dtype == b.dtype
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gf, gr, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape", [(5, 37), (3, 11, 64)])
def test_reparam_kl_bf16_matches_reference(cpu_ext, shape):
    *lead, c = shape
    proj = (torch.randn(*lead, 2 * c) * 2).bfloat16()
    ws = [torch.randn(*lead, c) for _ in range(3)] + [torch.randn(*lead)]
    (of, gf), _ = _reparam_both(proj, ws, seed=1, offset=2)
    (o32, g32), _ = _reparam_both(proj.float(), ws, seed=1, offset=2)  # fp32 math, same inputs
    for a, b in zip(of, o32):
        assert a.dtype == torch.bfloat16
        torch.testing.assert_close(a.float(), b, rtol=3e-2, atol=1.6e-2 * max(1.0, b.abs().max().item()))
    # bf16 gradients round the upstream products too: tolerance scales with the gradient size
    torch.testing.assert_close(gf.float(), g32, rtol=3e-2, atol=2e-2 * max(1.0, g32.abs().max().item()))


def test_reparam_kl_grads_with_unused_outputs(cpu_ext):
    proj = torch.randn(6, 2 * 5)
    for pick in ([0], [2], [3], [1, 3]):  # only some outputs reach the loss
        grads = []
        for impl in ("fused", "reference"):
            p = proj.clone().requires_grad_()
            outs = gsb.gsb_reparam_kl(p, seed=0, offset=1, impl=impl)
            grads.append(torch.autograd.grad(sum(outs[i].sum() for i in pick), p)[0])
        torch.testing.assert_close(*grads, rtol=1e-5, atol=1e-5)


def test_reparam_kl_gradcheck_fp64(cpu_ext):
    proj = (torch.randn(3, 2 * 5, dtype=torch.float64) * 2).requires_grad_()

    def f(p):
        return gsb_fused.reparam_kl(p, seed=4, offset=8, logvar_min=-3.0, logvar_max=2.5, sample=True)

    # Keep clamp boundaries away from finite-difference steps.
    with torch.no_grad():
        v = proj[:, 5:]
        v[(v + 3.0).abs() < 1e-3] += 0.1
        v[(v - 2.5).abs() < 1e-3] += 0.1
    assert torch.autograd.gradcheck(f, (proj,), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("shape", [(1, 1), (3, 7), (5, 257), (2, 3, 1024), (33, 101)])
def test_cosine_fp32_matches_reference(cpu_ext, shape):
    a, b, w = torch.randn(shape), torch.randn(shape), torch.randn(shape[:-1])
    res = []
    for impl in ("fused", "reference"):
        x, y = a.clone().requires_grad_(), b.clone().requires_grad_()
        loss = gsb.gsb_cosine_loss(x, y, impl=impl)
        res.append((loss, *torch.autograd.grad((loss * w).sum(), (x, y))))
    for f, r in zip(*res):
        torch.testing.assert_close(f, r, rtol=1e-5, atol=1e-6)


def test_cosine_bf16_matches_reference(cpu_ext):
    a, b = torch.randn(9, 3, 1024).bfloat16(), torch.randn(9, 3, 1024).bfloat16()
    b = (b + a) / 2  # realistic: correlated rows, loss well inside (0, 2)
    res = []
    for x0, y0, impl in ((a, b, "fused"), (a.float(), b.float(), "reference")):
        x, y = x0.clone().requires_grad_(), y0.clone().requires_grad_()
        loss = gsb.gsb_cosine_loss(x, y, impl=impl)
        res.append((loss, *torch.autograd.grad(loss.sum(), (x, y))))
    assert res[0][0].dtype == torch.bfloat16
    for f, r in zip(*res):
        torch.testing.assert_close(f.float(), r, rtol=1.6e-2, atol=1e-3)


def test_cosine_gradcheck_fp64_and_zero_row(cpu_ext):
    a = torch.randn(4, 13, dtype=torch.float64, requires_grad=True)
    b = torch.randn(4, 13, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, y: gsb_fused.cosine_loss(x, y, 1e-8), (a, b))
    z = torch.zeros(2, 13, dtype=torch.float64)  # |a| = 0: loss 1, finite grads, as reference
    z[1] = 1.0
    f = gsb.gsb_cosine_loss(z, z.flip(0), impl="fused")
    r = gsb.gsb_cosine_loss(z, z.flip(0), impl="reference")
    torch.testing.assert_close(f, r)
