"""The one config schema. Each section is owned by the package that reads it.

Dataclass defaults are the tiny CPU run, so `hydra-pretrain` with no file trains
something real. No torch import here: configs are validated before any process
group starts.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Literal, Optional

from .tokenizer_schema import TokenizerConfig, check_tokenizer


# The model's trainable parts, the unit of freezing and per-group learning rates.
PARTS = ("gen_vit", "gsb", "sem_vit", "projector", "llm", "flow_head")


@dataclass
class ViTConfig:
    """HYDRA-TOK backbone: one pure ViT split into Gen-ViT and Sem-ViT."""
    image_size: int = 32
    patch_size: int = 4
    hidden_size: int = 64
    num_heads: int = 4
    mlp_size: int = 256
    gen_layers: int = 2
    sem_layers: int = 2
    norm_eps: float = 1e-6
    # Block details, so imported checkpoints (InternViT) run exactly; defaults keep our plain block.
    norm_type: Literal["layer_norm", "rms_norm"] = "layer_norm"
    qkv_bias: bool = True
    qk_norm: bool = False          # RMSNorm over the full q / k width (InternViT-6B style)
    layer_scale_init: float = 0.0  # > 0: learned per-channel residual scales (lambda_1, lambda_2)
    use_cls_token: bool = False    # a CLS token in front of the patches (InternViT); Sem-ViT gets its own
    # What the patch embedding sees: "unit" = pixels in [-1, 1]; "imagenet" = (pixels in [0, 1]
    # - ImageNet mean) / std per channel, the input InternViT was trained on (InternVL's
    # preprocessing). "auto" is resolved by load_config (config/pixel_norm.py): imagenet when
    # the config loads InternViT weights, else the value of the run its vision tower comes
    # from, else unit. The same formula runs in training, eval, generation and the export.
    pixel_norm: Literal["auto", "unit", "imagenet"] = "auto"


@dataclass
class GSBConfig:
    """Generation-Semantic Bottleneck (docs/design.md)."""
    latent_channels: int = 16
    logvar_min: float = -30.0
    logvar_max: float = 20.0
    kl_weight: float = 1e-4
    cos_weight: float = 1.0
    # Which implementation of the fused GSB ops runs: see docs/kernels.md.
    kernel: Literal["auto", "fused", "reference"] = "auto"


@dataclass
class LLMConfig:
    """Qwen2.5-architecture decoder."""
    vocab_size: int = 384
    hidden_size: int = 128
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    ffn_size: int = 384
    rope_theta: float = 1e6
    rms_norm_eps: float = 1e-6
    max_position_embeddings: int = 4096
    tie_word_embeddings: bool = False


@dataclass
class HeadConfig:
    """Projector (LLM input) and flow head (LLM output, AdaLN-Zero)."""
    merge: int = 2               # merge x merge patches -> one LLM token
    flow_head_layers: int = 2
    flow_head_hidden: int = 256
    time_embed_dim: int = 128
    # Optional, off as in the paper: the flow head also reads the noisy latent x_t it denoises
    # (a linear skip, merged like the visual tokens), so it need not rebuild the noise part of
    # eps - mu through Sem-ViT, the projector's LayerNorm and the LLM. Measured on the tiny
    # shapes run (docs/model.md): FM loss 0.8 instead of 1.6, generated backgrounds equally right,
    # but the shared model learns less understanding (foreground colour 0.16 instead of 0.41).
    latent_skip: bool = False


@dataclass
class ModelConfig:
    vit: ViTConfig = field(default_factory=ViTConfig)
    gsb: GSBConfig = field(default_factory=GSBConfig)
    llm: LLMConfig = field(default_factory=LLMConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    # Our choice where the paper is silent: Gen-ViT and GSB are frozen in the unified stages.
    freeze: List[str] = field(default_factory=lambda: ["gen_vit", "gsb"])
    ntp_weight: float = 1.0
    fm_weight: float = 1.0
    # Rectified-flow time sampling for generation samples.
    time_sampling: Literal["uniform", "logit_normal"] = "logit_normal"
    # Shift of t towards noise, t -> s t / (1 + (s - 1) t) (SD3's resolution shift; logit(t)
    # moves by log s), in training and in the sampler's schedule. 1 = none. Redundant latents
    # (large images, flat synthetic shapes) reveal the image at high t already, so the prompt
    # matters only close to t = 1; a shift puts the training there.
    time_shift: float = 1.0
    init_std: float = 0.02
    # LLM attention: flash-attn varlen (GPU), its CPU emulation (tests), or the dense-mask
    # reference; auto = flash when installed on CUDA, else reference (the log says which).
    attention: Literal["auto", "flash", "emulated", "reference"] = "auto"
    # Initial weights for a fresh run: hydra-import-hf file, export or HF Qwen2 folder (docs/export.md).
    init_from: str = ""
    # A HYDRA-TOK tokenizer.pt (or its run folder): patch, Gen-ViT, GSB and Sem-ViT start from it.
    tokenizer_from: str = ""


@dataclass
class DeepSpeedTuning:
    """ZeRO communication settings; the defaults derive them from the model and the layout
    (rule: hydra_dist/parallel/ds_tuning.py, docs/performance.md). Set a value to pin it."""
    overlap_comm: Literal["auto", "always", "never"] = "auto"
    bucket_elements: int = 0          # reduce / allgather bucket (ZeRO 1-3); 0 = derived
    prefetch_elements: int = 0        # ZeRO-3 stage3_prefetch_bucket_size; 0 = derived
    persistence_threshold: int = -1   # ZeRO-3 stage3_param_persistence_threshold; -1 = derived


@dataclass
class ParallelConfig:
    # deepspeed: DP x TP with ZeRO 0-3; megatron: DP x TP x PP with megatron-core's pipeline
    # schedules (docs/parallelism.md).
    engine: Literal["deepspeed", "megatron"] = "deepspeed"
    tp: int = 1
    pp: int = 1
    # Model chunks per pipeline rank (megatron engine): > 1 selects the interleaved schedule.
    virtual_pp: int = 1
    zero_stage: int = 3
    micro_batch_size: int = 4
    # Micro-batches per optimizer step. With train.global_batch > 0 it is derived (leave it
    # unset); with train.global_batch = 0 it is taken as given (tiny and test configs).
    grad_accum: int = 1
    precision: Literal["fp32", "bf16"] = "fp32"
    activation_checkpointing: bool = False
    # Collectives that take longer than this fail with a message instead of hanging.
    timeout_s: int = 600
    backend: Literal["auto", "nccl", "gloo"] = "auto"
    deepspeed: DeepSpeedTuning = field(default_factory=DeepSpeedTuning)


@dataclass
class SyntheticDataConfig:
    """Shapes-and-colours image-caption set written as MDS by the project itself."""
    num_samples: int = 2048
    seed: int = 1234


SOURCE_TASKS = ("auto", "caption", "generation", "text", "instruct")


@dataclass
class SourceConfig:
    """One MDS source of a stage mixture (docs/data.md). Each source feeds one task; the same
    image-caption folder may appear twice (once as caption, once as generation)."""
    # Local MDS folder, or a remote URI (s3://, gs://, ...) whose shards are cached under
    # data.cache_dir.
    path: str = ""
    # Optional explicit remote (a URI or a local folder): shards are copied from it into `path`
    # (or into data.cache_dir when `path` is empty).
    remote: str = ""
    # caption | generation | text | instruct (LLaVA conversations) | auto (image rows split by
    # data.generation_fraction, rows without image -> text).
    task: Literal["auto", "caption", "generation", "text", "instruct"] = "auto"
    # Relative weight in the mixture (normalised over sources); 0 on every source: natural sizes.
    proportion: float = 0.0
    # Name in metrics (error counts); default "<folder name>/<task>".
    name: str = ""


@dataclass
class DataConfig:
    # MDS folder (or remote URI); empty means: generate the synthetic set into the run folder.
    # Ignored when `sources` is set.
    path: str = ""
    # Stage mixture: one entry per stream (docs/data.md); empty: the single `path` above.
    sources: List[SourceConfig] = field(default_factory=list)
    # Shard cache for remote sources (empty: <tmp>/hydra_mds_cache).
    cache_dir: str = ""
    # Samples per epoch over all sources (0: sum of the sources' sizes).
    epoch_size: int = 0
    synthetic: SyntheticDataConfig = field(default_factory=SyntheticDataConfig)
    tokenizer: str = "byte"      # "byte" or a local Hugging Face tokenizer folder
    max_text_tokens: int = 48
    # Share of generation samples (image from caption) among `auto` image rows.
    generation_fraction: float = 0.5
    # Pack samples into rows of this many tokens (0: one sample per row, fixed length).
    pack_tokens: int = 0
    # Share of generation samples whose prompt is dropped (classifier-free guidance).
    cfg_dropout: float = 0.1
    shuffle: bool = True
    seed: int = 17
    # Loader off the critical path (docs/data.md): decode/resize in worker processes, each
    # keeping prefetch_factor micro-batches ready; pinned host memory so the trainer's
    # non_blocking device copy really is asynchronous (CUDA only; ignored on CPU).
    num_workers: int = 0
    pin_memory: bool = False
    prefetch_factor: int = 2


def check_data(d: DataConfig) -> list[tuple[str, str]]:
    errs: list[tuple[str, str]] = []
    if not 0.0 <= d.generation_fraction <= 1.0:
        errs.append(("data.generation_fraction", f"{d.generation_fraction} is not within [0, 1]"))
    if d.max_text_tokens < 4:
        errs.append(("data.max_text_tokens", "must be >= 4"))
    if d.epoch_size < 0:
        errs.append(("data.epoch_size", "must be >= 0"))
    if d.num_workers < 0:
        errs.append(("data.num_workers", "must be >= 0"))
    if d.prefetch_factor < 1:
        errs.append(("data.prefetch_factor", "must be >= 1"))
    weighted = [s.proportion > 0 for s in d.sources]
    for i, s in enumerate(d.sources):
        key = f"data.sources[{i}]"
        if not s.path and not s.remote:
            errs.append((f"{key}.path", "a source needs a path or a remote"))
        if s.proportion < 0:
            errs.append((f"{key}.proportion", f"{s.proportion} is negative"))
        elif any(weighted) and not weighted[i]:
            errs.append((f"{key}.proportion", "set a proportion on every source or on none"))
    names = [s.name for s in d.sources if s.name]
    for n in sorted({n for n in names if names.count(n) > 1}):
        errs.append(("data.sources", f"source name {n!r} is used twice"))
    return errs


@dataclass
class OptimConfig:
    lr: float = 1e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 5
    weight_decay: float = 0.01
    betas: List[float] = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1e-8
    grad_clip: float = 1.0
    # Learning rate per model part (gen_vit, gsb, sem_vit, projector, llm, flow_head); parts not
    # listed use `lr`. The schedule scales every group by the same factor.
    lr_per_part: Dict[str, float] = field(default_factory=dict)


@dataclass
class TrainConfig:
    steps: int = 200
    # Samples per optimizer step (the paper's batch: 1024 unified, 256 tokenizer). > 0:
    # parallel.grad_accum = global_batch / (micro_batch_size * dp), dp = world / (tp * pp), a
    # remainder is a config error; 0: global batch = micro_batch_size * grad_accum * dp.
    global_batch: int = 0
    seed: int = 42
    log_every: int = 1
    # Peak TFLOPs per device for the logged MFU (0: H100/H200 table on GPU, measured on CPU).
    peak_tflops: float = 0.0
    # Save and exit at this step though train.steps is larger (0 = off): time-sliced jobs, tests.
    stop_at_step: int = 0
    # Generated-sample grids to MLflow every N steps and at the end (needs model.tokenizer_from
    # for the pixel decoder; 0 = off).
    eval_every: int = 100
    # A step whose loss is NaN/Inf on any rank is skipped; this many in a row save and stop.
    max_skipped_in_row: int = 5
    # Fault injection for tests: these steps (1-based) get a NaN loss.
    inject_nan_at_steps: List[int] = field(default_factory=list)
    optim: OptimConfig = field(default_factory=OptimConfig)


@dataclass
class CheckpointConfig:
    every: int = 50
    keep_last: int = 2
    resume: bool = True
    # Seconds a scheduler leaves between its preemption signal and the kill (SLURM:
    # --signal=B:USR1@N, 300 in slurm/*.sh). A step plus a save longer than this is warned
    # about at the first save (train/preemption.py). 0: not checked.
    grace_s: float = 300.0


@dataclass
class TrackingConfig:
    enabled: bool = True
    experiment: str = "hydra-tiny"
    run_name: str = ""
    # Empty: MLFLOW_TRACKING_URI if set, else an SQLite store in the run folder.
    uri: str = ""


@dataclass
class RunConfig:
    # unified: the HYDRA model (LLM + heads); tokenizer: HYDRA-TOK pretraining (docs/design.md)
    task: Literal["unified", "tokenizer"] = "unified"
    name: str = "tiny_cpu"
    output_dir: str = "runs/tiny_cpu"
    model: ModelConfig = field(default_factory=ModelConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)


def check_values(cfg: RunConfig) -> list[tuple[str, str]]:
    """Impossible values as (key path, reason). Layout checks that need the world size live
    in `check_layout`."""
    errs: list[tuple[str, str]] = []
    m, v, llm = cfg.model, cfg.model.vit, cfg.model.llm

    def need(ok: bool, key: str, why: str) -> None:
        if not ok:
            errs.append((key, why))

    need(v.image_size % v.patch_size == 0, "model.vit.image_size",
         f"{v.image_size} is not a multiple of model.vit.patch_size={v.patch_size}")
    grid = v.image_size // max(v.patch_size, 1)
    need(grid % m.head.merge == 0, "model.head.merge",
         f"patch grid {grid}x{grid} is not divisible by merge={m.head.merge}")
    need(v.hidden_size % v.num_heads == 0, "model.vit.num_heads",
         f"hidden_size {v.hidden_size} is not divisible by {v.num_heads} heads")
    need(llm.hidden_size % llm.num_heads == 0, "model.llm.num_heads",
         f"hidden_size {llm.hidden_size} is not divisible by {llm.num_heads} heads")
    need(llm.num_heads % llm.num_kv_heads == 0, "model.llm.num_kv_heads",
         f"{llm.num_heads} query heads are not a multiple of {llm.num_kv_heads} KV heads")
    need(llm.vocab_size >= 260, "model.llm.vocab_size",
         "must be at least 260 (the byte tokenizer's 256 bytes + 4 specials)")
    need(m.gsb.latent_channels > 0, "model.gsb.latent_channels", "must be positive")
    need(m.time_shift > 0, "model.time_shift", f"{m.time_shift} is not positive")
    for name in m.freeze:
        need(name in PARTS, "model.freeze", f"unknown part {name!r} (known: {', '.join(PARTS)})")
    p = cfg.parallel
    need(p.tp >= 1, "parallel.tp", "must be >= 1")
    need(p.pp >= 1, "parallel.pp", "must be >= 1")
    need(p.zero_stage in (0, 1, 2, 3), "parallel.zero_stage", f"{p.zero_stage} is not 0, 1, 2 or 3")
    need(p.micro_batch_size >= 1, "parallel.micro_batch_size", "must be >= 1")
    need(p.grad_accum >= 1, "parallel.grad_accum", "must be >= 1")
    need(p.timeout_s > 0, "parallel.timeout_s", "must be positive")
    errs += check_data(cfg.data)
    o = cfg.train.optim
    need(o.lr > 0, "train.optim.lr", "must be positive")
    for part, lr in o.lr_per_part.items():
        need(part in PARTS, f"train.optim.lr_per_part.{part}", f"unknown part (known: {', '.join(PARTS)})")
        need(lr > 0, f"train.optim.lr_per_part.{part}", "must be positive")
    need(len(o.betas) == 2, "train.optim.betas", f"needs 2 values, got {len(o.betas)}")
    need(cfg.train.steps >= 1, "train.steps", "must be >= 1")
    need(cfg.checkpoint.every >= 1, "checkpoint.every", "must be >= 1")
    need(cfg.checkpoint.keep_last >= 1, "checkpoint.keep_last", "must be >= 1")
    return errs + (check_tokenizer(cfg) if cfg.task == "tokenizer" else [])


def derive_grad_accum(global_batch: int, micro: int, dp: int) -> tuple[int, str]:
    """(grad_accum, "") for a global batch of samples, or (0, why it does not divide)."""
    per_micro = micro * dp
    if global_batch % per_micro:
        return 0, (f"{global_batch} samples per step do not divide into micro-batches of "
                   f"micro_batch_size {micro} x dp {dp} = {per_micro} samples")
    return global_batch // per_micro, ""


def resolve_global_batch(cfg: RunConfig, world_size: int) -> list[tuple[str, str]]:
    """Sets parallel.grad_accum from train.global_batch for this world size (no-op when
    train.global_batch = 0). An explicit grad_accum (anything but 1) must match the derived one:
    one batch size, stated once."""
    p, gb = cfg.parallel, cfg.train.global_batch
    if gb < 0:
        return [("train.global_batch", f"{gb} is negative")]
    if gb == 0 or world_size % (p.tp * p.pp):
        return []   # the layout error itself comes from check_layout
    dp = world_size // (p.tp * p.pp)
    ga, why = derive_grad_accum(gb, p.micro_batch_size, dp)
    if not ga:
        return [("train.global_batch", f"{why} (world size {world_size}, tp {p.tp}, pp {p.pp})")]
    if p.grad_accum not in (1, ga):
        return [("parallel.grad_accum", f"{p.grad_accum} contradicts train.global_batch={gb}, "
                 f"which gives {ga} at world size {world_size} (micro_batch_size "
                 f"{p.micro_batch_size} x dp {dp}); set only train.global_batch")]
    p.grad_accum = ga
    return []


def check_layout(cfg: RunConfig, world_size: int) -> list[tuple[str, str]]:
    """Layout errors for a given world size, found before any process group starts (derives
    parallel.grad_accum from train.global_batch first)."""
    p, errs = cfg.parallel, resolve_global_batch(cfg, world_size)
    if world_size % (p.tp * p.pp) != 0:
        errs.append(("parallel.tp", f"world size {world_size} is not divisible by "
                     f"tp*pp = {p.tp}*{p.pp}"))
    if p.engine == "deepspeed" and p.pp != 1:
        errs.append(("parallel.pp", "the deepspeed engine runs ZeRO over DP x TP only; "
                     "DeepSpeed refuses ZeRO-2/3 with pipeline parallelism (use pp=1)"))
    errs += _check_megatron_layout(cfg)
    if cfg.model.attention == "flash" and p.precision == "fp32":
        errs.append(("model.attention", "flash-attn computes in bf16/fp16 only; with "
                     "parallel.precision=fp32 use model.attention=auto (the reference path)"))
    llm = cfg.model.llm
    for key, n in (("model.llm.num_heads", llm.num_heads), ("model.llm.num_kv_heads", llm.num_kv_heads),
                   ("model.vit.num_heads", cfg.model.vit.num_heads)):
        if n % p.tp:
            errs.append((key, f"{n} heads are not divisible by parallel.tp={p.tp}"))
    if llm.vocab_size % p.tp:
        errs.append(("model.llm.vocab_size", f"{llm.vocab_size} is not divisible by parallel.tp={p.tp}"))
    return errs


def _check_megatron_layout(cfg: RunConfig) -> list[tuple[str, str]]:
    """What the megatron engine's pipeline needs (docs/parallelism.md)."""
    p, errs = cfg.parallel, []
    if p.virtual_pp < 1:
        errs.append(("parallel.virtual_pp", "must be >= 1"))
    if p.engine != "megatron":
        if p.virtual_pp != 1:
            errs.append(("parallel.virtual_pp", "virtual pipeline stages need parallel.engine=megatron"))
        if p.precision == "bf16" and p.zero_stage == 0:
            # DeepSpeed keeps fp32 master weights and fp32 gradient accumulation only inside a
            # ZeRO optimizer: without one its engine stops at start ("unsupported mix of
            # model_dtype=torch.bfloat16 and grad_accum_dtype=torch.float32")
            errs.append(("parallel.zero_stage", "0 with parallel.precision=bf16: DeepSpeed has "
                         "no fp32 master weights or fp32 gradient accumulation without ZeRO; use "
                         "parallel.zero_stage=1 (fp32 masters sharded over DP, weights and "
                         "gradients whole as in ZeRO-0) or parallel.engine=megatron"))
        return errs
    if p.zero_stage != 0:
        errs.append(("parallel.zero_stage", "the megatron engine does its own DP gradient "
                     "all-reduce (no ZeRO); set parallel.zero_stage=0"))
    if cfg.task == "tokenizer":
        return errs + _check_megatron_tokenizer(cfg)
    chunks = p.pp * max(p.virtual_pp, 1)
    if cfg.model.llm.num_layers % chunks:
        errs.append(("model.llm.num_layers", f"{cfg.model.llm.num_layers} layers do not split "
                     f"evenly into pp*virtual_pp = {chunks} pipeline chunks"))
    if p.pp > 1:
        # 1F1B keeps every stage busy only once pp micro-batches are in flight; fewer leave a
        # stage idle for the whole step (and megatron's interleaved schedule refuses them).
        if p.grad_accum < p.pp:
            errs.append(("parallel.grad_accum", f"{p.grad_accum} micro-batches per step are fewer "
                         f"than the {p.pp} pipeline stages; use grad_accum >= pp (4*pp or more "
                         "keeps the pipeline bubble small)"))
        if p.virtual_pp > 1 and p.grad_accum % p.pp:
            errs.append(("parallel.grad_accum", f"the interleaved schedule needs grad_accum "
                         f"divisible by pp={p.pp}"))
        if cfg.data.pack_tokens:
            errs.append(("data.pack_tokens", "pipeline stages exchange fixed-shape tensors: "
                         "use data.pack_tokens=0 (one sample per row) with pp > 1"))
        if cfg.model.llm.tie_word_embeddings:
            errs.append(("model.llm.tie_word_embeddings", "tied embeddings would live on the "
                         "first and the last stage; not supported with pp > 1"))
    if p.virtual_pp > 1 and p.pp == 1:
        errs.append(("parallel.virtual_pp", "virtual pipeline stages need parallel.pp > 1"))
    return errs


