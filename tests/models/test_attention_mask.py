"""The mixed mask: text causal, image tokens bidirectional within their image, no
cross-sample attention in packed rows, padding isolated."""
import torch

from hydra_dist.ops.attention import attention, build_mask


def test_mask_semantics():
    # one row: sample 1 = [t t I I t], sample 2 = [t I I], then 2 pads
    seg = torch.tensor([[1, 1, 1, 1, 1, 2, 2, 2, 0, 0]])
    img = torch.tensor([[0, 0, 1, 1, 0, 0, 2, 2, 0, 0]])
    m = build_mask(seg, img)[0, 0]
    assert m[2, 3] and m[3, 2]                # image tokens see each other
    assert not m[1, 2] and m[2, 1]            # text before the image cannot see it; image sees text
    assert m[4, 3] and not m[3, 4]            # text after sees the image; image not the later text
    assert not m[5, 4] and not m[6, 0]        # no attention across samples
    assert m[6, 7] and m[7, 6] and m[6, 5]
    assert m[8, 8] and not m[8, 7] and not m[5, 8]  # padding sees only itself, nobody sees it


def test_attention_equals_per_sample_computation():
    torch.manual_seed(0)
    seg = torch.tensor([[1, 1, 1, 2, 2, 2, 2, 0]])
    img = torch.tensor([[0, 1, 1, 0, 0, 2, 2, 0]])
    q, k, v = (torch.randn(1, 2, 8, 4) for _ in range(3))
    out = attention(q, k, v, build_mask(seg, img))
    # sample 2 alone (positions 3..6) must give the same result: packing changes nothing
    s = slice(3, 7)
    alone = attention(q[:, :, s], k[:, :, s], v[:, :, s],
                      build_mask(torch.ones(1, 4, dtype=torch.long), img[:, s]))
    torch.testing.assert_close(out[:, :, s], alone)
