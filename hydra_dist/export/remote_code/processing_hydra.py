"""HYDRA's processor (exported by hydra_dist; self-contained): the image processor and the
tokenizer together, building the sequences the model was trained on:
  understanding  processor(images=img, text="...")   -> [BOS, IMG x M, text]  (+ pixel_values)
  text           processor(text="...")               -> [BOS, text]
  generation     processor.image_prompt("...")       -> [BOS, text, EOS] (model.generate_image)
A chat template, where the tokenizer has one, renders messages first (apply_chat_template); an
{"type": "image"} entry becomes one image placeholder, expanded here to M image tokens."""
import torch
from transformers.processing_utils import ProcessorMixin


class HydraProcessor(ProcessorMixin):
    attributes = ["image_processor", "tokenizer"]
    image_processor_class = "AutoImageProcessor"
    tokenizer_class = "AutoTokenizer"

    def __init__(self, image_processor=None, tokenizer=None, num_image_tokens=1,
                 image_token="<|image|>", chat_template=None, **kwargs):
        self.num_image_tokens = num_image_tokens
        self.image_token = image_token
        super().__init__(image_processor, tokenizer, chat_template=chat_template)

    @property
    def image_token_id(self):
        return self.tokenizer.convert_tokens_to_ids(self.image_token)

    def _bos(self):
        tok = self.tokenizer
        return tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id

    def _encode(self, text):
        return self.tokenizer.encode(text, add_special_tokens=False) if text else []

    def __call__(self, images=None, text=None, return_tensors="pt", **kwargs):
        """One sample. With images: [BOS, IMG x M per image, text] (a text that already holds image
        placeholders, e.g. from apply_chat_template, keeps its own layout)."""
        if isinstance(text, (list, tuple)):
            if len(text) != 1:
                raise ValueError("HydraProcessor takes one sample at a time")
            text = text[0]
        if images is not None and not isinstance(images, (list, tuple)):
            images = [images]
        img = self.image_token_id
        M = self.num_image_tokens
        if text and self.image_token in text:
            ids = []
            for tid in self._encode(text):
                ids.extend([img] * M if tid == img else [tid])
            if ids[:1] != [self._bos()]:
                ids = [self._bos()] + ids
        else:
            ids = [self._bos()] + [img] * (M * len(images or [])) + self._encode(text)
        n_img = sum(1 for i in ids if i == img) // M
        if n_img != len(images or []):
            raise ValueError(f"{n_img} image placeholders in the text but {len(images or [])} images")
        out = {"input_ids": torch.tensor([ids]), "attention_mask": torch.ones(1, len(ids), dtype=torch.long)}
        if images:
            out["pixel_values"] = self.image_processor(images)["pixel_values"]
        return out

    def image_prompt(self, text):
        """input_ids [1, L] for model.generate_image: [BOS, text, EOS], as in training."""
        return torch.tensor([[self._bos()] + self._encode(text) + [self.tokenizer.eos_token_id]])

    def decode(self, ids, **kwargs):
        kwargs.setdefault("skip_special_tokens", True)
        return self.tokenizer.decode(ids, **kwargs)

    def postprocess(self, pixels):
        return self.image_processor.postprocess(pixels)
