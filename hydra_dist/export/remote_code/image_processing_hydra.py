"""HYDRA's image processor (exported by hydra_dist; self-contained): the training pipeline's
pixels. RGB, bicubic resize to image_size x image_size (PIL), then x / 127.5 - 1 in fp32: the
one formula hydra_dist uses in training, evaluation and generation. The model applies its own
pixel normalisation (vision_config.pixel_norm, e.g. ImageNet mean/std for InternViT) inside its
patch embedding, so these [-1, 1] pixels are what every path feeds it."""
import numpy as np
import torch
from PIL import Image
from transformers.image_processing_utils import BaseImageProcessor, BatchFeature


class HydraImageProcessor(BaseImageProcessor):
    model_input_names = ["pixel_values"]

    def __init__(self, image_size=32, resample="bicubic", pixel_norm="unit", **kwargs):
        super().__init__(**kwargs)
        self.image_size = image_size
        self.resample = resample
        self.pixel_norm = pixel_norm   # informational: applied by the model, not here

    def to_pixels(self, img):
        """[3, S, S] uint8 tensor (the training batch's pixels)."""
        if not isinstance(img, Image.Image):
            img = Image.fromarray(np.asarray(img, dtype=np.uint8))
        if img.mode != "RGB":
            img = img.convert("RGB")
        s = self.image_size
        if img.size != (s, s):
            img = img.resize((s, s), Image.BICUBIC)
        return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)

    def preprocess(self, images, return_tensors="pt", **kwargs):
        if not isinstance(images, (list, tuple)):
            images = [images]
        px = torch.stack([self.to_pixels(im) for im in images]).float().div_(127.5).sub_(1.0)
        return BatchFeature({"pixel_values": px}, tensor_type=None if return_tensors == "pt" else return_tensors)

    def postprocess(self, pixels):
        """[B,3,H,W] in [-1, 1] -> list of PIL images (the rounding hydra-generate uses)."""
        arr = ((pixels.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().byte()
        return [Image.fromarray(a.permute(1, 2, 0).numpy()) for a in arr]
