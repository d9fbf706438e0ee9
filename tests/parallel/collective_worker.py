"""Run under torchrun with 2 ranks, ZeRO-3: rank 0's micro-batches hold text only.

argv: OUT_FILE MODE   (MODE auto: the collator adds its dummy image; explicit: rank 0 carries a
real picture marked unplaced with weight 0). Rank 0 saves the loss trajectory.
"""
import sys
import warnings

import torch
import torch.distributed as dist

warnings.filterwarnings("ignore", category=FutureWarning)


def main():
    out_file, mode = sys.argv[1], sys.argv[2]
    from hydra_dist.config import load_config
    from hydra_dist.data.collate import HydraCollator
    from hydra_dist.data.synthetic import make_sample
    from hydra_dist.data.tokenizer import ByteTokenizer
    from hydra_dist.distributed.init import init_distributed, shutdown
    from hydra_dist.models.hydra import HydraModel
    from hydra_dist.parallel.deepspeed_engine import build_deepspeed
    from megatron.core import parallel_state as ps

    cfg = load_config(None, ["parallel.zero_stage=3", "parallel.micro_batch_size=2",
                             "parallel.timeout_s=60"], world_size=2)
    layout = init_distributed(1, 1, 60, "gloo")
    col = HydraCollator(ByteTokenizer(), 32, 16, 48, 0.5, seed=1, cfg_dropout=0.0)
    torch.manual_seed(cfg.train.seed)
    engine = build_deepspeed(HydraModel(cfg.model), cfg)
    traj = []
    for step in range(3):
        if layout.dp_rank == 0:
            batch = col([{"id": 500 + step, "image": None, "text": f"only words here {step}"},
                         {"id": 600 + step, "image": None, "text": "and more words"}])
            if mode == "explicit":
                img, _, _ = make_sample(step, 4, 32)
                real = col([{"id": 1, "image": img, "caption": "x", "task": "caption"}])
                batch["images"] = real["images"]          # a real picture, explicitly unused
                batch["image_weight"] = torch.zeros(1)
                batch["visual_index"] = torch.full((1, 16), -1)
        else:
            batch = col([{"id": 10 + 2 * step + j, "image": make_sample(j, 4, 32)[0],
                          "caption": make_sample(j, 4, 32)[1]} for j in range(2)])
        out = engine(batch, noise_seed=step)
        engine.backward(out["loss"])
        engine.step()
        t = out["loss"].detach().reshape(1).double()
        dist.all_reduce(t, group=ps.get_data_parallel_group())
        traj.append(t.item())
    if dist.get_rank() == 0:
        torch.save({"trajectory": traj}, out_file)
    shutdown()


if __name__ == "__main__":
    main()
