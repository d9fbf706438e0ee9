"""The fused GSB custom ops under torch.library.opcheck and torch.compile (fullgraph)."""
import pytest
import torch

from hydra_dist.ops import gsb, gsb_fused


def test_opcheck_reparam_kl(cpu_ext):
    p = torch.randn(7, 2 * 5, requires_grad=True)
    for sample in (True, False):
        torch.library.opcheck(gsb_fused.reparam_kl_op, (p, 3, 4, -30.0, 20.0, sample))
    g = [torch.randn(7, 5) for _ in range(3)] + [torch.randn(7)]
    torch.library.opcheck(gsb_fused.reparam_kl_backward_op,
                          (p.detach(), g[0], None, g[2], g[3], 3, 4, -30.0, 20.0, True))


def test_opcheck_cosine(cpu_ext):
    a, b = torch.randn(6, 33, requires_grad=True), torch.randn(6, 33, requires_grad=True)
    torch.library.opcheck(gsb_fused.cosine_op, (a, b, 1e-8))
    _, stats = gsb_fused.cosine_op(a.detach(), b.detach(), 1e-8)
    torch.library.opcheck(gsb_fused.cosine_backward_op, (torch.randn(6), a.detach(), b.detach(), stats))


@pytest.mark.parametrize("backend", ["aot_eager", pytest.param("inductor", marks=pytest.mark.slow)])
def test_compile_fullgraph_fwd_bwd(cpu_ext, backend):
    def step(proj, h_mid, w_unproj, offset):
        mu, logvar, z, kl = gsb.gsb_reparam_kl(proj, seed=7, offset=offset, impl="fused")
        h_bn = mu @ w_unproj
        cos = gsb.gsb_cosine_loss(h_mid, h_bn, impl="fused")
        return 1e-4 * kl.mean() + cos.mean() + z.square().mean() + logvar.mean()

    gsb.resolve_impl("fused", "cpu")  # eager first call logs; compiled calls must not
    torch._dynamo.reset()
    compiled = torch.compile(step, backend=backend, fullgraph=True)
    for offset in (1, 2):  # a new offset must not change the traced graph's results' meaning
        proj = torch.randn(2, 9, 2 * 6, requires_grad=True)
        h_mid = torch.randn(2, 9, 16)
        w = torch.randn(6, 16, requires_grad=True)
        out_c = compiled(proj, h_mid, w, offset)
        g_c = torch.autograd.grad(out_c, (proj, w))
        out_e = step(proj, h_mid, w, offset)
        g_e = torch.autograd.grad(out_e, (proj, w))
        torch.testing.assert_close(out_c, out_e)
        for a, b in zip(g_c, g_e):
            torch.testing.assert_close(a, b)
