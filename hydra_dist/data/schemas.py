"""MDS schemas written by `hydra-prepare-data` (one per kind of input) and read by the readers.

image_caption  (inputs: image folder + captions JSONL, webdataset tars, parquet)
    id       int    stable index of the row in the sorted input (gaps where images were bad)
    key      str    where it came from: relative image path, "<tar>/<key>", "<parquet>:<row>"
    image    bytes  encoded image (original bytes, or JPEG when re-encoded / resized)
    caption  str
    width    int    decoded size of the stored image
    height   int
text           (input: JSONL with a "text" field)
    id       int
    text     str
instruct       (input: LLaVA conversation JSON, with or without images)
    id             int
    key            str    the record's "id" in the LLaVA file
    image          bytes  encoded image; b"" when the record has none
    conversations  json   [{"from": "human"|"gpt"|"system", "value": str}, ...] as in LLaVA
                          ("<image>" placeholders are kept; the reader strips them)

The synthetic shapes set (hydra_dist/data/synthetic.py) uses {id:int, image:jpeg, caption:str};
the readers accept an image column that is already decoded (jpeg/png/pil) as well as bytes.
"""
from __future__ import annotations

SCHEMAS = {
    "image_caption": {"id": "int", "key": "str", "image": "bytes", "caption": "str",
                      "width": "int", "height": "int"},
    "text": {"id": "int", "text": "str"},
    "instruct": {"id": "int", "key": "str", "image": "bytes", "conversations": "json"},
}
# Which schema each converter writes.
SCHEMA_OF_INPUT = {"folder": "image_caption", "webdataset": "image_caption",
                   "parquet": "image_caption", "text": "text", "llava": "instruct"}
