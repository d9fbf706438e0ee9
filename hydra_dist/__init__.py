"""hydra_dist: distributed pretraining for HYDRA (HYDRA-TOK + unified Qwen2.5 model)."""
__version__ = "0.1.0"
