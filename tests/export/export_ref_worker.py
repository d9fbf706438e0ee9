"""Run under torchrun: a real `hydra-pretrain` run (any engine, any layout), then the training
model's own forward on one fixed batch, with the weights the trainer's resume path loads from
the checkpoint it wrote. The rank that holds the loss saves the batch, the full logits
(vocab-parallel slices gathered over TP) and the flow head's velocities.

argv: REF_FILE CONFIG [key=value ...]   (the hydra-pretrain arguments after REF_FILE)
"""
import sys
import warnings
from pathlib import Path

import torch
import torch.distributed as dist

import hydra_dist.train.trainer as trainer
from hydra_dist.distributed.init import shutdown

warnings.filterwarnings("ignore", category=FutureWarning)
NOISE_SEED = 4321


def fixed_batch(cfg):
    """micro_batch_size rows, one sample per row: generation, understanding and a text-only
    sample (a dummy image, placed nowhere) all present."""
    from hydra_dist.data.collate import HydraCollator
    from hydra_dist.data.synthetic import make_sample
    from hydra_dist.data.tokenizer import load_tokenizer
    from hydra_dist.train.run_setup import visual_tokens_per_image
    n, size = cfg.parallel.micro_batch_size, cfg.model.vit.image_size
    for seed in range(100):  # the first collator seed that mixes both tasks
        col = HydraCollator(load_tokenizer(cfg.data.tokenizer), size, visual_tokens_per_image(cfg),
                            cfg.data.max_text_tokens, 0.5, seed)
        samples = []
        for i in range(n):
            img, cap, _ = make_sample(1000 + i, 77, size)
            samples.append({"id": 1000 + i, "text": cap} if i == n - 1 else
                           {"id": 1000 + i, "image": img, "caption": cap})
        batch = col(samples)
        gen = int(batch["is_gen"].sum())
        if 0 < gen < n - 1 and batch["input_ids"].shape[0] == n:
            return batch
    raise AssertionError("no collator seed mixes generation and understanding")


def gather_tp(x):
    """Full-vocabulary logits from this TP rank's slice (last dim)."""
    from megatron.core import parallel_state as ps
    group = ps.get_tensor_model_parallel_group()
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size(group))]
    dist.all_gather(parts, x.contiguous(), group=group)
    return torch.cat(parts, dim=-1)


def capture(modules, got):
    def hook(key):
        def keep(module, inputs, out):  # returns None: a hook's return value would replace `out`
            if key not in got:  # the first call only
                # lm_head is a ColumnParallelLinear: (output, bias)
                got[key] = (out[0] if isinstance(out, tuple) else out).detach().clone()
        return keep
    for key, mod in modules:
        mod.register_forward_hook(hook(key))


def deepspeed_forward(cfg, layout, batch, got):
    from hydra_dist.parallel.deepspeed_engine import build_deepspeed
    from hydra_dist.train.run_setup import build_model
    engine = build_deepspeed(build_model(cfg, layout), cfg)
    load(cfg, layout, engine)
    m = engine.module
    # the final hidden states of every position: training runs the LM head on labelled
    # positions only, the export's logits cover all, so the head is applied here to all
    capture([("h", m.llm.norm), ("v_pred", m.flow_head)], got)
    engine.eval()
    with torch.no_grad():
        engine(batch, noise_seed=NOISE_SEED)
        got["logits"] = m.llm.logits(got.pop("h"))
    return True


def megatron_forward(cfg, layout, batch, got):
    from megatron.core.pipeline_parallel import get_forward_backward_func

    from hydra_dist.models.pipeline_stage import payload_rows
    from hydra_dist.train.tasks import make_task
    engine = make_task(cfg).build_engine(layout)
    load(cfg, layout, engine)
    chunks = list(engine.model.chunks)
    last = [c for c in chunks if c.last]  # the final chunk: on the last pipeline rank only
    capture([("h", c.llm.norm) for c in last] + [("v_pred", c.flow_head) for c in last], got)
    p = cfg.parallel
    n = p.pp  # the interleaved schedule wants a multiple of pp micro-batches; hooks keep the first
    fb = get_forward_backward_func(pp_size=p.pp, vp_size=p.virtual_pp if p.virtual_pp > 1 else None)
    with torch.no_grad():
        fb(forward_step_func=lambda it, model: (model(next(it), NOISE_SEED), lambda out: (out["loss"], {})),
           data_iterator=[iter([batch] * n) for _ in chunks] if len(chunks) > 1 else iter([batch] * n),
           model=chunks if len(chunks) > 1 else chunks[0], num_microbatches=n,
           seq_length=batch["input_ids"].shape[1] + payload_rows(cfg.model),
           micro_batch_size=batch["input_ids"].shape[0], forward_only=True)
        if last:   # all positions (training's head runs on labelled ones only)
            got["logits"] = last[0].llm_logits(got.pop("h"))
    return layout.pp_rank == layout.pp - 1


def load(cfg, layout, engine):
    from hydra_dist.checkpoint import CheckpointManager
    ckpt = CheckpointManager(Path(cfg.output_dir) / "checkpoints", cfg.checkpoint.keep_last, layout.rank)
    tag = ckpt.latest()
    assert tag, "the run wrote no checkpoint"
    ckpt.load(engine, tag)


def main():
    ref_file, args = sys.argv[1], sys.argv[2:]
    trainer.shutdown = lambda: None  # keep the process groups for the forward below
    from hydra_dist.cli.pretrain import main as pretrain
    assert pretrain(args) == 0
    from hydra_dist.cli.pretrain import parse_args
    from hydra_dist.config import load_config
    from hydra_dist.distributed.init import init_distributed
    a = parse_args(args)
    cfg = load_config(a.config, a.overrides, world_size=dist.get_world_size())
    p = cfg.parallel
    layout = init_distributed(p.tp, p.pp, p.timeout_s, p.backend)  # the live groups
    batch = fixed_batch(cfg)
    got = {}
    forward = megatron_forward if p.engine == "megatron" else deepspeed_forward
    last_stage = forward(cfg, layout, batch, got)
    if last_stage:
        got["logits"] = gather_tp(got["logits"])
        if layout.holds_loss:
            torch.save({"batch": batch, "noise_seed": NOISE_SEED, **got}, ref_file)
    dist.barrier()
    shutdown()


if __name__ == "__main__":
    main()
