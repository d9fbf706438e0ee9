"""HYDRA-TOK (task: tokenizer), both stages (docs/design.md, docs/tokenizer.md).

Stage 1: everything trains; L_FM + L_reg + L_dist (+ LPIPS / GAN by their weights).
Stage 2: the encoder (patch, Gen-ViT, GSB, Sem-ViT) is frozen, no distillation, GAN on.
On the ZeRO engine the tokenizer is the DeepSpeed module (megatron TP layers inside); on the
megatron engine, pipeline stages (models/tokenizer/pipeline_stage.py: stage 1's FM + reg +
distillation, LPIPS and GAN refused by the config). The frozen teacher and LPIPS live outside
the engine. The patch discriminator is small and replicated: a plain torch AdamW whose grads are
averaged over the DP group by hand after the engine's step; its state rides in the checkpoint as
extra_state.pt. Runs end with <run>/tokenizer.pt (full tensors, any TP) and a held-out
reconstruction check (eval.json, recon_grid.png) before and after training.
"""
from __future__ import annotations

import json
import logging

import torch
import torch.distributed as dist
from megatron.core import parallel_state as ps

from hydra_dist.config import RunConfig, to_dict
from hydra_dist.distributed.init import to_comm
from hydra_dist.logs import fast_paths_line
from hydra_dist.models.noise import step_noise_seed
from hydra_dist.ops.gsb import resolve_impl
from hydra_dist.parallel.engine import StepSpec
from hydra_dist.parallel.megatron_engine import build_megatron, engine_device, schedule_config

from ..run_setup import build_deepspeed_engine

log = logging.getLogger("hydra_dist")


