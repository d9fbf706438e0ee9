"""resolve_impl: config switch, logging once, and errors that name what is missing."""
import logging
import os

import pytest
import torch

from hydra_dist.ops import gsb, gsb_fused


def test_reference_always_resolves():
    assert gsb.resolve_impl("reference", "cpu") == "reference"


def test_auto_picks_fused_exactly_when_built():
    want = "fused" if gsb_fused.missing("cpu") is None else "reference"
    assert gsb.resolve_impl("auto", torch.device("cpu")) == want


def test_unknown_kernel_value_is_an_error():
    with pytest.raises(ValueError, match="model.gsb.kernel"):
        gsb.resolve_impl("fast", "cpu")


def test_fused_without_extension_names_the_module(monkeypatch):
    monkeypatch.setitem(gsb_fused._STATE, "cpu", (None, "hydra_dist._gsb_cpu is not importable (x)"))
    with pytest.raises(RuntimeError, match=r"model.gsb.kernel=fused.*hydra_dist\._gsb_cpu"):
        gsb.resolve_impl("fused", "cpu")
    with pytest.raises(RuntimeError, match="hydra_dist._gsb_cpu"):
        gsb.gsb_cosine_loss(torch.ones(2, 3), torch.ones(2, 3), impl="fused")
    assert gsb.resolve_impl("auto", "cpu") == "reference"


def test_fused_on_unsupported_device_is_an_error():
    with pytest.raises(RuntimeError, match="no fused GSB kernel for device type 'meta'"):
        gsb.resolve_impl("fused", "meta")


def test_choice_is_logged_once(monkeypatch, caplog):
    monkeypatch.setattr(gsb, "_logged", set())
    with caplog.at_level(logging.INFO, logger="hydra_dist.ops.gsb"):
        for _ in range(3):
            gsb.gsb_cosine_loss(torch.ones(2, 3), torch.ones(2, 3), impl="reference")
    lines = [r.getMessage() for r in caplog.records if r.name == "hydra_dist.ops.gsb"]
    assert lines == ["GSB ops on cpu: reference implementation (model.gsb.kernel=reference)"]


def test_cpu_extension_present_when_required():
    """CI sets HYDRA_REQUIRE_EXT=1: then a missing CPU extension fails here instead of every
    fused test silently skipping."""
    if os.environ.get("HYDRA_REQUIRE_EXT") != "1":
        pytest.skip("HYDRA_REQUIRE_EXT is not 1")
    assert gsb_fused.missing("cpu") is None, gsb_fused.missing("cpu")


def test_cuda_extension_built_by_install_where_nvcc_exists():
    """CI's install (setup.py) compiles csrc/cuda with nvcc: the extension file must be there
    even on a machine without a GPU to load it (the sources' own compile check is slow-marked)."""
    import glob
    import shutil
    if os.environ.get("HYDRA_REQUIRE_EXT") != "1":
        pytest.skip("HYDRA_REQUIRE_EXT is not 1")
    if not (shutil.which("nvcc") or os.path.exists("/usr/local/cuda/bin/nvcc")) or not torch.version.cuda:
        pytest.skip("no nvcc or a CPU-only torch: setup.py builds the CPU extension only")
    pkg = os.path.dirname(os.path.dirname(os.path.abspath(gsb_fused.__file__)))  # hydra_dist/
    built = glob.glob(os.path.join(pkg, "_gsb_cuda*.so"))
    assert built, f"{pkg}: no _gsb_cuda*.so although nvcc exists (HYDRA_SKIP_CUDA_EXT set?)"


def test_cuda_extension_present_when_required():
    """benchmarks/gpu_check.sh sets HYDRA_REQUIRE_CUDA_EXT=1 on GPU machines."""
    if os.environ.get("HYDRA_REQUIRE_CUDA_EXT") != "1":
        pytest.skip("HYDRA_REQUIRE_CUDA_EXT is not 1")
    assert gsb_fused.missing("cuda") is None, gsb_fused.missing("cuda")
