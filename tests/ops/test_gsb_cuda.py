"""CUDA GSB kernels: a compile-only check of csrc/cuda wherever nvcc exists, and the numerical
checks against the reference where a GPU and the built extension exist."""
import glob
import os
import shutil
import subprocess
import sys
import sysconfig

import pytest
import torch
from torch.utils import cpp_extension

from hydra_dist.ops import gsb, gsb_fused

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CUDA_HOME = os.environ.get("CUDA_HOME") or ("/usr/local/cuda" if os.path.isdir("/usr/local/cuda") else None)
NVCC = shutil.which("nvcc") or (CUDA_HOME and shutil.which("nvcc", path=os.path.join(CUDA_HOME, "bin")))
on_gpu = pytest.mark.skipif(not torch.cuda.is_available() or gsb_fused.missing("cuda") is not None,
                            reason=f"needs a GPU and the CUDA extension ({gsb_fused.missing('cuda')})")


def _includes():
    torch_dir = os.path.dirname(torch.__file__)
    inc = cpp_extension.include_paths("cuda") + [sysconfig.get_paths()["include"]]
    # Where the toolkit lacks cuBLAS/cuRAND headers, torch's nvidia wheels carry them (as setup.py).
    inc += glob.glob(os.path.join(torch_dir, "..", "nvidia", "cu*", "include"))
    if CUDA_HOME:
        inc.append(os.path.join(CUDA_HOME, "include"))
    return [f"-I{os.path.abspath(i)}" for i in inc]


@pytest.mark.slow  # CI's install compiles the same sources (test_gsb_dispatch checks the result)
@pytest.mark.skipif(not NVCC or not torch.version.cuda, reason="needs nvcc and a CUDA build of torch")
def test_cuda_sources_compile(tmp_path):
    defs = ["-DTORCH_EXTENSION_NAME=_gsb_cuda", f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}"]
    arch = os.environ.get("HYDRA_CUDA_ARCH", "sm_90")
    for src in sorted(glob.glob(os.path.join(ROOT, "csrc", "cuda", "*.cu"))):
        cmd = [NVCC, "-c", src, "-o", str(tmp_path / "k.o"), f"-arch={arch}", "-std=c++20", "-O1",
               "-Xcompiler", "-fPIC", *cpp_extension.COMMON_NVCC_FLAGS, *defs, *_includes()]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        assert r.returncode == 0, f"{' '.join(cmd)}\n{r.stderr[-4000:]}"
    cxx = os.environ.get("CXX", "c++")
    for src in sorted(glob.glob(os.path.join(ROOT, "csrc", "cuda", "*.cpp"))):
        cmd = [cxx, "-fsyntax-only", "-std=c++20", src, *defs, *_includes()]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        assert r.returncode == 0, f"{' '.join(cmd)}\n{r.stderr[-4000:]}"


@on_gpu
def test_cuda_noise_equals_reference_exactly():
    ext = gsb_fused._STATE["cuda"][0]
    for seed, offset in [(0, 0), (-7, 2 ** 40 + 3)]:
        ref = gsb.gsb_noise((1_000_003,), seed, offset, "cpu", torch.float32)
        assert torch.equal(ext.noise(1_000_003, seed, offset, 0).cpu(), ref)
        assert torch.equal(gsb.gsb_noise((1_000_003,), seed, offset, "cuda", torch.float32).cpu(), ref)


@on_gpu
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("shape", [(3, 7), (5, 37), (4, 9, 129), (2, 1024, 64)])
def test_cuda_reparam_kl_matches_reference(dtype, tol, shape):
    *lead, c = shape
    proj = (torch.randn(*lead, 2 * c, device="cuda") * 3).to(dtype)
    ws = [torch.randn(*lead, c, device="cuda") for _ in range(3)] + [torch.randn(*lead, device="cuda")]
    res = []
    for impl, p0 in (("fused", proj), ("reference", proj.float())):
        p = p0.clone().requires_grad_()
        outs = gsb.gsb_reparam_kl(p, seed=3, offset=5, logvar_min=-4.0, logvar_max=3.0, impl=impl)
        g = torch.autograd.grad(sum((o.float() * w).sum() for o, w in zip(outs, ws)), p)[0]
        res.append([o.float() for o in outs] + [g.float()])
    for f, r in zip(*res):
        torch.testing.assert_close(f, r, rtol=tol, atol=tol * max(1.0, r.abs().max().item()))


@on_gpu
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 1.6e-2)])
@pytest.mark.parametrize("shape", [(3, 7), (33, 101), (2, 1024, 1024)])
def test_cuda_cosine_matches_reference(dtype, tol, shape):
    a = torch.randn(shape, device="cuda").to(dtype)
    b = ((torch.randn(shape, device="cuda") + a.float()) / 2).to(dtype)
    w = torch.randn(shape[:-1], device="cuda")
    res = []
    for impl, x0, y0 in (("fused", a, b), ("reference", a.float(), b.float())):
        x, y = x0.clone().requires_grad_(), y0.clone().requires_grad_()
        loss = gsb.gsb_cosine_loss(x, y, impl=impl)
        res.append([loss.float(), *[g.float() for g in torch.autograd.grad((loss.float() * w).sum(), (x, y))]])
    for f, r in zip(*res):
        torch.testing.assert_close(f, r, rtol=tol, atol=tol * 1e-1)
