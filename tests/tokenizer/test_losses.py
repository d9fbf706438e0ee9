"""Every HYDRA-TOK loss term against an independent computation."""
import pytest
import torch
import torch.nn.functional as F

from tiny import images, tiny_cfg


def test_flow_matching_and_gsb_regulariser(megatron_tp1):
    from hydra_dist.models.tokenizer import HydraTok
    cfg = tiny_cfg("tokenizer.decoder_condition=mu")
    torch.manual_seed(0)
    m = HydraTok(cfg)
    x, ids = images(3), torch.tensor([5, 9, 2])
    out = m({"images": x, "sample_ids": ids}, noise_seed=7)
    t, eps = out["t"], out["eps"]
    tt = t.view(-1, 1, 1, 1)
    torch.testing.assert_close(out["x_t"], (1 - tt) * x + tt * eps)
    # the same sample id gets the same (t, eps) in another batch (layout independence)
    out2 = m({"images": x[1:2], "sample_ids": ids[1:2]}, noise_seed=7)
    torch.testing.assert_close(out2["eps"][0], eps[1])
    # FM: || v - (eps - x) ||^2, decoder called independently
    with torch.no_grad():
        h = m.patch(x)
        for blk in m.gen_vit.blocks:
            h = blk(h)
        proj = F.linear(h, m.gsb.proj.weight, m.gsb.proj.bias)
        c = cfg.model.gsb.latent_channels
        mu, logvar = proj[..., :c], proj[..., c:]
        v = m.decoder(out["x_t"], t, mu)
        assert out["fm"].item() == pytest.approx(((v - (eps - x)) ** 2).mean().item(), rel=1e-5)
        torch.testing.assert_close(out["x0_pred"], out["x_t"] - tt * v)
        # KL and cosine from the formulas, by hand
        kl = (-0.5 * (1 + logvar - mu ** 2 - logvar.exp())).sum(-1).mean()
        h_bn = mu @ m.gsb.unproj.weight.T + m.gsb.unproj.bias
        cos = ((h * h_bn).sum(-1) / (h.norm(dim=-1) * h_bn.norm(dim=-1))).mean()
        assert out["kl"].item() == pytest.approx(kl.item(), rel=1e-5)
        assert out["cos"].item() == pytest.approx(1 - cos.item(), rel=1e-4, abs=1e-6)
        assert out["reg"].item() == pytest.approx(1e-4 * kl.item() + (1 - cos.item()), rel=1e-4)


def test_z_conditioning_is_the_reparameterised_sample(megatron_tp1):
    from hydra_dist.models.tokenizer import HydraTok
    from hydra_dist.ops.gsb import gsb_noise
    m = HydraTok(tiny_cfg())  # decoder_condition: z
    x, ids = images(2), torch.tensor([3, 4])
    out = m({"images": x, "sample_ids": ids}, noise_seed=11)
    with torch.no_grad():
        proj = m.gsb.proj(m.gen_vit(m.patch(x)))
    c = proj.shape[-1] // 2
    for i, sid in enumerate(ids.tolist()):
        eps = gsb_noise(proj[i:i + 1, :, :c].shape, 11, sid, "cpu", torch.float32)[0]
        z = proj[i, :, :c] + eps * torch.exp(0.5 * proj[i, :, c:])
        torch.testing.assert_close(out["z"][i], z, rtol=1e-5, atol=1e-6)


def test_distillation_against_teacher(megatron_tp1):
    from hydra_dist.models.tokenizer import HydraTok, TeacherViT, distill_loss
    cfg = tiny_cfg()
    m = HydraTok(cfg)
    teacher = TeacherViT(cfg.model.vit, 0.02)
    teacher.load_from_student(m)
    x = images(2)
    out = m({"images": x, "sample_ids": torch.tensor([0, 1])})
    with torch.no_grad():
        for p in m.decoder.parameters():  # perturb nothing the teacher shares; move the student
            p.zero_()
    th = teacher(x)
    # at init the Gen-ViT layers agree with the teacher exactly; Sem-ViT sees H_bn, not H_mid
    total, per = distill_loss(out["hidden"], th, [0, 3])
    assert per[0].item() == pytest.approx(0.0, abs=1e-6)
    want = 0.0
    for layer in (0, 3):
        a, b = out["hidden"][layer], th[layer]
        want += (1 - (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1))).mean().item()
    assert total.item() == pytest.approx(want, rel=1e-5)
    assert per[1].item() > 1e-4


def _lpips_files(tmp_path, net):
    from hydra_dist.models.tokenizer.lpips import NETS, build_trunk
    torch.manual_seed(1)
    trunk = build_trunk(net)
    torch.save({f"features.{k}": v for k, v in trunk.state_dict().items()}, tmp_path / "trunk.pth")
    lins = {f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1) for i, c in enumerate(NETS[net][1])}
    torch.save(lins, tmp_path / "lin.pth")
    return trunk, lins


