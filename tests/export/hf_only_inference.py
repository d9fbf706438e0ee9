"""Run an export's three inference paths with only torch, transformers, safetensors and pillow:
an import guard refuses hydra_dist, deepspeed, megatron, streaming and mlflow (and anything
that would import them), so the export must stand on its own remote code.

  python hf_only_inference.py EXPORT IMAGE PROMPT OUT_DIR  -> OUT_DIR/result.json, OUT_DIR/hf.png
"""
import importlib.abc
import json
import sys

BLOCKED = ("hydra_dist", "deepspeed", "megatron", "streaming", "mlflow")


class Guard(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} imported in the transformers-only environment")
        return None


sys.meta_path.insert(0, Guard())


def main(export, image, prompt, out_dir):
    from pathlib import Path

    import torch
    from PIL import Image
    from transformers import AutoModelForCausalLM, AutoProcessor, AutoTokenizer
    model = AutoModelForCausalLM.from_pretrained(export, trust_remote_code=True, dtype=torch.float32)
    model.eval()
    proc = AutoProcessor.from_pretrained(export, trust_remote_code=True)
    tok = AutoTokenizer.from_pretrained(export, trust_remote_code=True)
    res = {"can_generate": model.can_generate(), "tokenizer_class": type(tok).__name__}
    # 1. text generation with a KV cache
    enc = tok(prompt, return_tensors="pt")
    out = model.generate(**enc, max_new_tokens=12, do_sample=False)
    res["text_ids"] = out[0, enc["input_ids"].shape[1]:].tolist()
    res["text"] = tok.decode(res["text_ids"], skip_special_tokens=True)
    # 2. image understanding (a caption: empty text after the image)
    inputs = proc(images=Image.open(image), text="")
    out = model.generate(**inputs, max_new_tokens=12, do_sample=False)
    res["answer_ids"] = out[0, inputs["input_ids"].shape[1]:].tolist()
    res["answer"] = proc.decode(res["answer_ids"])
    # the chat template renders the same understanding prompt
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": ""}]}]
    text = proc.tokenizer.apply_chat_template(msgs, tokenize=False)
    res["chat_ids_equal"] = proc(images=Image.open(image), text=text)["input_ids"].tolist() == \
        inputs["input_ids"].tolist()
    # 3. text -> image
    px = model.generate_image(proc.image_prompt(prompt), num_steps=2, decoder_steps=2, seed=0)
    proc.postprocess(px)[0].save(Path(out_dir) / "hf.png")
    res["modules"] = sorted({m.split(".")[0] for m in sys.modules} & set(BLOCKED))
    (Path(out_dir) / "result.json").write_text(json.dumps(res))


if __name__ == "__main__":
    main(*sys.argv[1:5])
