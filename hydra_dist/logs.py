"""Start-up output a user can read: our log, and dependency notices that say nothing to a
hydra_dist user filtered at their source, each by its category, module and message (not by
silencing a library, and never a warning that could matter). What the filtered notices said is
stated once in our own words by fast_paths_line() (the trainer logs it on the logging rank).

Filtered (docs/install.md, "What the start-up log says"):
- megatron-core's "Transformer Engine and Apex are not installed" UserWarnings (4 modules, per
  rank): megatron falls back to torch implementations, and our layers do not use TE;
- torch's cpp_extension "No CUDA runtime is found" on hosts without CUDA (a CPU run);
- INFO records of libraries (megatron-fsdp's "Detected Megatron Core", streaming's defaults
  for predownload / num_canonical_nodes / shuffle_block_size, MLflow's table creation): the
  root logger stays at WARNING, only the hydra_dist loggers log INFO. Their warnings still show.
"""
from __future__ import annotations

import logging
import warnings

TE_APEX = r"Transformer Engine and Apex are not installed"


def quiet_dependencies(cuda: bool | None = None) -> None:
    """Install the filters; call before megatron-core, DeepSpeed or torch's cpp_extension load."""
    warnings.filterwarnings("ignore", message=TE_APEX, category=UserWarning, module=r"megatron\.core")
    # torch's c10d prints a deprecation warning on every ZeRO collective; it hides the log
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.distributed")
    if cuda is None:
        import torch
        cuda = torch.cuda.is_available()
    if not cuda:   # on a GPU host the same logger may say something that matters: keep it there
        logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    # MLflow gives its own loggers a handler at INFO; its table creation is not news
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)


def setup_logging(rank: int) -> None:
    """Our INFO on rank 0 (WARNING elsewhere); every library at WARNING."""
    logging.basicConfig(level=logging.WARNING,
                        format=f"%(asctime)s [rank{rank}] %(name)s: %(message)s")
    logging.getLogger("hydra_dist").setLevel(logging.INFO if rank == 0 else logging.WARNING)


def fast_paths_line(attention: str, gsb: str, device) -> str:
    """One line: which fast paths this run takes and which optional packages are absent."""
    import importlib.util
    have = {name: importlib.util.find_spec(mod) is not None
            for name, mod in (("flash-attn", "flash_attn"), ("apex", "apex"),
                              ("Transformer Engine", "transformer_engine"))}
    absent = [n for n, ok in have.items() if not ok]
    return (f"fast paths on {device}: attention {attention}, GSB ops {gsb}; "
            + (f"not installed: {', '.join(absent)} (megatron-core uses its torch fallbacks; "
               "our layers need none of them)" if absent else "flash-attn, apex and Transformer Engine present"))
