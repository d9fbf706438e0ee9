"""Training-step throughput of a 1.5B-shape slice on one GPU: tokens/s and MFU.

  python -m hydra_dist.perf.slice_bench [--llm-layers 4] [--vit-layers 2] [--mb 8] [--steps 6]
  python -m hydra_dist.perf.slice_bench --dry-run     (CPU, tiny shape: checks the script runs)

The slice: Qwen2.5-1.5B layer shapes (hidden 1536, ffn 8960, 12/2 heads, full vocabulary),
`--llm-layers` of them, InternViT-300M-shape vision blocks (`--vit-layers` Gen + Sem), the flow
head; bf16; flash-attn varlen when installed. Runs our DeepSpeed engine (ZeRO-1, one process)
and a plain PyTorch loop (bf16 parameters, torch AdamW) on the same batches; FLOPs from
hydra_dist.perf.flops, peak from the H100/H200 table (hydra_dist.perf.mfu).
"""
from __future__ import annotations

import argparse
import json
import logging
import time
import warnings


def make_batch(cfg, n: int, seed: int = 0):
    from hydra_dist.data.collate import HydraCollator
    from hydra_dist.data.synthetic import make_sample
    from hydra_dist.data.tokenizer import ByteTokenizer
    v = cfg.model.vit
    n_vis = ((v.image_size // v.patch_size) // cfg.model.head.merge) ** 2
    col = HydraCollator(ByteTokenizer(), v.image_size, n_vis, cfg.data.max_text_tokens, 0.5,
                        seed=3, pack_tokens=cfg.data.pack_tokens)
    samples = []
    for i in range(n):
        img, cap, _ = make_sample(seed * 1000 + i, 11, v.image_size)
        samples.append({"id": seed * 1000 + i, "image": img, "caption": cap})
    return col(samples)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--llm-layers", type=int, default=4)
    ap.add_argument("--vit-layers", type=int, default=2)
    ap.add_argument("--mb", type=int, default=8)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny shape, fp32")
    ap.add_argument("--json", default="", help="also write the results here")
    a = ap.parse_args(argv)
    warnings.filterwarnings("ignore")
    logging.basicConfig(level=logging.WARNING)
    import torch
    from hydra_dist.config import load_config
    from hydra_dist.distributed.init import init_distributed
    from hydra_dist.models.hydra import HydraModel
    from hydra_dist.parallel.deepspeed_engine import build_deepspeed
    from hydra_dist.perf.flops import flops_report
    from hydra_dist.perf.mfu import gpu_peak_tflops, measure_cpu_tflops
    cuda = torch.cuda.is_available() and not a.dry_run
    if a.dry_run:
        cfg = load_config("configs/model/tiny.yaml", ["parallel.zero_stage=1", f"parallel.micro_batch_size={a.mb}"])
        a.steps = min(a.steps, 2)
    else:
        if not cuda:
            raise SystemExit("no GPU visible (use --dry-run to check the script on CPU)")
        cfg = load_config("configs/model/hydra_1.5b.yaml", [
            f"model.llm.num_layers={a.llm_layers}", f"model.vit.gen_layers={a.vit_layers}",
            f"model.vit.sem_layers={a.vit_layers}", "parallel.precision=bf16", "parallel.zero_stage=1",
            f"parallel.micro_batch_size={a.mb}"])
    init_distributed(1, 1, 300, "nccl" if cuda else "gloo")
    dev = torch.device("cuda" if cuda else "cpu")
    batches = [make_batch(cfg, a.mb, s) for s in range(2)]
    to_dev = [{k: v.to(dev) for k, v in b.items()} for b in batches]
    rep = flops_report(cfg, batches[0])
    flops = rep.total
    tokens = int(batches[0]["segment_ids"].gt(0).sum())
    if cuda:
        name = torch.cuda.get_device_name()
        peak, src = gpu_peak_tflops(name, True) or 989.0, name
    else:
        peak, src = measure_cpu_tflops(), "measured CPU matmul"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    results = {"device": src, "peak_tflops": peak, "flops_per_step": flops, "tokens_per_step": tokens,
               "parts_tflop": {k: p.total / 1e12 for k, p in rep.parts.items()}}

    def timed(step_fn):
        for i in range(2):
            step_fn(i)
        sync()
        t0 = time.perf_counter()
        for i in range(a.steps):
            step_fn(i)
        sync()
        return (time.perf_counter() - t0) / a.steps

    # plain PyTorch: bf16 parameters, torch AdamW
    torch.manual_seed(0)
    plain = HydraModel(cfg.model).to(dev)
    if cuda:
        plain = plain.to(torch.bfloat16)
    opt = torch.optim.AdamW([p for p in plain.parameters() if p.requires_grad], lr=1e-5)

    def plain_step(i):
        plain(to_dev[i % 2], noise_seed=i)["loss"].backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    dt_plain = timed(plain_step)
    del plain, opt
    if cuda:
        torch.cuda.empty_cache()
    torch.manual_seed(0)
    engine = build_deepspeed(HydraModel(cfg.model), cfg)

    def ds_step(i):
        out = engine(to_dev[i % 2], noise_seed=i)
        engine.backward(out["loss"])
        engine.step()
    dt_ds = timed(ds_step)
    for name, dt in (("plain_pytorch", dt_plain), ("deepspeed_zero1", dt_ds)):
        results[name] = {"step_s": dt, "tokens_per_s": tokens / dt,
                         "tflops_per_s": flops / dt / 1e12, "mfu": flops / dt / 1e12 / peak}
    if cuda:
        results["max_memory_gb"] = torch.cuda.max_memory_allocated() / 1e9
    b = batches[0]
    shape = "tiny shape, dry run" if a.dry_run else "1.5B shape"
    print(f"slice: {cfg.model.llm.num_layers} LLM layers ({shape}), {cfg.model.vit.gen_layers}+"
          f"{cfg.model.vit.sem_layers} ViT blocks; micro-batch {a.mb} = {tuple(b['input_ids'].shape)} "
          f"tokens ({tokens} real), {b['images'].shape[0]} images; {flops / 1e12:.2f} TFLOP/step; "
          f"peak {peak:.3g} TFLOPs ({src})")
    print("| loop | step ms | tokens/s | TFLOPs/s | MFU |")
    print("| --- | --- | --- | --- | --- |")
    for name in ("plain_pytorch", "deepspeed_zero1"):
        r = results[name]
        print(f"| {name} | {r['step_s'] * 1e3:.1f} | {r['tokens_per_s']:,.0f} | {r['tflops_per_s']:.2f} | "
              f"{r['mfu'] * 100:.1f}% |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
