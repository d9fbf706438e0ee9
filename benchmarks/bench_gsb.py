"""Fused vs reference GSB ops, forward and forward+backward, at the paper's shapes
(D=1024, C=64, 1024 tokens per image x batch). Prints a ratio table (reference time / fused
time, measured in this one run). On a GPU it also prints achieved bandwidth of the fused
kernels against the card's peak, measured here with a large device-to-device copy.

  python benchmarks/bench_gsb.py --device cpu --batch 4
  python benchmarks/bench_gsb.py --device cuda --batch 64 --dtype bfloat16
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from hydra_dist.ops import gsb


def _sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def timeit(fn, dev, iters: int, warmup: int = 3) -> float:
    """Median seconds per call."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        _sync(dev)
        t0 = time.perf_counter()
        fn()
        _sync(dev)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def peak_copy_bandwidth(dev, nbytes: int = 1 << 30) -> float:
    """Bytes/s of a big device copy (read + write counted), the practical DRAM peak."""
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=dev).uniform_()
    dst = torch.empty_like(src)
    t = timeit(lambda: dst.copy_(src), dev, iters=20)
    return 2 * nbytes / t


def cases(n: int, c: int, d: int, dtype, dev):
    """(name, make_inputs, run(impl, inputs, backward), fwd_bytes, bwd_bytes) per op.
    Bytes are the minimum traffic of the fused kernels (each tensor read/written once)."""
    es = torch.tensor([], dtype=dtype).element_size()
    acc = 8 if dtype == torch.float64 else 4

    def reparam_inputs():
        p = torch.randn(n, 2 * c, dtype=dtype, device=dev).requires_grad_()
        grads = [torch.randn(n, c, dtype=dtype, device=dev) for _ in range(3)] + [
            torch.randn(n, dtype=dtype, device=dev)]
        return p, grads

    def reparam_run(impl, inp, backward):
        p, grads = inp
        outs = gsb.gsb_reparam_kl(p, seed=1, offset=2, sample=True, impl=impl)
        if backward:
            torch.autograd.backward(outs, grads)

    def cos_inputs():
        a = torch.randn(n, d, dtype=dtype, device=dev).requires_grad_()
        b = torch.randn(n, d, dtype=dtype, device=dev).requires_grad_()
        return a, b, torch.randn(n, dtype=dtype, device=dev)

    def cos_run(impl, inp, backward):
        a, b, g = inp
        loss = gsb.gsb_cosine_loss(a, b, impl=impl)
        if backward:
            loss.backward(g)

    return [
        (f"reparam+KL  [{n}x{2 * c}]", reparam_inputs, reparam_run,
         es * (2 * n * c + 3 * n * c + n), es * (2 * n * c + 3 * n * c + n + 2 * n * c)),
        (f"cosine loss [{n}x{d}]", cos_inputs, cos_run,
         es * (2 * n * d + n) + acc * 3 * n, es * (2 * n * d + n + 2 * n * d) + acc * 3 * n),
    ]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch", type=int, default=None, help="images; default 4 on CPU, 64 on GPU")
    ap.add_argument("--tokens", type=int, default=1024)
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--channels", type=int, default=64)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--iters", type=int, default=None)
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads on CPU")
    args = ap.parse_args(argv)
    dev = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    batch = args.batch or (64 if dev.type == "cuda" else 4)
    iters = args.iters or (50 if dev.type == "cuda" else 10)
    dtype = getattr(torch, args.dtype)
    n = args.tokens * batch
    gsb.resolve_impl("fused", dev)  # fail early, naming the missing extension

    print(f"device={dev} ({torch.cuda.get_device_name(dev) if dev.type == 'cuda' else f'{torch.get_num_threads()} threads'})"
          f" dtype={args.dtype} N={args.tokens}x{batch}={n} D={args.dim} C={args.channels} iters={iters}")
    peak = peak_copy_bandwidth(dev) if dev.type == "cuda" else None
    if peak:
        print(f"measured peak (1 GiB device copy): {peak / 1e9:.0f} GB/s")
    hdr = f"{'op':<28}{'pass':<9}{'reference ms':>13}{'fused ms':>10}{'ratio':>8}"
    if peak:
        hdr += f"{'fused GB/s':>12}{'% peak':>8}"
    print(hdr)
    print("-" * len(hdr))
    for name, make, run, fwd_bytes, bwd_bytes in cases(n, args.channels, args.dim, dtype, dev):
        inp = make()
        t = {}
        for impl in ("reference", "fused"):
            with torch.no_grad():
                t[impl, "fwd"] = timeit(lambda: run(impl, inp, False), dev, iters)
            t[impl, "fwd+bwd"] = timeit(lambda: run(impl, inp, True), dev, iters)
        for pas, nbytes in (("fwd", fwd_bytes), ("fwd+bwd", fwd_bytes + bwd_bytes)):
            ref, fus = t["reference", pas], t["fused", pas]
            row = f"{name:<28}{pas:<9}{ref * 1e3:>13.3f}{fus * 1e3:>10.3f}{ref / fus:>7.2f}x"
            if peak:
                bw = nbytes / fus
                row += f"{bw / 1e9:>12.0f}{100 * bw / peak:>7.0f}%"
            print(row)


if __name__ == "__main__":
    main()
