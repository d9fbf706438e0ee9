"""torchrun worker: what each rank reads (disjoint over DP, equal over TP) and exact resume
with per-rank bad samples; in mode "elastic" the state after 3 steps, for another DP size.
Writes <out>/<mode>_rank<R>.json."""
import json
import os
import sys

import torch.distributed as dist

from hydra_dist.data.loader import StreamingBatches


def main(src_img: str, src_txt: str, out: str, mode: str) -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    dp, rep = (1, 2) if mode == "tp" else (2, 1)
    sources = [{"path": src_img, "task": "auto", "proportion": 3.0},
               {"path": src_txt, "task": "text", "proportion": 1.0}]

    def make(state=None):
        return StreamingBatches("", lambda s: s, 4, dp, rep, True, 7, 0, state,
                                sources=sources, image_size=8)

    def take(ld, n):
        return [[s["id"] for s in ld.next_samples()] for _ in range(n)]

    if mode == "elastic":  # 3 steps on DP=2, then the state for another DP size
        ld = make()
        head = take(ld, 3)
        state = ld.state_dict()
        with open(os.path.join(out, f"{mode}_rank{rank}.json"), "w") as f:
            json.dump({"head": head, "state": state}, f)
        dist.barrier()
        dist.destroy_process_group()
        return
    full_ld = make()
    full = take(full_ld, 12)
    a = make()
    head = take(a, 5)
    state = json.loads(json.dumps(a.state_dict()))  # collective: all ranks
    b = make(state)
    tail = take(b, 7)
    res = {"full": full, "resumed": head + tail, "errors": full_ld.error_counts(),
           "errors_all": full_ld.error_counts(all_ranks=True)}
    with open(os.path.join(out, f"{mode}_rank{rank}.json"), "w") as f:
        json.dump(res, f)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:5])
