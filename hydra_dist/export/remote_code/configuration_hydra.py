"""HYDRA configuration for Hugging Face transformers (exported by hydra_dist; self-contained)."""
from transformers import PretrainedConfig, Qwen2Config

DEFAULT_VISION = {"image_size": 32, "patch_size": 4, "hidden_size": 64, "num_heads": 4,
                  "mlp_size": 256, "gen_layers": 2, "sem_layers": 2, "norm_eps": 1e-6,
                  "gsb": {"latent_channels": 16, "logvar_min": -30.0, "logvar_max": 20.0}}
DEFAULT_HEAD = {"merge": 2, "flow_head_layers": 2, "flow_head_hidden": 256, "time_embed_dim": 128,
                "latent_skip": False}


class HydraConfig(PretrainedConfig):
    """vision_config: HYDRA-TOK's ViT (Gen-ViT + Sem-ViT) with its GSB (`gsb`);
    language_config: a Qwen2 config dict; head_config: projector merge and flow head.
    part: "all" (the unified model) or "tokenizer" (patch, Gen-ViT, GSB, Sem-ViT only).
    decoder_config: the pixel flow decoder (None: the export carries none, no text -> image);
    image_generation: generate_image()'s defaults (num_steps, guidance_scale, decoder_steps);
    num_image_tokens: LLM positions per image ((image_size / patch_size / merge)^2)."""
    model_type = "hydra"

    def __init__(self, vision_config=None, language_config=None, head_config=None, part="all",
                 ntp_weight=1.0, fm_weight=1.0, time_sampling="logit_normal", time_shift=1.0,
                 decoder_config=None, image_generation=None, image_token_id=None,
                 num_image_tokens=None, **kwargs):
        self.vision_config = dict(vision_config or DEFAULT_VISION)
        self.language_config = dict(language_config or {})
        self.head_config = dict(head_config or DEFAULT_HEAD)
        self.part = part
        self.ntp_weight = ntp_weight
        self.fm_weight = fm_weight
        self.time_sampling = time_sampling
        self.time_shift = time_shift
        self.decoder_config = dict(decoder_config) if decoder_config else None
        self.image_generation = dict(image_generation or {"num_steps": 20, "guidance_scale": 3.0,
                                                          "decoder_steps": 20})
        self.image_token_id = image_token_id
        self.num_image_tokens = num_image_tokens
        kwargs.setdefault("tie_word_embeddings", False)  # the LLM's own tying is in language_config
        super().__init__(**kwargs)

    def get_text_config(self, *args, **kwargs):
        """The LLM's Qwen2Config: what generate() sizes its KV cache and vocabulary by."""
        if not self.language_config:
            return super().get_text_config(*args, **kwargs)
        return Qwen2Config(**self.language_config)
