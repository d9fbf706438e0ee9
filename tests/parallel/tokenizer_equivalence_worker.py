"""Run under torchrun: HYDRA-TOK (stage 1: flow matching, GSB regulariser, distillation against
the frozen teacher) under the layout given by argv; rank 0 saves loss parts, full gradients and
a ZeRO-engine loss trajectory (equivalence_worker.zero_engine_run: the loop's own step). argv: OUT_FILE TP ZERO_STAGE STEPS.
Every layout sees the same global batch; each DP rank takes its slice."""
import sys
import warnings

import torch
import torch.distributed as dist

from equivalence_worker import full_grad, zero_engine_run

warnings.filterwarnings("ignore", category=FutureWarning)


def images(n, size):
    from hydra_dist.data.collate import image_to_tensor
    from hydra_dist.data.synthetic import make_sample
    return torch.stack([image_to_tensor(make_sample(i, 21, size)[0], size) for i in range(n)])


def main():
    out_file, tp, zero, steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    from hydra_dist.config import load_config
    from hydra_dist.distributed.init import init_distributed, shutdown
    from hydra_dist.models.tokenizer.losses import TokenizerObjective
    from hydra_dist.train.tasks.tokenizer import build_parts
    from megatron.core import parallel_state as ps
    world = int(__import__("os").environ["WORLD_SIZE"])
    cfg = load_config("configs/tokenizer/tiny_stage1.yaml",
                      [f"parallel.tp={tp}", f"parallel.zero_stage={zero}", "train.optim.warmup_steps=0"],
                      world_size=world)
    layout = init_distributed(tp, 1, 120, "gloo")
    dp, r = layout.dp, layout.dp_rank
    n = 4
    cfg.parallel.micro_batch_size = n // dp
    batch = {"images": images(n, cfg.model.vit.image_size), "sample_ids": torch.arange(n)}
    mine = {k: v[r * n // dp:(r + 1) * n // dp] for k, v in batch.items()}
    model, teacher, lpips, _ = build_parts(cfg)
    objective = TokenizerObjective(cfg, teacher, lpips)
    res = {}
    loss, parts = objective.generator(model(batch, noise_seed=5), batch["images"])
    loss.backward()
    res["loss"], res["parts"] = loss.item(), parts
    tp_group = ps.get_tensor_model_parallel_group()
    res["grads"] = {k: full_grad(p, tp_group) for k, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    res["trajectory"], _ = zero_engine_run(cfg, layout, mine, steps)
    if dist.get_rank() == 0:
        torch.save(res, out_file)
    shutdown()


if __name__ == "__main__":
    main()
