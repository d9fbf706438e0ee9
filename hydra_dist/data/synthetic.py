"""A shapes-and-colours image-caption set, generated deterministically and written as MDS.

Captions name the shape, its colour, the background colour and the position, so a model can
learn both directions (caption <-> image) on a CPU.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

from PIL import Image, ImageDraw

COLORS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 80, 220),
          "yellow": (235, 210, 40), "purple": (150, 60, 190), "white": (240, 240, 240),
          "black": (20, 20, 20), "orange": (240, 140, 30)}
SHAPES = ("circle", "square", "triangle")
POSITIONS = {"top left": (0.3, 0.3), "top right": (0.7, 0.3), "bottom left": (0.3, 0.7),
             "bottom right": (0.7, 0.7), "center": (0.5, 0.5)}
MDS_COLUMNS = {"id": "int", "image": "jpeg", "caption": "str"}


def make_sample(index: int, seed: int, size: int):
    rng = random.Random(seed * 1_000_003 + index)
    fg, bg = rng.sample(sorted(COLORS), 2)
    shape = rng.choice(SHAPES)
    pos = rng.choice(sorted(POSITIONS))
    img = Image.new("RGB", (size, size), COLORS[bg])
    draw = ImageDraw.Draw(img)
    cx, cy = POSITIONS[pos]
    r = size * rng.uniform(0.15, 0.22)
    x, y = cx * size, cy * size
    if shape == "circle":
        draw.ellipse([x - r, y - r, x + r, y + r], fill=COLORS[fg])
    elif shape == "square":
        draw.rectangle([x - r, y - r, x + r, y + r], fill=COLORS[fg])
    else:
        draw.polygon([(x, y - r), (x - r, y + r), (x + r, y + r)], fill=COLORS[fg])
    caption = f"a {fg} {shape} at the {pos} on {bg}"
    return img, caption, {"fg": fg, "bg": bg, "shape": shape, "pos": pos}


def write_synthetic_mds(out_dir: str | Path, num_samples: int, seed: int, image_size: int,
                        size_limit: str = "8mb") -> Path:
    """Write the set as MDS shards; a finished set (index.json + done marker) is reused."""
    from streaming import MDSWriter

    out = Path(out_dir)
    marker = out / "synthetic.json"
    meta = {"num_samples": num_samples, "seed": seed, "image_size": image_size}
    if marker.is_file() and json.loads(marker.read_text()) == meta and (out / "index.json").is_file():
        return out
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.mds*"):
        old.unlink()
    with MDSWriter(out=str(out), columns=MDS_COLUMNS, size_limit=size_limit) as w:
        for i in range(num_samples):
            img, caption, _ = make_sample(i, seed, image_size)
            w.write({"id": i, "image": img, "caption": caption})
    marker.write_text(json.dumps(meta))
    return out
