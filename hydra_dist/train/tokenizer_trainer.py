"""HYDRA-TOK training (task: tokenizer), both stages (docs/design.md).

Stage 1: everything trains; L_FM + L_reg + L_dist (+ LPIPS / GAN by their weights).
Stage 2: the encoder (patch, Gen-ViT, GSB, Sem-ViT) is frozen, no distillation, GAN on.
The tokenizer is one DeepSpeed engine (ZeRO over DP, megatron TP layers inside), or, with
parallel.engine=megatron, pipeline stages (models/tokenizer/pipeline_stage.py: stage 1's FM + reg
+ distillation; the engine steps over the micro-batches itself). The frozen teacher and LPIPS
live outside the DeepSpeed engine. The patch discriminator is small and replicated: a plain
torch AdamW whose grads are averaged over the DP group by hand; its state rides in the
checkpoint as extra_state.pt. Runs end with <run>/tokenizer.pt (full tensors, any TP) and a
held-out reconstruction check (eval.json, recon_grid.png) before and after training.
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import torch
import torch.distributed as dist

from hydra_dist.checkpoint import CheckpointManager
from hydra_dist.config import RunConfig, to_dict
from hydra_dist.distributed.init import comm_tensor, init_distributed, shutdown, to_comm
from hydra_dist.parallel.deepspeed_engine import build_deepspeed

from .preemption import FINISHED_MARKER, PreemptionFlag
from .run_setup import make_tracker, prepare_data, resolve_batch, run_tags, write_resolved

log = logging.getLogger("hydra_dist")


class ImageCollator:
    """Images only: {images [B,3,H,W] in [-1,1], sample_ids [B]} (module level: picklable)."""

    def __init__(self, size: int):
        self.size = size

    def __call__(self, samples):
        from hydra_dist.data.collate import image_to_tensor
        return {"images": torch.stack([image_to_tensor(s["image"], self.size) for s in samples]),
                "sample_ids": torch.tensor([int(s["id"]) for s in samples])}


def held_out_images(cfg: RunConfig) -> torch.Tensor:
    """Synthetic images from another seed than the training set's."""
    from hydra_dist.data.collate import image_to_tensor
    from hydra_dist.data.synthetic import make_sample
    size, seed = cfg.model.vit.image_size, cfg.data.synthetic.seed + 7919
    return torch.stack([image_to_tensor(make_sample(i, seed, size)[0], size)
                        for i in range(cfg.tokenizer.eval_images)])


def build_parts(cfg: RunConfig):
    """(student, teacher or None, LPIPS or None, discriminator or None), initialised."""
    from hydra_dist.export.internvit import import_into_student, import_into_teacher
    from hydra_dist.models.tokenizer import HydraTok, TeacherViT
    from hydra_dist.models.tokenizer.weights import load_tokenizer
    t, w = cfg.tokenizer, cfg.tokenizer.weights
    torch.manual_seed(cfg.train.seed)   # same on every rank: TP shards line up, DP replicas equal
    model = HydraTok(cfg)
    internvit = t.init_from and not t.init_from.endswith(".pt")
    if internvit:
        import_into_student(model, t.init_from)
    elif t.init_from:   # a tokenizer.pt of an earlier stage: the whole tokenizer
        load_tokenizer(model, t.init_from)
    teacher = None
    if w.dist > 0:
        teacher = TeacherViT(cfg.model.vit, cfg.model.init_std)
        src = t.teacher_from or (t.init_from if internvit else "")
        if src:
            import_into_teacher(teacher, src)
        else:
            teacher.load_from_student(model)
        if cfg.parallel.precision == "bf16":  # frozen: no master copy, it runs in bf16
            teacher.to(torch.bfloat16)
    model.set_encoder_trainable(t.stage == 1)
    model.set_activation_checkpointing(cfg.parallel.activation_checkpointing)
    lpips = None
    if w.lpips > 0:
        from hydra_dist.models.tokenizer.lpips import LPIPS
        lpips = LPIPS(t.lpips.net, t.lpips.trunk_weights, t.lpips.lin_weights)
    disc = None
    if w.gan > 0:
        from hydra_dist.models.tokenizer.discriminator import PatchDiscriminator
        disc = PatchDiscriminator(t.gan)
    n_all = sum(p.numel() for p in model.parameters())
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    log.info("HYDRA-TOK stage %d: %.2fM parameters (%.2fM trainable) on this TP rank; teacher %s, "
             "LPIPS %s, GAN %s", t.stage, n_all / 1e6, n_train / 1e6, "on" if teacher else "off",
             t.lpips.net if lpips else "off", t.gan.loss if disc else "off")
    return model, teacher, lpips, disc


