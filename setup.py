"""hydra_dist install. Builds the GSB kernels in csrc/: the CPU extension always, the CUDA one
when nvcc and a CUDA build of torch are present.

Environment switches:
  HYDRA_SKIP_EXT=1        build no extension (the package falls back to the reference ops,
                          and says so in the log; `model.gsb.kernel=fused` then errors)
  HYDRA_SKIP_CUDA_EXT=1   build the CPU extension only
  TORCH_CUDA_ARCH_LIST    CUDA archs (default "9.0", H100/H200)
Install with --no-build-isolation so the build sees the pinned torch instead of fetching one.
"""
import glob
import os
import shutil

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))


def _extensions():
    if os.environ.get("HYDRA_SKIP_EXT") == "1":
        return [], {}
    try:
        import torch
        from torch.utils import cpp_extension
    except ImportError:  # metadata-only builds (e.g. pip's dependency resolution)
        return [], {}
    exts = []
    cpu_src = sorted(glob.glob(os.path.join("csrc", "cpu", "*.cpp")))
    if cpu_src:
        exts.append(cpp_extension.CppExtension(
            "hydra_dist._gsb_cpu", cpu_src,
            # -ffp-contract=off: the counter-based noise (csrc/common/gsb_noise.h) must round
            # exactly like the torch reference, so no FMA contraction may fuse its steps.
            # -fno-math-errno -fno-trapping-math change no result; they let GCC vectorise the
            # noise and row loops (sqrt without errno, if-conversion of float compares).
            extra_compile_args=["-O3", "-fopenmp", "-ffp-contract=off", "-fno-math-errno",
                                "-fno-trapping-math"],
            extra_link_args=["-fopenmp"]))
    cuda_src = sorted(glob.glob(os.path.join("csrc", "cuda", "*.cu")) +
                      glob.glob(os.path.join("csrc", "cuda", "*.cpp")))
    nvcc = shutil.which("nvcc") or (os.path.exists("/usr/local/cuda/bin/nvcc") and "/usr/local/cuda/bin/nvcc")
    if cuda_src and nvcc and torch.version.cuda and os.environ.get("HYDRA_SKIP_CUDA_EXT") != "1":
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "9.0")
        if not os.environ.get("CUDA_HOME") and os.path.isdir("/usr/local/cuda"):
            os.environ["CUDA_HOME"] = "/usr/local/cuda"  # torch otherwise guesses /usr/local
        cpp_extension.CUDA_HOME = os.environ.get("CUDA_HOME", cpp_extension.CUDA_HOME)
        # The toolkit on some build boxes lacks cuBLAS/cuRAND headers; torch's own nvidia
        # wheels carry them.
        inc = glob.glob(os.path.join(os.path.dirname(torch.__file__), "..", "nvidia", "cu*", "include"))
        exts.append(cpp_extension.CUDAExtension(
            "hydra_dist._gsb_cuda", cuda_src, include_dirs=[os.path.abspath(i) for i in inc],
            # No --use_fast_math: the kernels are memory-bound, so it buys nothing and would
            # loosen agreement with the reference (approximate div/exp). The noise uses the
            # __f*_rn intrinsics, which stay exact either way.
            extra_compile_args={"cxx": ["-O3", "-ffp-contract=off"], "nvcc": ["-O3", "-lineinfo"]}))
    if not exts:
        return [], {}
    return exts, {"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = _extensions()

setup(
    name="hydra_dist",
    version="0.1.0",
    description="Distributed pretraining for HYDRA, a unified multimodal model",
    packages=find_packages(include=["hydra_dist", "hydra_dist.*"]),
    python_requires=">=3.10",
    install_requires=[
        "torch>=2.4",
        "deepspeed>=0.16",
        "megatron-core>=0.12",
        "mosaicml-streaming>=0.11",
        "transformers>=4.45,<5",
        "safetensors",
        "pyyaml",
        "pillow",
        "mlflow>=2.16",
        "tqdm",
        "xxhash",   # checkpoint manifest checksums (checkpoint/manager.py)
        "psutil",   # hydra-pretrain --nproc-per-node relays signals to the ranks (cli/pretrain.py)
        "numpy",
    ],
    extras_require={
        "dev": ["pytest", "pytest-timeout"],
        # Needs CUDA to build; install on GPU nodes only.
        "gpu": ["flash-attn>=2.6"],
    },
    entry_points={"console_scripts": [
        "hydra-pretrain=hydra_dist.cli.pretrain:main",
        "hydra-generate=hydra_dist.cli.generate:main",
        "hydra-eval-shapes=hydra_dist.cli.eval_shapes:main",
        "hydra-import-hf=hydra_dist.cli.import_hf:main",
        "hydra-export-hf=hydra_dist.cli.export_hf:main",
        "hydra-eval-recon=hydra_dist.cli.eval_recon:main",
        "hydra-prepare-data=hydra_dist.cli.prepare_data:main",
        "hydra-plan=hydra_dist.cli.plan:main",
    ]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
