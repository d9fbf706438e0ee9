"""A shapes-and-colours image-caption set, generated deterministically and written as MDS.

Captions name the shape, its colour, the background colour and the position, so a model can
learn both directions (caption <-> image) on a CPU.
"""
from __future__ import annotations

import io
import json
import random
from pathlib import Path

from PIL import Image, ImageDraw

from .integrity import SHARD_HASH, hashed_columns, with_digest

COLORS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 80, 220),
          "yellow": (235, 210, 40), "purple": (150, 60, 190), "white": (240, 240, 240),
          "black": (20, 20, 20), "orange": (240, 140, 30)}
SHAPES = ("circle", "square", "triangle")
POSITIONS = {"top left": (0.3, 0.3), "top right": (0.7, 0.3), "bottom left": (0.3, 0.7),
             "bottom right": (0.7, 0.7), "center": (0.5, 0.5)}
# The image is stored as JPEG bytes, encoded here exactly as streaming's "jpeg" column would
# (PIL's defaults), so the per-sample digest covers the stored bytes (data/integrity.py).
MDS_COLUMNS = {"id": "int", "image": "bytes", "caption": "str"}
FORMAT = 2  # 2: JPEG bytes + xxh3 column + shard hashes; a set in an older format is rewritten


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
    meta = {"num_samples": num_samples, "seed": seed, "image_size": image_size, "format": FORMAT}
    if marker.is_file() and json.loads(marker.read_text()) == meta and (out / "index.json").is_file():
        return out
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.mds*"):
        old.unlink()
    with MDSWriter(out=str(out), columns=hashed_columns(MDS_COLUMNS), size_limit=size_limit,
                   hashes=[SHARD_HASH]) as w:
        for i in range(num_samples):
            img, caption, _ = make_sample(i, seed, image_size)
            buf = io.BytesIO()
            img.save(buf, format="JPEG")
            w.write(with_digest({"id": i, "image": buf.getvalue(), "caption": caption}))
    marker.write_text(json.dumps(meta))
    return out
