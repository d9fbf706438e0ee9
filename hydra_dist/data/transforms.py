"""Image decoding and the ViT transform (resize the short side, center crop, [-1, 1])."""
from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image


def decode_image(data) -> Image.Image:
    """Encoded bytes (or an already decoded PIL image) -> fully loaded RGB image. Raises on
    truncated or undecodable data (PIL's OSError / UnidentifiedImageError) and wrong types."""
    if isinstance(data, Image.Image):
        img = data
    elif isinstance(data, (bytes, bytearray, memoryview)):
        if not len(data):
            raise ValueError("empty image bytes")
        img = Image.open(io.BytesIO(bytes(data)))
    else:
        raise TypeError(f"image is {type(data).__name__}, not bytes")
    img.load()  # decode now: a truncated file fails here, not later in the collator
    return img if img.mode == "RGB" else img.convert("RGB")


def resize_center_crop(img: Image.Image, size: int) -> Image.Image:
    """Scale the short side to `size` (bicubic), then crop the center `size` x `size`."""
    w, h = img.size
    if (w, h) == (size, size):
        return img
    s = size / min(w, h)
    nw, nh = max(size, round(w * s)), max(size, round(h * s))
    img = img.resize((nw, nh), Image.BICUBIC)
    left, top = (nw - size) // 2, (nh - size) // 2
    return img.crop((left, top, left + size, top + size))


def vit_transform(img: Image.Image, size: int) -> torch.Tensor:
    """[3, size, size] float in [-1, 1], as collate.image_to_tensor produces."""
    img = resize_center_crop(img if img.mode == "RGB" else img.convert("RGB"), size)
    arr = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)
    return arr.float() / 127.5 - 1.0


def limit_side(img: Image.Image, max_side: int) -> Image.Image:
    """Shrink so the longer side is at most max_side (aspect kept); smaller images unchanged."""
    w, h = img.size
    if max_side <= 0 or max(w, h) <= max_side:
        return img
    s = max_side / max(w, h)
    return img.resize((max(1, round(w * s)), max(1, round(h * s))), Image.BICUBIC)


def encode_jpeg(img: Image.Image, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()
