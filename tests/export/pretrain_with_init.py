"""`hydra_dist.cli.pretrain` with model.init_from applied once more after the unified task's
build_model (run_setup.build_model loads it already; loading twice is harmless): the test runs
the same whichever way a future build_model is wired."""
import sys

import hydra_dist.train.tasks.unified as unified
from hydra_dist.checkpoint.init_weights import load_initial_weights
from hydra_dist.cli.pretrain import main

_build = unified.build_model


def _build_with_init(cfg, layout):
    model = _build(cfg, layout)
    load_initial_weights(model, cfg)
    return model


unified.build_model = _build_with_init

if __name__ == "__main__":
    sys.exit(main())
