"""HYDRA's byte tokenizer as a transformers tokenizer (exported by hydra_dist; self-contained).

Ids 0-255 are the UTF-8 bytes of the text, then four specials: <|pad|> 256, <|bos|> 257,
<|eos|> 258, <|image|> 259 (one image position). Encoding a text gives [BOS] + its bytes, the
prefix every training sequence starts with. A special token written in the text ("<|eos|>") is
that special (transformers splits specials first); hydra_dist's trainer saw such text as bytes.
"""
from transformers import PreTrainedTokenizer

SPECIALS = {"<|pad|>": 256, "<|bos|>": 257, "<|eos|>": 258, "<|image|>": 259}


def byte_token(b):
    return f"<0x{b:02X}>"


class HydraByteTokenizer(PreTrainedTokenizer):
    model_input_names = ["input_ids", "attention_mask"]

    def __init__(self, bos_token="<|bos|>", eos_token="<|eos|>", pad_token="<|pad|>",
                 image_token="<|image|>", add_bos_token=True, **kwargs):
        self.add_bos_token = add_bos_token
        self.image_token = image_token
        self._vocab = {byte_token(b): b for b in range(256)}
        self._vocab.update(SPECIALS)
        self._inv = {i: t for t, i in self._vocab.items()}
        kwargs.setdefault("additional_special_tokens", [image_token])
        super().__init__(bos_token=bos_token, eos_token=eos_token, pad_token=pad_token, **kwargs)

    @property
    def vocab_size(self):
        return len(self._vocab)

    @property
    def image_token_id(self):
        return SPECIALS[self.image_token]

    def get_vocab(self):
        return dict(self._vocab)

    def _tokenize(self, text, **kwargs):
        return [byte_token(b) for b in text.encode("utf-8")]

    def _convert_token_to_id(self, token):
        return self._vocab[token]

    def _convert_id_to_token(self, index):
        # rows past 259 exist only as vocabulary padding (never a training target): no text
        return self._inv.get(int(index), "")

    def convert_tokens_to_string(self, tokens):
        out, text = bytearray(), []
        for t in tokens:
            if not t:
                continue
            if t in SPECIALS:
                text.append(out.decode("utf-8", errors="replace") + t)
                out = bytearray()
            else:
                out.append(self._vocab[t])
        return "".join(text) + out.decode("utf-8", errors="replace")

    def build_inputs_with_special_tokens(self, token_ids_0, token_ids_1=None):
        bos = [self.bos_token_id] if self.add_bos_token else []
        return bos + token_ids_0 + ([] if token_ids_1 is None else token_ids_1)

    def get_special_tokens_mask(self, token_ids_0, token_ids_1=None, already_has_special_tokens=False):
        if already_has_special_tokens:
            return [int(i >= 256) for i in token_ids_0]
        return [1] * int(self.add_bos_token) + [0] * (len(token_ids_0) + len(token_ids_1 or []))

    def save_vocabulary(self, save_directory, filename_prefix=None):
        return ()   # the vocabulary is the byte table above: no file to write
