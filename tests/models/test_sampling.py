"""KV-cache decoding equals full recomputation; the cached-prefix ODE velocity equals the
training forward's flow head on the same sequence."""
import pytest
import torch

from hydra_dist.config import load_config
from hydra_dist.data.synthetic import make_sample
from hydra_dist.data.tokenizer import ByteTokenizer
from hydra_dist.ops.attention import build_mask


@pytest.fixture(scope="module")
def model(single_process_mp):
    from hydra_dist.models.hydra import HydraModel
    torch.manual_seed(0)
    m = HydraModel(load_config(None, ["model.init_std=0.2"]).model)  # large init: non-trivial logits
    for p in m.flow_head.parameters():  # AdaLN-Zero starts at zero: give it something to say
        torch.nn.init.normal_(p, std=0.05)
    return m.eval()


def test_cached_decoding_equals_full_recompute(model):
    from hydra_dist.data.collate import image_to_tensor
    from hydra_dist.models.sampling import answer
    tok = ByteTokenizer()
    img = image_to_tensor(make_sample(0, 1, 32)[0], 32)
    text = answer(model, tok, img, prompt="a", max_new_tokens=6)
    # recompute greedily without a cache, from scratch at every step
    llm = model.llm
    vis = model.visual_tokens(model.encode_latent(img[None]))
    M = vis.shape[1]
    ids = [tok.BOS] + [tok.IMG] * M + tok.encode("a")
    out = []
    with torch.no_grad():
        for _ in range(6):
            L = len(ids)
            emb = llm.embed_tokens(torch.tensor([ids]))
            emb[:, 1:1 + M] = vis
            img_ids = torch.zeros(1, L, dtype=torch.long)
            img_ids[:, 1:1 + M] = 1
            h = llm(emb, build_mask(torch.ones(1, L, dtype=torch.long), img_ids), torch.arange(L)[None])
            nxt = int(llm.logits(h[:, -1:])[0, -1].argmax())
            if nxt == tok.EOS:
                break
            out.append(nxt)
            ids.append(nxt)
    assert text == tok.decode(out) and len(out) > 0


def test_prefix_cached_velocity_equals_training_forward(model):
    from hydra_dist.models.heads import merge_patches, unmerge_patches
    from hydra_dist.models.sampling import _prefix_cache, _velocity
    tok = ByteTokenizer()
    prompt = tok.encode("a red circle")
    ids = [tok.BOS] + prompt + [tok.EOS]
    x = torch.randn(1, 64, 16)
    t = 0.37
    with torch.no_grad():
        cache, L = _prefix_cache(model, ids)
        v_cached = _velocity(model, cache, L, x, t)
        v_again = _velocity(model, cache, L, x, t)   # the frozen cache did not grow
        # the training-time path: one full sequence with the mixed mask
        vis = model.visual_tokens(x)
        M = vis.shape[1]
        full = ids + [tok.IMG] * M
        emb = model.llm.embed_tokens(torch.tensor([full]))
        emb[:, L:] = vis
        img_ids = torch.zeros(1, len(full), dtype=torch.long)
        img_ids[:, L:] = 1
        h = model.llm(emb, build_mask(torch.ones(1, len(full), dtype=torch.long), img_ids),
                      torch.arange(len(full))[None])
        v_full = unmerge_patches(model.flow_head(h[:, L:], torch.full((1,), t), merge_patches(x, 2)),
                                 2, 16)
    torch.testing.assert_close(v_cached, v_full, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(v_again, v_cached)
    assert v_full.abs().max() > 0