@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_lpips_against_a_hand_computation(tmp_path, net):
    from hydra_dist.models.tokenizer.lpips import LPIPS, NETS
    trunk, lins = _lpips_files(tmp_path, net)
    lp = LPIPS(net, str(tmp_path / "trunk.pth"), str(tmp_path / "lin.pth"))
    size = 32 if net == "vgg" else 48   # both above the trunk's floor: no upsampling
    x, y = images(2, size, 1), images(2, size, 2)
    got = lp(x, y)
    # by hand: slices of the torchvision trunk between taps, unit-normalise, weight, average
    shift = torch.tensor([-.030, -.088, -.188]).view(1, 3, 1, 1)
    scale = torch.tensor([.458, .448, .450]).view(1, 3, 1, 1)
    taps = NETS[net][0]
    want = torch.zeros(2)
    hx, hy, start = (x - shift) / scale, (y - shift) / scale, 0
    for i, tap in enumerate(taps):
        for layer in list(trunk)[start:tap + 1]:
            hx, hy = layer(hx), layer(hy)
        start = tap + 1
        nx = hx / (hx.norm(dim=1, keepdim=True) + 1e-10)
        ny = hy / (hy.norm(dim=1, keepdim=True) + 1e-10)
        d = ((nx - ny) ** 2 * lins[f"lin{i}.model.1.weight"].view(1, -1, 1, 1)).sum(1)
        want += d.mean(dim=(1, 2)).detach()
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
    assert lp(x, x).abs().max().item() < 1e-6
    assert not any(p.requires_grad for p in lp.parameters())


@pytest.mark.parametrize("net,floor", [("alex", 31), ("vgg", 16)])
def test_lpips_upsamples_only_below_the_trunks_floor(tmp_path, net, floor):
    """The floor is the formula's (conv / pool output sizes), the trunk really fails one pixel
    below it, and an image at or above it is scored as given, as the reference does."""
    from hydra_dist.models.tokenizer.lpips import LPIPS, MIN_SIZE, NETS, build_trunk, min_input_size
    trunk = build_trunk(net)
    assert min_input_size(trunk, NETS[net][0][-1]) == MIN_SIZE[net] == floor
    with pytest.raises(RuntimeError):
        trunk[:NETS[net][0][-1] + 1](torch.zeros(1, 3, floor - 1, floor - 1))
    assert trunk[:NETS[net][0][-1] + 1](torch.zeros(1, 3, floor, floor)).shape[-1] >= 1
    _lpips_files(tmp_path, net)
    lp = LPIPS(net, str(tmp_path / "trunk.pth"), str(tmp_path / "lin.pth"))
    x = images(1, floor, 1)
    first = lp.taps_of(x)[0]
    assert torch.equal(first, lp.features[:NETS[net][0][0] + 1]((x - lp.shift) / lp.scale))
    small = images(1, floor - 1, 1)                    # below: upsampled to the floor
    assert lp.taps_of(small)[0].shape == first.shape


def test_lpips_without_weights_is_a_config_error():
    from hydra_dist.config import ConfigError
    with pytest.raises(ConfigError, match="tokenizer.lpips.trunk_weights"):
        tiny_cfg("tokenizer.weights.lpips=0.1")


def test_gan_losses():
    from hydra_dist.models.tokenizer.discriminator import d_loss, g_loss
    real, fake = torch.tensor([2.0, 0.5, -1.0]), torch.tensor([-2.0, 0.3, 1.5])
    hinge_d = 0.5 * (sum(max(0, 1 - r) for r in real.tolist()) / 3
                     + sum(max(0, 1 + f) for f in fake.tolist()) / 3)
    assert d_loss("hinge", real, fake).item() == pytest.approx(hinge_d)
    assert g_loss("hinge", fake).item() == pytest.approx(-fake.mean().item())
    sp = lambda v: torch.log1p(torch.exp(torch.tensor(v))).item()  # noqa: E731
    ns_d = 0.5 * (sum(sp(-r) for r in real.tolist()) / 3 + sum(sp(f) for f in fake.tolist()) / 3)
    assert d_loss("non_saturating", real, fake).item() == pytest.approx(ns_d, rel=1e-6)
    assert g_loss("non_saturating", fake).item() == pytest.approx(
        sum(sp(-f) for f in fake.tolist()) / 3, rel=1e-6)


def test_total_uses_the_paper_weights(tmp_path, megatron_tp1):
    from hydra_dist.models.tokenizer import HydraTok, TeacherViT, TokenizerObjective
    from hydra_dist.models.tokenizer.discriminator import PatchDiscriminator
    from hydra_dist.models.tokenizer.lpips import LPIPS
    _lpips_files(tmp_path, "alex")
    cfg = tiny_cfg("tokenizer.weights.lpips=0.1", "tokenizer.lpips.net=alex",
                   f"tokenizer.lpips.trunk_weights={tmp_path / 'trunk.pth'}",
                   f"tokenizer.lpips.lin_weights={tmp_path / 'lin.pth'}")
    w = cfg.tokenizer.weights
    assert (w.fm, w.lpips, w.gan, w.reg, w.dist) == (1.0, 0.1, 0.075, 1.0, 1.0)
    m = HydraTok(cfg)
    teacher = TeacherViT(cfg.model.vit, 0.02)
    teacher.load_from_student(m)
    obj = TokenizerObjective(cfg, teacher, LPIPS("alex", str(tmp_path / "trunk.pth"),
                                                 str(tmp_path / "lin.pth")))
    disc = PatchDiscriminator(cfg.tokenizer.gan)
    x = images(2)
    out = m({"images": x, "sample_ids": torch.tensor([0, 1])})
    loss, parts = obj.generator(out, x, disc)
    want = parts["fm"] + 0.1 * parts["lpips"] + 0.075 * parts["gan_g"] + parts["reg"] + parts["dist"]
    assert set(parts) >= {"fm", "lpips", "gan_g", "reg", "dist"}
    assert loss.item() == pytest.approx(want, rel=1e-6)
    loss.backward()
    assert all(p.grad is None for p in disc.parameters())  # the generator step leaves D alone
    d = obj.discriminator(disc, x, out["x0_pred"])
    d.backward()
    assert all(p.grad is not None for p in disc.parameters())