class ImageCollator:
    """Images only: {images [B,3,H,W] in [-1,1], sample_ids [B]} (module level: picklable)."""

    def __init__(self, size: int):
        self.size = size

    def __call__(self, samples):
        from hydra_dist.data.collate import images_to_tensor
        return {"images": images_to_tensor([s["image"] for s in samples], self.size),
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


class TokenizerTask:
    name = "tokenizer"

    def __init__(self, cfg: RunConfig):
        t, w = cfg.tokenizer, cfg.tokenizer.weights
        self.cfg, self.piped = cfg, cfg.parallel.engine == "megatron"
        self.objective = self.disc = self.d_opt = self.eval_imgs = None
        self.gan_on, self.evals = False, {}
        self.keys = ("loss", "fm", "reg", "kl", "cos") + (("dist",) if w.dist > 0 else ()) + \
            (("lpips",) if w.lpips > 0 else ()) + (("gan_g", "gan_d") if w.gan > 0 else ())
        self.log_names = {k: k for k in self.keys}
        self.semantic = t.stage == 1 and w.dist > 0

    def fast_paths(self, device):
        # the ViTs and the pixel decoder attend through torch SDPA (no varlen packing here)
        return fast_paths_line("torch SDPA", resolve_impl(self.cfg.model.gsb.kernel, device), device)

    def build_engine(self, layout):
        cfg = self.cfg
        model, teacher, lpips, disc = build_parts(cfg)
        if self.piped:   # stages cut from the whole tokenizer (teacher on the first)
            from hydra_dist.models.tokenizer.pipeline_stage import build_tok_stages
            chunks = build_tok_stages(cfg, layout, schedule_config(cfg, cfg.tokenizer.decoder),
                                      model, teacher)
            engine = build_megatron(cfg, layout, chunks, engine_device(layout))
            chunks[0].move_teacher(engine.device)
            return engine
        from hydra_dist.models.tokenizer import TokenizerObjective
        engine = build_deepspeed_engine(model, cfg, layout)
        self.objective = TokenizerObjective(cfg, teacher, lpips).to(engine.device)
        if disc is not None:
            g = cfg.tokenizer.gan
            self.disc = disc.to(engine.device)
            self.d_opt = torch.optim.AdamW(disc.parameters(), lr=g.lr, betas=tuple(g.betas),
                                           weight_decay=0.0)
        return engine

    def build_loader(self, data_path, layout, state):
        from hydra_dist.data.loader import StreamingBatches
        c, d = self.cfg, self.cfg.data
        return StreamingBatches(data_path, ImageCollator(c.model.vit.image_size),
                                c.parallel.micro_batch_size, layout.dp, layout.tp * layout.pp,
                                d.shuffle, d.seed, d.num_workers, state, pin_memory=d.pin_memory,
                                prefetch_factor=d.prefetch_factor)

    def prepare_step(self, batches, step, layout):
        cfg, seed = self.cfg, step_noise_seed(self.cfg.train.seed, step)
        spec = StepSpec(self.keys, stage_kwargs={"noise_seed": seed})
        if self.piped:
            from hydra_dist.models.tokenizer.pipeline_stage import seq_length
            rows = cfg.parallel.micro_batch_size
            if any(b["images"].shape[0] != rows for b in batches):
                raise ValueError(f"every micro-batch must hold parallel.micro_batch_size={rows} "
                                 "images (pipeline p2p shapes are fixed)")
            spec.seq_length = seq_length(cfg)
            return batches, spec
        self.gan_on = self.disc is not None and step >= cfg.tokenizer.gan.start_step
        disc, ga = (self.disc if self.gan_on else None), len(batches)

        def micro_loss(model, batch):
            out = model(batch, noise_seed=seed, semantic=self.semantic)
            loss, parts = self.objective.generator(out, batch["images"], disc)
            if disc is not None:   # its own graph (x0_pred detached): the order changes nothing
                d = self.objective.discriminator(disc, batch["images"], out["x0_pred"])
                (d / ga).backward()
                parts["gan_d"] = float(d.detach())
            return loss, parts
        spec.micro_loss = micro_loss
        return batches, spec

    def after_step(self, skipped, layout):
        """The replicated discriminator: grads averaged over DP, then its step (none when the
        generator's step was skipped)."""
        if not self.gan_on:
            return {}
        if not skipped:
            dp_group = ps.get_data_parallel_group()
            for prm in self.disc.parameters():
                g = to_comm(prm.grad, dp_group)
                dist.all_reduce(g, group=dp_group)
                prm.grad = (g / layout.dp).to(prm.grad.device)
            self.d_opt.step()
        self.d_opt.zero_grad(set_to_none=True)
        return {}

    def whole(self, engine):
        """The whole tokenizer: the DeepSpeed module, or the pipeline stages gathered."""
        if not self.piped:
            return engine.module
        from hydra_dist.models.tokenizer.pipeline_stage import gather_whole
        return gather_whole(engine, self.cfg)

    def on_start(self, engine, layout, tracker, fresh):
        if self.cfg.tokenizer.eval_images:
            self.eval_imgs = held_out_images(self.cfg).to(engine.device)
        if fresh and self.eval_imgs is not None:
            self.evals["start"] = evaluate(self.whole(engine), self.cfg, self.eval_imgs)
            log.info("held-out reconstruction before training: %s", self.evals["start"])

    def evaluate(self, engine, step, layout, tracker):
        pass

    def on_finish(self, engine, run_dir, step, layout, tracker, finished):
        if not finished:
            return {"eval": self.evals}
        from hydra_dist.models.tokenizer.weights import save_tokenizer
        cfg, final = self.cfg, self.whole(engine)
        save_tokenizer(final, run_dir / "tokenizer.pt", 0 if self.piped else cfg.parallel.zero_stage,
                       {"stage": cfg.tokenizer.stage, "step": step, "config": to_dict(cfg)})
        if self.eval_imgs is not None:
            self.evals["end"] = evaluate(final, cfg, self.eval_imgs, run_dir / "recon_grid.png")
            log.info("held-out reconstruction after training: %s", self.evals["end"])
            if layout.holds_loss:
                tracker.log_metrics({f"eval_{k}": v for k, v in self.evals["end"].items()}, step)
                tracker.log_artifact(str(run_dir / "recon_grid.png"))
        if layout.rank == 0:
            (run_dir / "eval.json").write_text(json.dumps(self.evals, indent=1))
        return {"eval": self.evals}

    def extra_state(self):
        if self.disc is None:
            return None
        return {"disc": self.disc.state_dict(), "disc_opt": self.d_opt.state_dict()}

    def load_extra_state(self, extra):
        if self.disc is not None and extra:
            self.disc.load_state_dict(extra["disc"])
            self.d_opt.load_state_dict(extra["disc_opt"])

    def tags(self):
        return {"task": "tokenizer"}

    def log_line(self, m):
        return " ".join(f"{k} {m[k]:.4f}" for k in self.keys[1:])
