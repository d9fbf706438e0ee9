"""The LM head and cross-entropy run on labelled positions only (models/llm.py ntp_loss): the
same loss and the same gradients (hidden states, head or tied embedding) as the full head over
every position with unlabelled ones masked out, untied and tied, fp32 and bf16; a micro-batch
without any label gives 0 and still reaches the head in the graph."""
import pytest
import torch

from hydra_dist.config import load_config


def _full_head_loss(h, labels, logits_fn, den):
    """The former formula: logits and fp32 cross-entropy at every position, masked."""
    from megatron.core import tensor_parallel
    valid = labels >= 0
    per_tok = tensor_parallel.vocab_parallel_cross_entropy(logits_fn(h).float(), labels.clamp(min=0))
    return (per_tok * valid).sum() / den


@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_labelled_positions_head_equals_full_head(tied, dtype, megatron_tp1):
    from hydra_dist.models.layers import mp_config
    from hydra_dist.models.llm import QwenLM, label_index, ntp_loss
    c = load_config("configs/tiny_cpu.yaml", [f"model.llm.tie_word_embeddings={str(tied).lower()}"]).model.llm
    torch.manual_seed(0)
    lm = QwenLM(mp_config(), c, 0.02).to(dtype)
    B, S = 3, 40
    labels = torch.randint(0, c.vocab_size, (B, S))
    labels[torch.rand(B, S) < 0.7] = -100          # most positions carry no label, as in training
    labels[1] = -100                              # a row without labels (a generation sample)
    h0 = torch.randn(B, S, c.hidden_size).to(dtype)
    den = 17.0                                    # the global denominator the task hands over
    results = []
    for run in ("full", "labelled"):
        lm.zero_grad(set_to_none=True)
        h = h0.clone().requires_grad_(True)
        if run == "full":
            loss = _full_head_loss(h, labels, lm.logits, den)
        else:
            loss, n = ntp_loss(h, labels, lm.logits, den, label_index(labels))
            assert int(n) == int((labels >= 0).sum())
        loss.backward()
        head = lm.embed.weight if tied else lm.lm_head.weight
        results.append((loss.detach().float(), h.grad.float(), head.grad.float()))
    (lf, hf, wf), (ll, hl, wl) = results
    tol = {"rtol": 1e-5, "atol": 1e-6} if dtype == torch.float32 else {"rtol": 2e-2, "atol": 2e-3}
    torch.testing.assert_close(ll, lf, **tol)
    torch.testing.assert_close(hl, hf, **tol)
    torch.testing.assert_close(wl, wf, **tol)
    assert hl[1].abs().max() == 0                  # unlabelled rows get no gradient either way
    assert ll > 0


def test_no_label_micro_batch_gives_zero_and_keeps_the_head_in_the_graph(megatron_tp1):
    from hydra_dist.models.layers import mp_config
    from hydra_dist.models.llm import QwenLM, ntp_loss
    c = load_config("configs/tiny_cpu.yaml", []).model.llm
    lm = QwenLM(mp_config(), c, 0.02)
    h = torch.randn(2, 8, c.hidden_size, requires_grad=True)
    loss, n = ntp_loss(h, torch.full((2, 8), -100), lm.logits, None)
    loss.backward()
    assert float(loss.detach()) == 0.0 and int(n) == 0
    assert lm.lm_head.weight.grad is not None and lm.lm_head.weight.grad.abs().max() == 0
