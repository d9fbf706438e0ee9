"""HYDRA-TOK: the visual tokenizer (ViT + GSB + pixel flow decoder) and its training losses."""
from .decoder import PixelFlowDecoder, euler_sample
from .losses import TokenizerObjective, distill_loss
from .model import HydraTok, TeacherViT

__all__ = ["HydraTok", "PixelFlowDecoder", "TeacherViT", "TokenizerObjective", "distill_loss",
           "euler_sample"]
