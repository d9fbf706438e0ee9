"""Run under torchrun: HYDRA-TOK stage 1 (flow matching + GSB regulariser + distillation), one
step's loss parts and gradients, then a loss trajectory, of the megatron engine with
parallel.pp=PP ("got") and of one process ("ref": plain forward/backward over the same
micro-batches, torch AdamW, clip_grad_norm_). Rank 0 computes the reference itself after the
engine run (tp = 1: it needs no collective), which saves a second torchrun start; it saves both.

argv: OUT_FILE PP STEPS. Both see the same MICRO micro-batches of MBS images; with
DP = world / PP > 1, DP rank r takes its slice of each micro-batch.
"""
import sys
import warnings

import torch
import torch.distributed as dist

from pipeline_common import engine_run  # same directory: on sys.path under torchrun

warnings.filterwarnings("ignore", category=FutureWarning)
MICRO, MBS = 4, 2
KEYS = ("loss", "fm", "reg", "dist", "kl", "cos")


def micro_batches(cfg):
    from hydra_dist.data.collate import image_to_tensor
    from hydra_dist.data.synthetic import make_sample
    size = cfg.model.vit.image_size
    imgs = torch.stack([image_to_tensor(make_sample(i, 21, size)[0], size) for i in range(MICRO * MBS)])
    return [{"images": imgs[m * MBS:(m + 1) * MBS], "sample_ids": torch.arange(m * MBS, (m + 1) * MBS)}
            for m in range(MICRO)]


def reference(cfg, batches, steps):
    from hydra_dist.models.tokenizer.losses import TokenizerObjective
    from hydra_dist.parallel.deepspeed_engine import lr_lambda, param_groups
    from hydra_dist.train.tasks.tokenizer import build_parts
    model, teacher, lpips, _ = build_parts(cfg)
    objective = TokenizerObjective(cfg, teacher, lpips)
    o = cfg.train.optim
    opt = torch.optim.AdamW(param_groups(model, cfg), lr=o.lr, betas=tuple(o.betas), eps=o.eps)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg))
    res, traj = {"names": {(0, 0): sorted(n for n, _ in model.named_parameters())}}, []
    for step in range(steps):
        opt.zero_grad(set_to_none=True)
        acc = dict.fromkeys(KEYS, 0.0)
        for b in batches:
            loss, parts = objective.generator(model(b, noise_seed=100 + step), b["images"])
            (loss / len(batches)).backward()
            for k, v in {"loss": loss.item(), **parts}.items():
                acc[k] += v / len(batches)
        if step == 0:
            res["grads"] = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
            res.update(acc)
        norm = torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.grad is not None],
                                              o.grad_clip)
        res.setdefault("grad_norm", norm.item())
        opt.step()
        sched.step()
        traj.append(acc["loss"])
    res["trajectory"] = traj
    return res


def main():
    out_file, pp, steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    from hydra_dist.config import load_config
    from hydra_dist.distributed.init import init_distributed, shutdown
    world = int(__import__("os").environ["WORLD_SIZE"])
    cfg = load_config("configs/tokenizer/tiny_stage1.yaml",
                      ["parallel.engine=megatron", "parallel.zero_stage=0", f"parallel.pp={pp}",
                       f"parallel.micro_batch_size={MBS * pp // world}", f"parallel.grad_accum={MICRO}",
                       "train.optim.warmup_steps=0"], world_size=world)
    layout = init_distributed(1, pp, 120, "gloo")
    batches = micro_batches(cfg)
    n, r = MBS // layout.dp, layout.dp_rank
    mine = [{k: v[r * n:(r + 1) * n] for k, v in b.items()} for b in batches]
    got = engine_run(cfg, layout, mine, steps, lambda step: {"noise_seed": 100 + step})
    if dist.get_rank() == 0:
        torch.save({"got": got, "ref": reference(cfg, batches, steps)}, out_file)
    shutdown()


if __name__ == "__main__":
    main()
