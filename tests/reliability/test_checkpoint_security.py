"""Loading a checkpoint never runs code: DeepSpeed's own loader (torch.load weights_only=False in
deepspeed/runtime/checkpoint_engine/torch_checkpoint_engine.py) is replaced by a weights_only
one before CheckpointManager.load; a crafted pickle is refused. The ZeRO-3/ZeRO-1 resumes in
test_crash_resume.py / test_nan_loss.py show real checkpoints load through it."""
import os
import pickle

import pytest
import torch


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_crafted_checkpoint_is_refused_not_executed(tmp_path):
    from deepspeed.runtime.checkpoint_engine import TorchCheckpointEngine

    from hydra_dist.checkpoint.manager import use_safe_loader
    marker = tmp_path / "pwned"
    evil = tmp_path / "zero_pp_rank_0_mp_rank_00_optim_states.pt"
    torch.save({"optimizer_state_dict": _Evil(marker)}, evil)

    class Engine:
        checkpoint_engine = TorchCheckpointEngine()
    engine = Engine()
    engine.checkpoint_engine = TorchCheckpointEngine()
    use_safe_loader(engine)
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        engine.checkpoint_engine.load(str(evil), map_location="cpu")
    assert not marker.exists()
    ok = tmp_path / "ok.pt"
    torch.save({"w": torch.ones(2), "step": 3}, ok)
    assert engine.checkpoint_engine.load(str(ok))["step"] == 3
