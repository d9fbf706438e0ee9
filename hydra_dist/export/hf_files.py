"""The non-weight files of a hydra-export-hf folder: tokenizer, image processor, processor, chat
template, generation config and model card, so that the folder is a complete Hugging Face model:
  AutoTokenizer / AutoImageProcessor / AutoProcessor / AutoModelForCausalLM .from_pretrained(
      OUT, trust_remote_code=True)
all load from it with only torch, transformers, safetensors and pillow installed."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt",
                   "special_tokens_map.json", "added_tokens.json", "tokenizer.model", "chat_template.jinja")
BYTE_SPECIALS = {"pad_token": "<|pad|>", "bos_token": "<|bos|>", "eos_token": "<|eos|>"}
BYTE_IMAGE = "<|image|>"
HF_IMAGE = "<|image_pad|>"   # the special a Hugging Face tokenizer must define (data/tokenizer.py)
# The model was trained to caption: a user turn's image and text are the prefix the answer
# continues ([BOS, IMG x M, text]); roles carry no markers the byte-tokenizer model ever saw.
BYTE_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{% if message['content'] is string %}"
    "{{ message['content'] }}{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<|image|>{% elif part['type'] == 'text' %}{{ part['text'] }}"
    "{% endif %}{% endfor %}{% endif %}{% endfor %}")


def write_json(path: Path, obj: dict) -> None:
    path.write_text(json.dumps(obj, indent=1) + "\n")


def write_tokenizer(tokenizer: str, out: Path, remote_code: Path) -> str:
    """The run's tokenizer into OUT; -> the image placeholder token."""
    if tokenizer == "byte":
        shutil.copy2(remote_code / "tokenization_hydra.py", out / "tokenization_hydra.py")
        write_json(out / "tokenizer_config.json", {
            "tokenizer_class": "HydraByteTokenizer",
            "auto_map": {"AutoTokenizer": ["tokenization_hydra.HydraByteTokenizer", None]},
            **BYTE_SPECIALS, "image_token": BYTE_IMAGE, "additional_special_tokens": [BYTE_IMAGE],
            "add_bos_token": True, "model_max_length": 4096, "chat_template": BYTE_CHAT_TEMPLATE})
        write_json(out / "special_tokens_map.json", {**BYTE_SPECIALS, "additional_special_tokens": [BYTE_IMAGE]})
        return BYTE_IMAGE
    for name in TOKENIZER_FILES:
        if (Path(tokenizer) / name).is_file():
            shutil.copy2(Path(tokenizer) / name, out / name)
    return HF_IMAGE


def write_processor(out: Path, remote_code: Path, cfg, image_token: str, num_image_tokens: int) -> None:
    for f in ("image_processing_hydra.py", "processing_hydra.py"):
        shutil.copy2(remote_code / f, out / f)
    auto = {"AutoImageProcessor": "image_processing_hydra.HydraImageProcessor",
            "AutoProcessor": "processing_hydra.HydraProcessor"}
    v = cfg.model.vit
    write_json(out / "preprocessor_config.json", {
        "image_processor_type": "HydraImageProcessor", "processor_class": "HydraProcessor",
        "auto_map": auto, "image_size": v.image_size, "resample": "bicubic",
        "pixel_norm": "unit" if v.pixel_norm == "auto" else v.pixel_norm})
    write_json(out / "processor_config.json", {
        "processor_class": "HydraProcessor", "auto_map": {"AutoProcessor": auto["AutoProcessor"]},
        "num_image_tokens": num_image_tokens, "image_token": image_token})


def write_generation_config(out: Path, ids: dict, max_new_tokens: int = 64) -> None:
    """Greedy text decoding that stops at the tokenizer's EOS and pads with its PAD (the ids
    of the tokenizer shipped beside it)."""
    write_json(out / "generation_config.json", {
        "bos_token_id": ids["bos_token_id"], "eos_token_id": ids["eos_token_id"],
        "pad_token_id": ids["pad_token_id"], "do_sample": False, "max_new_tokens": max_new_tokens})


def write_model_card(out: Path, cfg, info: dict, decoder: bool) -> None:
    m = cfg.model
    state = info.get("trainer_state") or {}
    steps = state.get("step", state.get("global_step", "?"))
    gen = ('proc.postprocess(model.generate_image(proc.image_prompt("a red circle")))[0].save("a.png")'
           if decoder else
           "# text -> image needs the pixel decoder: export with --decoder TOK_RUN")
    (out / "README.md").write_text(f"""---
library_name: transformers
pipeline_tag: any-to-any
tags: [hydra, hydra_dist, multimodal, rectified-flow]
---
# HYDRA ({info.get('part', 'all')}), exported by hydra_dist

A unified multimodal model: a Qwen2 LLM ({m.llm.num_layers} layers, hidden {m.llm.hidden_size},
vocabulary {m.llm.vocab_size}) reads HYDRA-TOK's Sem-ViT features for understanding and generates
images by rectified flow in the GSB latent space ({m.gsb.latent_channels} channels per patch,
{m.vit.image_size} px images, patch {m.vit.patch_size}). Trained {steps} steps from
`{info.get('checkpoint', '?')}`; the run's resolved config is `hydra_run_config.yaml`.
Pixel decoder included: {'yes' if decoder else 'no'}.

```python
import torch
from PIL import Image
from transformers import AutoModelForCausalLM, AutoProcessor
model = AutoModelForCausalLM.from_pretrained(FOLDER, trust_remote_code=True, dtype=torch.float32)
proc = AutoProcessor.from_pretrained(FOLDER, trust_remote_code=True)
inputs = proc(images=Image.open("cat.png"), text="")            # understanding (a caption)
print(proc.decode(model.generate(**inputs)[0, inputs["input_ids"].shape[1]:]))
{gen}
```
Sequences follow the training layout: understanding `[BOS, IMG x M, text]`, generation
`[BOS, text, EOS, IMG x M]`. The model was trained to caption: a text after the image is a
prefix the answer continues, not a question (unless the run was chat-tuned).
See hydra_dist's docs/export.md.
""")
