"""`hydra_dist.cli.pretrain` with model.init_from applied in build_model, for tests run before
run_setup.build_model calls load_initial_weights itself (loading twice is harmless)."""
import sys

import hydra_dist.train.trainer as trainer
from hydra_dist.checkpoint.init_weights import load_initial_weights
from hydra_dist.cli.pretrain import main

_build = trainer.build_model


def _build_with_init(cfg, layout):
    model = _build(cfg, layout)
    load_initial_weights(model, cfg)
    return model


trainer.build_model = _build_with_init

if __name__ == "__main__":
    sys.exit(main())
