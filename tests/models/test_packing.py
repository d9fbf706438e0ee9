"""Packing changes nothing: the same samples packed into long rows or one per row give the
same losses and gradients; text-only batches still run the vision path."""
import pytest
import torch

from hydra_dist.config import load_config
from hydra_dist.data.collate import HydraCollator
from hydra_dist.data.synthetic import make_sample
from hydra_dist.data.tokenizer import ByteTokenizer


def samples(n, with_text=True):
    out = []
    for i in range(n):
        img, cap, _ = make_sample(i, 5, 32)
        out.append({"id": i, "image": img, "caption": cap})
    if with_text:
        out.append({"id": 1000, "image": None, "text": "plain text without any image here"})
        out.insert(1, {"id": 1001, "image": None, "text": "another text sample"})
    return out


def collator(pack):
    return HydraCollator(ByteTokenizer(), 32, 16, 48, 0.5, seed=2, pack_tokens=pack, cfg_dropout=0.0)


@pytest.fixture(scope="module")
def model(single_process_mp):
    from hydra_dist.models.hydra import HydraModel
    cfg = load_config(None, ["model.freeze=[gen_vit]"])
    torch.manual_seed(0)
    return HydraModel(cfg.model)


def loss_and_grads(model, batch):
    model.zero_grad(set_to_none=True)
    out = model(batch, noise_seed=9)
    out["loss"].backward()
    return out, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_packed_rows_layout():
    b = collator(200)(samples(6))
    assert b["input_ids"].shape[1] == 200 and b["input_ids"].shape[0] < 8
    assert b["images"].shape[0] == 6
    for i in range(6):  # image tokens sit where visual_index says
        assert (b["input_ids"].reshape(-1)[b["visual_index"][i]] == ByteTokenizer.IMG).all()
    # positions restart at each sample
    row = b["position_ids"][0]
    seg = b["segment_ids"][0]
    starts = [j for j in range(1, 200) if seg[j] != seg[j - 1] and seg[j] > 0]
    assert starts and all(row[j] == 0 for j in starts)


def test_packing_gives_same_losses_and_grads(model):
    data = samples(6)
    out_a, g_a = loss_and_grads(model, collator(0)(data))
    out_b, g_b = loss_and_grads(model, collator(230)(data))
    for k in ("ntp", "fm", "loss"):
        assert out_a[k].item() == pytest.approx(out_b[k].item(), rel=1e-5)
    assert g_a.keys() == g_b.keys()
    for n in g_a:
        torch.testing.assert_close(g_a[n], g_b[n], rtol=1e-4, atol=1e-6, msg=n)


def test_text_only_batch_runs_vision_path_with_zero_weight(model):
    text_only = [s for s in samples(0)]
    b = collator(0)(text_only)
    assert b["image_weight"].tolist() == [0.0] and (b["visual_index"] == -1).all()
    out, grads = loss_and_grads(model, b)
    assert out["fm"].item() == 0.0 and out["ntp"].item() > 0
    # the vision tower took part in backward (zero gradients, but present)
    sem = [g for n, g in grads.items() if n.startswith("sem_vit.")]
    assert sem and all(float(g.abs().max()) == 0.0 for g in sem)


def test_model_on_varlen_planner_equals_reference(model):
    from hydra_dist.ops.attention import resolve_attention
    with pytest.raises(RuntimeError, match="flash-attn is not installed"):
        resolve_attention("flash")
    # flash-attn takes bf16/fp16 only: auto under fp32 is the reference path, whatever is installed
    assert resolve_attention("auto", torch.float32) == "reference"
    b = collator(230)(samples(6))
    out_ref, g_ref = loss_and_grads(model, b)
    saved = model.cfg.attention
    model.cfg.attention = "emulated"
    try:
        out_fast, g_fast = loss_and_grads(model, b)
    finally:
        model.cfg.attention = saved
    assert out_fast["loss"].item() == pytest.approx(out_ref["loss"].item(), rel=1e-5)
    for n in g_ref:
        torch.testing.assert_close(g_fast[n], g_ref[n], rtol=1e-4, atol=1e-6, msg=n)


def test_stage2_every_trainable_parameter_gets_a_gradient(single_process_mp):
    from hydra_dist.models.hydra import HydraModel
    cfg = load_config("configs/unified/tiny_stage2_pretrain.yaml")
    torch.manual_seed(1)
    m = HydraModel(cfg.model)
    for p in m.flow_head.parameters():  # AdaLN-Zero's zero init would give exact-zero grads upstream
        torch.nn.init.normal_(p, std=0.02)
    out = m(collator(230)(samples(6)), noise_seed=3)
    out["loss"].backward()
    for n, p in m.named_parameters():
        frozen = n.startswith(("patch.", "gen_vit.", "gsb."))
        if frozen:
            assert p.grad is None, n
        else:
            assert p.grad is not None and p.grad.abs().sum() > 0, n


def test_auto_attention_never_picks_flash_under_fp32(monkeypatch):
    """As on a GPU node with flash-attn installed: auto picks flash for a bf16 model only, and
    an explicit flash under fp32 is refused with the keys to change."""
    from hydra_dist.ops import attention
    monkeypatch.setattr(attention, "flash_available", lambda: True)
    assert attention.resolve_attention("auto", torch.bfloat16) == "flash"
    assert attention.resolve_attention("auto", torch.float16) == "flash"
    assert attention.resolve_attention("auto", torch.float32) == "reference"
    with pytest.raises(RuntimeError, match="parallel.precision=bf16 or model.attention=auto"):
        attention.resolve_attention("flash", torch.float32)
