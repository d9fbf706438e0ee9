"""Run under torchrun: one forward/backward of HydraModel and a few steps of the ZeRO engine on a
fixed global batch, under the layout given by argv; rank 0 saves results for the test to compare.
zero_engine_run is the ZeRO side of the harness both tasks share (tokenizer_equivalence_worker.py
uses it too): the task's own step preparation and the engine's train_step, as the loop runs them.

argv: OUT_FILE TP ZERO_STAGE STEPS [key=value ...]
Every layout sees the same global batch: DP rank r takes its slice, TP peers the same slice.
"""
import sys
import warnings

import torch
import torch.distributed as dist

warnings.filterwarnings("ignore", category=FutureWarning)


def global_batch(cfg, n, part=None):
    """The collated global batch, or (part=(rank, parts)) the batch of one DP rank's slice of the
    same samples (collated on its own: visual_index is flat into that rank's rows)."""
    from hydra_dist.data.collate import HydraCollator
    from hydra_dist.data.synthetic import make_sample
    from hydra_dist.data.tokenizer import ByteTokenizer
    n_vis = ((cfg.model.vit.image_size // cfg.model.vit.patch_size) // cfg.model.head.merge) ** 2
    col = HydraCollator(ByteTokenizer(), cfg.model.vit.image_size, n_vis, cfg.data.max_text_tokens,
                        0.5, seed=3)
    samples = []
    for i in range(n):
        img, cap, _ = make_sample(i, 11, cfg.model.vit.image_size)
        samples.append({"id": i, "image": img, "caption": cap})
    if part is not None:
        r, k = part
        samples = samples[r * n // k:(r + 1) * n // k]
    return col(samples)


def full_grad(p, tp_group):
    g = p.grad.detach().clone()
    if getattr(p, "tensor_model_parallel", False) and dist.get_world_size(tp_group) > 1:
        parts = [torch.empty_like(g) for _ in range(dist.get_world_size(tp_group))]
        dist.all_gather(parts, g.contiguous(), group=tp_group)
        g = torch.cat(parts, dim=p.partition_dim)
    return g


def zero_engine_run(cfg, layout, mine: dict, steps: int) -> list:
    """`steps` steps of the task's ZeRO engine (train/tasks/, parallel/zero_engine.py) on this DP
    rank's slice `mine`, the noise seeded per step and sample as in training -> the loss
    trajectory (global means). Returns the engine's module too (ZeRO-3 share)."""
    from hydra_dist.train.tasks import make_task
    task = make_task(cfg)
    engine = task.build_engine(layout)
    traj = []
    for step in range(steps):
        shaped, spec = task.prepare_step([mine], step, layout)
        r = engine.train_step(shaped, spec)
        assert not r.skipped
        traj.append(r.acc[0].item() / layout.dp)
    return traj, engine.module


def main():
    out_file, tp, zero, steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    from hydra_dist.config import load_config
    from hydra_dist.distributed.init import init_distributed, shutdown
    from hydra_dist.models.hydra import HydraModel
    from megatron.core import parallel_state as ps
    world = dist.get_world_size() if dist.is_initialized() else int(__import__("os").environ["WORLD_SIZE"])
    mb_global = 4
    cfg = load_config(None, ["model.freeze=[gen_vit]", f"parallel.tp={tp}",
                             f"parallel.zero_stage={zero}", "train.optim.warmup_steps=0",
                             *sys.argv[5:]], world_size=world)
    layout = init_distributed(tp, 1, 120, "gloo")
    dp, dp_rank = layout.dp, layout.dp_rank
    cfg.parallel.micro_batch_size = mb_global // dp
    batch = global_batch(cfg, mb_global)
    mine = global_batch(cfg, mb_global, part=(dp_rank, dp))
    torch.manual_seed(cfg.train.seed)
    model = HydraModel(cfg.model)
    model.set_activation_checkpointing(cfg.parallel.activation_checkpointing)
    res = {}
    # 1) one plain forward/backward on the whole global batch (no DP split): TP vs no TP
    out = model(batch, noise_seed=5)
    out["loss"].backward()
    res["loss"], res["ntp"], res["fm"] = out["loss"].item(), out["ntp"].item(), out["fm"].item()
    tp_group = ps.get_tensor_model_parallel_group()
    res["grads"] = {n: full_grad(p, tp_group) for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    # 2) the ZeRO engine's steps as the loop runs them, each DP rank on its slice (the task
    # builds the same initial model again: same seed)
    res["trajectory"], model = zero_engine_run(cfg, layout, mine, steps)
    if zero == 3:  # share of parameters this rank holds
        held = sum(p.ds_tensor.numel() for p in model.parameters() if hasattr(p, "ds_tensor"))
        total = sum(p.ds_numel for p in model.parameters() if hasattr(p, "ds_numel"))
        res["zero3_share"] = held / total
    if dist.get_rank() == 0:
        torch.save(res, out_file)
    shutdown()


if __name__ == "__main__":
    main()
