"""Run under torchrun: one step's loss and gradients, then a short loss trajectory, of either
the single-process HydraModel (MODE=ref: plain forward/backward, torch AdamW, clip_grad_norm_)
or the megatron engine (MODE=engine) under the layout in argv; rank 0 saves the results.

argv: OUT_FILE MODE TP PP VIRTUAL_PP STEPS [key=value ...]
Every run sees the same MICRO micro-batches of MBS samples (DP = 1 in these tests).
"""
import sys
import warnings

import torch
import torch.distributed as dist

from pipeline_common import engine_run  # same directory: torchrun puts it on sys.path

warnings.filterwarnings("ignore", category=FutureWarning)
MICRO, MBS = 4, 2


def micro_batches(cfg):
    from hydra_dist.data.collate import HydraCollator
    from hydra_dist.data.synthetic import make_sample
    from hydra_dist.data.tokenizer import ByteTokenizer
    v = cfg.model.vit
    n_vis = ((v.image_size // v.patch_size) // cfg.model.head.merge) ** 2
    col = HydraCollator(ByteTokenizer(), v.image_size, n_vis, cfg.data.max_text_tokens, 0.5, seed=3)
    out = []
    for m in range(MICRO):
        samples = []
        for i in range(m * MBS, (m + 1) * MBS):
            img, cap, _ = make_sample(i, 11, v.image_size)
            # micro-batch 1 is text-only: the dummy-image path runs through the pipeline too
            samples.append({"id": i, "text": cap} if m == 1 else {"id": i, "image": img, "caption": cap})
        out.append(col(samples))
    return out


def reference(cfg, batches, dens, steps):
    from hydra_dist.models.hydra import HydraModel
    from hydra_dist.parallel.deepspeed_engine import lr_lambda, param_groups
    torch.manual_seed(cfg.train.seed)
    model = HydraModel(cfg.model)
    o = cfg.train.optim
    opt = torch.optim.AdamW(param_groups(model, cfg), lr=o.lr, betas=tuple(o.betas), eps=o.eps)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg))
    res, traj = {"names": {(0, 0): sorted(n for n, _ in model.named_parameters())}}, []
    for step in range(steps):
        opt.zero_grad(set_to_none=True)
        acc = torch.zeros(3, dtype=torch.float64)
        for b in batches:
            out = model(b, noise_seed=100 + step, ntp_den=dens[0], fm_den=dens[1])
            (out["loss"] / len(batches)).backward()
            acc += torch.stack([out["loss"].detach(), out["ntp"], out["fm"]]).double()
        if step == 0:
            res["grads"] = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
            res["loss"], res["ntp"], res["fm"] = (acc / len(batches)).tolist()
        norm = torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.grad is not None],
                                              o.grad_clip)
        res.setdefault("grad_norm", norm.item())
        opt.step()
        sched.step()
        traj.append(acc[0].item() / len(batches))
    res["trajectory"] = traj
    return res


def main():
    out_file, mode = sys.argv[1], sys.argv[2]
    tp, pp, vp, steps = (int(a) for a in sys.argv[3:7])
    from hydra_dist.config import load_config
    from hydra_dist.distributed.init import init_distributed, shutdown
    world = int(__import__("os").environ["WORLD_SIZE"])
    # latent_skip on: x_t travels in the payload too (the export-layout tests cover it off)
    cfg = load_config(None, ["model.freeze=[gen_vit]", "model.llm.num_layers=4", "model.head.latent_skip=true",
                             "parallel.engine=megatron", f"parallel.tp={tp}", f"parallel.pp={pp}",
                             f"parallel.virtual_pp={vp}", "parallel.zero_stage=0",
                             f"parallel.micro_batch_size={MBS}", f"parallel.grad_accum={MICRO}",
                             "train.optim.warmup_steps=0", *sys.argv[7:]], world_size=world)
    layout = init_distributed(tp, pp, 120, "gloo")
    batches = micro_batches(cfg)
    n_tok = sum(float(b["labels"].ge(0).sum()) for b in batches)
    n_gen = max(sum(float((b["is_gen"].float() * b["image_weight"]).sum()) for b in batches), 1.0)
    dens = (n_tok / MICRO, n_gen / MICRO)
    res = reference(cfg, batches, dens, steps) if mode == "ref" else engine_run(
        cfg, layout, batches, steps,
        lambda step: {"noise_seed": 100 + step, "ntp_den": dens[0], "fm_den": dens[1]})
    if dist.get_rank() == 0:
        torch.save(res, out_file)
    shutdown()


if __name__ == "__main__":
    main()