def _check_megatron_tokenizer(cfg: RunConfig) -> list[tuple[str, str]]:
    """HYDRA-TOK on the megatron engine (models/tokenizer/pipeline_stage.py): the stage-1
    objective (FM + reg + distillation) over pp, tp = 1, fp32 or bf16 (docs/parallelism.md)."""
    p, t, errs = cfg.parallel, cfg.tokenizer, []
    if p.tp != 1:
        errs.append(("parallel.tp", "HYDRA-TOK on the megatron engine runs tp=1 only so far "
                     "(use parallel.engine=deepspeed for TP)"))
    if p.virtual_pp != 1:
        errs.append(("parallel.virtual_pp", "HYDRA-TOK's pipeline has one stage per rank "
                     "(interleaving is not wired); use virtual_pp=1"))
    if t.decoder.num_layers % p.pp:
        errs.append(("tokenizer.decoder.num_layers", f"{t.decoder.num_layers} decoder blocks do "
                     f"not split evenly over parallel.pp={p.pp} stages"))
    if p.pp > 1 and p.grad_accum < p.pp:
        errs.append(("parallel.grad_accum", f"{p.grad_accum} micro-batches per step are fewer "
                     f"than the {p.pp} pipeline stages; use grad_accum >= pp"))
    # LPIPS and the GAN read x0_pred on the last stage but carry networks and (GAN) an optimizer
    # of their own: not wired into the pipeline stages yet.
    for key, val in (("lpips", t.weights.lpips), ("gan", t.weights.gan)):
        if val > 0:
            errs.append((f"tokenizer.weights.{key}", f"{val} > 0 is not supported with "
                         "parallel.engine=megatron (use the deepspeed engine, or 0)"))
    return errs