def evaluate(model, cfg: RunConfig, images, grid_path=None) -> dict:
    """Held-out reconstruction on every rank (ZeRO-3 gathers are collectives)."""
    from hydra_dist.models.tokenizer.recon_eval import psnr, reconstruct, save_grid, ssim
    was = model.training
    model.eval()
    rec = reconstruct(model, images, cfg.tokenizer.ode_steps, seed=cfg.train.seed)
    model.train(was)
    if grid_path is not None and dist.get_rank() == 0:
        save_grid(images, rec, grid_path, scale=max(1, 128 // images.shape[-1]))
    return {"psnr": psnr(rec, images).mean().item(), "ssim": ssim(rec, images).mean().item()}


def whole(engine, cfg: RunConfig):
    """The whole tokenizer: the DeepSpeed engine's module, or the pipeline stages gathered."""
    if cfg.parallel.engine != "megatron":
        return engine.module
    from hydra_dist.models.tokenizer.pipeline_stage import gather_whole
    return gather_whole(engine, cfg)


def train(cfg: RunConfig) -> dict:
    p = cfg.parallel
    layout = init_distributed(p.tp, p.pp, p.timeout_s, p.backend)
    try:
        return _train(cfg, layout)
    finally:
        shutdown()


def _train(cfg: RunConfig, layout) -> dict:
    from megatron.core import parallel_state as ps

    from hydra_dist.data.loader import StreamingBatches
    from hydra_dist.models.tokenizer import TokenizerObjective
    from hydra_dist.models.tokenizer.weights import save_tokenizer

    from .trainer import _noise_seed, _to_device
    t, w = cfg.tokenizer, cfg.tokenizer.weights
    resolve_batch(cfg, layout)   # parallel.grad_accum from train.global_batch
    run_dir = Path(cfg.output_dir)
    if layout.rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_resolved(cfg, run_dir)
    dist.barrier()
    data_path = prepare_data(cfg, run_dir, layout)
    piped = cfg.parallel.engine == "megatron"
    if piped:  # stages build their own parts (teacher on the first; LPIPS/GAN refused by config)
        from hydra_dist.parallel.megatron_engine import build_megatron
        engine, teacher, lpips, disc = build_megatron(cfg, layout), None, None, None
    else:
        model, teacher, lpips, disc = build_parts(cfg)
        engine = build_deepspeed(model, cfg)
    device = engine.device
    objective = None if piped else TokenizerObjective(cfg, teacher, lpips).to(device)
    d_opt = None
    if disc is not None:
        disc.to(device)
        d_opt = torch.optim.AdamW(disc.parameters(), lr=t.gan.lr, betas=tuple(t.gan.betas),
                                  weight_decay=0.0)
    ckpt = CheckpointManager(run_dir / "checkpoints", cfg.checkpoint.keep_last, layout.rank)
    state = {"step": 0, "consumed_samples": 0, "data": None, "mlflow_run_id": None}
    tag = ckpt.latest() if cfg.checkpoint.resume else None
    if tag:
        state = ckpt.load(engine, tag)
        extra = ckpt.load_extra(tag)
        if disc is not None and extra:
            disc.load_state_dict(extra["disc"])
            d_opt.load_state_dict(extra["disc_opt"])
        log.info("resumed from %s at step %d", run_dir / "checkpoints" / tag, state["step"])
    loader = StreamingBatches(data_path, ImageCollator(cfg.model.vit.image_size),
                              cfg.parallel.micro_batch_size, layout.dp, layout.tp * layout.pp,
                              cfg.data.shuffle, cfg.data.seed, cfg.data.num_workers, state["data"],
                              pin_memory=cfg.data.pin_memory, prefetch_factor=cfg.data.prefetch_factor)
    tracker = make_tracker(cfg, run_dir, layout, state["mlflow_run_id"])
    eval_imgs = held_out_images(cfg).to(device) if t.eval_images else None
    evals = {}
    if tag is None:
        tracker.log_params(to_dict(cfg))
        tracker.set_tags({**run_tags(cfg, layout), "task": "tokenizer"})
        tracker.log_artifact(str(run_dir / "config.yaml"))
        if eval_imgs is not None:
            evals["start"] = evaluate(whole(engine, cfg), cfg, eval_imgs)
            log.info("held-out reconstruction before training: %s", evals["start"])
    keys = ["loss", "fm", "reg", "kl", "cos"] + (["dist"] if w.dist > 0 else []) + \
        (["lpips"] if lpips else []) + (["gan_g", "gan_d"] if disc else [])
    dp_group, ga, step = ps.get_data_parallel_group(), cfg.parallel.grad_accum, state["step"]
    stop_at = cfg.train.stop_at_step or cfg.train.steps
    history, preempt, stopped_by = [], PreemptionFlag(cfg.checkpoint.grace_s), None
    semantic = t.stage == 1 and w.dist > 0
    while step < min(cfg.train.steps, stop_at):
        t0 = time.perf_counter()
        gan_on = disc is not None and step >= t.gan.start_step
        acc = dict.fromkeys(keys, 0.0)
        if piped:  # one call: megatron's schedule runs the ga micro-batches through the stages
            r = engine.train_step([_to_device(next(loader), device) for _ in range(ga)],
                                  _noise_seed(cfg.train.seed, step), 0.0, 0.0)
            if r["skipped"]:
                log.warning("step %d: non-finite loss, update skipped", step + 1)
            # r holds the global means on every rank; the DP all-reduce below sums dp copies
            acc = {k: float("nan") if r["skipped"] else r[k] for k in keys}
        for _ in range(0 if piped else ga):
            batch = _to_device(next(loader), device)
            out = engine(batch, noise_seed=_noise_seed(cfg.train.seed, step), semantic=semantic)
            loss, parts = objective.generator(out, batch["images"], disc if gan_on else None)
            engine.backward(loss)
            engine.step()
            if gan_on:
                d = objective.discriminator(disc, batch["images"], out["x0_pred"])
                (d / ga).backward()
                parts["gan_d"] = float(d.detach())
            for k, v in {"loss": float(loss.detach()), **parts}.items():
                if k in acc:
                    acc[k] += v / ga
        if gan_on:   # replicated discriminator: average its grads over DP, then step
            for prm in disc.parameters():
                g = to_comm(prm.grad, dp_group)
                dist.all_reduce(g, group=dp_group)
                prm.grad = (g / layout.dp).to(prm.grad.device)
            d_opt.step()
            d_opt.zero_grad(set_to_none=True)
        vec = comm_tensor([acc[k] for k in keys], group=dp_group)
        dist.all_reduce(vec, group=dp_group)
        step += 1
        g_samples = cfg.parallel.micro_batch_size * ga * layout.dp
        state["consumed_samples"] += g_samples
        dt = time.perf_counter() - t0
        m = {k: v / layout.dp for k, v in zip(keys, vec.tolist())}
        m.update(grad_norm=float(engine.get_global_grad_norm() or 0.0), step_time_s=dt,
                 samples_per_s=g_samples / dt, consumed_samples=state["consumed_samples"])
        lrs = [g["lr"] for g in engine.optimizer.param_groups] if piped else engine.get_lr()
        for i, lr in enumerate(lrs):
            m[f"lr_group{i}"] = lr
        history.append(m)
        if layout.holds_loss and step % cfg.train.log_every == 0:
            tracker.log_metrics(m, step)
            with (run_dir / "metrics.jsonl").open("a") as f:
                f.write(json.dumps({"step": step, **m}) + "\n")
            log.info("step %d/%d loss %.4f fm %.4f reg %.4f %s %.1f samples/s", step,
                     cfg.train.steps, m["loss"], m["fm"], m["reg"],
                     " ".join(f"{k} {m[k]:.4f}" for k in keys[5:]), m["samples_per_s"])
        if preempt.agreed():
            stopped_by = preempt.raised or "peer rank signal"
        if step % cfg.checkpoint.every == 0 or step in (cfg.train.steps, stop_at) or stopped_by:
            state.update(step=step, data=loader.state_dict(), mlflow_run_id=tracker.run_id)
            extra = {"disc": disc.state_dict(), "disc_opt": d_opt.state_dict()} if disc else None
            t_save = time.perf_counter()
            saved = ckpt.save(engine, step, state, extra=extra)
            preempt.note_save(dt, time.perf_counter() - t_save)
            log.info("checkpoint %s", run_dir / "checkpoints" / saved)
        if stopped_by:
            log.warning("stopping at step %d after %s; re-run the same command to resume", step, stopped_by)
            break
    finished = step >= cfg.train.steps
    if finished:
        final = whole(engine, cfg)
        save_tokenizer(final, run_dir / "tokenizer.pt", 0 if piped else cfg.parallel.zero_stage,
                       {"stage": t.stage, "step": step, "config": to_dict(cfg)})
        if eval_imgs is not None:
            evals["end"] = evaluate(final, cfg, eval_imgs, run_dir / "recon_grid.png")
            log.info("held-out reconstruction after training: %s", evals["end"])
            if layout.holds_loss:
                tracker.log_metrics({f"eval_{k}": v for k, v in evals["end"].items()}, step)
                tracker.log_artifact(str(run_dir / "recon_grid.png"))
        if layout.rank == 0:
            (run_dir / "eval.json").write_text(json.dumps(evals, indent=1))
            (run_dir / FINISHED_MARKER).write_text(f"{step}\n")
    if layout.holds_loss and (run_dir / "metrics.jsonl").is_file():
        tracker.log_loss_curve(str(run_dir / "metrics.jsonl"))
    tracker.finish("FINISHED" if finished or stop_at < cfg.train.steps else "KILLED")
    return {"step": step, "history": history, "run_dir": str(run_dir), "finished": finished,
            "stopped_by": stopped_by, "mlflow_run_id": tracker.run_id, "eval": evals}
