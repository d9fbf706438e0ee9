"""hydra-prepare-data: convert a corpus to MDS shards for the streaming readers.

  hydra-prepare-data webdataset /data/cc12m/tars --out /data/mds/cc12m --workers 32 --max-side 512
  hydra-prepare-data folder captions.jsonl --images-root imgs/ --out mds/mycaps
  hydra-prepare-data folder imgs/ --out mds/mycaps      (captions in side files: a.jpg + a.txt / a.json)
  hydra-prepare-data parquet shards/ --image-column image --caption-column text --out mds/p
  hydra-prepare-data text corpus.jsonl --out mds/text
  hydra-prepare-data llava llava_instruct.json --images-root coco/ --out mds/sft
Schemas: hydra_dist/data/schemas.py and docs/data.md. The conversion is written beside --out and
swapped in at the end: a bad or empty input exits 2 naming the cause and leaves --out as it was.
"""
from __future__ import annotations

import argparse
import json
import sys

from hydra_dist.data.convert import SUMMARY, ConvertOptions, convert
from hydra_dist.data.convert_inputs import ConversionError


def parse(argv=None) -> ConvertOptions:
    ap = argparse.ArgumentParser(prog="hydra-prepare-data", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("kind", choices=["folder", "webdataset", "parquet", "text", "llava"])
    ap.add_argument("inputs", nargs="+", help="files or folders (searched recursively)")
    ap.add_argument("--out", required=True, help="output MDS folder (replaced as a whole, only after a successful conversion)")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--images-root", default="", help="folder/llava: base of image paths")
    ap.add_argument("--image-column", default="image")
    ap.add_argument("--caption-column", default="caption")
    ap.add_argument("--text-field", default="text")
    ap.add_argument("--chunk-size", type=int, default=1000, help="records per part (folder/text/llava)")
    ap.add_argument("--max-side", type=int, default=0, help="shrink images to this longer side")
    ap.add_argument("--reencode", action="store_true", help="store every image as JPEG")
    ap.add_argument("--jpeg-quality", type=int, default=90)
    ap.add_argument("--shard-size", default="64mb")
    ap.add_argument("--compression", default="", help="MDS shard compression, e.g. zstd")
    ap.add_argument("--no-progress", action="store_true")
    a = ap.parse_args(argv)
    return ConvertOptions(kind=a.kind, inputs=a.inputs, out=a.out, workers=a.workers,
                          images_root=a.images_root, image_column=a.image_column,
                          caption_column=a.caption_column, text_field=a.text_field,
                          chunk_size=a.chunk_size, max_side=a.max_side, reencode=a.reencode,
                          jpeg_quality=a.jpeg_quality, shard_size=a.shard_size,
                          compression=a.compression, progress=not a.no_progress)


def main(argv=None) -> int:
    o = parse(argv)
    try:
        s = convert(o)
    except (ConversionError, FileNotFoundError) as e:
        # one line naming the file / record / column; the earlier --out is untouched
        print(f"hydra-prepare-data: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps({"out": o.out, "samples_written": s["samples_written"],
                      "samples_skipped": s["samples_skipped"], "summary": f"{o.out}/{SUMMARY}"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
