"""Round trip: HF Qwen2 -> hydra-import-hf -> 2 ZeRO-3 steps on 2 processes (model.init_from)
-> hydra-export-hf -> transformers. The export must equal DeepSpeed's own consolidation, the
Qwen2ForCausalLM in language_model/ and AutoModel(trust_remote_code) must reproduce our model,
and the folder must hold no pickle."""
import json
import os
import zipfile
from pathlib import Path

import pytest
import torch

from hf_tiny import our_llm_logits, save_tiny_qwen2
from launch import REPO, run_torchrun

from hydra_dist.models.vit import model_pixels


def _batch():
    from hydra_dist.data.collate import HydraCollator
    from hydra_dist.data.synthetic import make_sample
    from hydra_dist.data.tokenizer import ByteTokenizer
    samples = []
    for i in range(6):
        img, cap, _ = make_sample(i, 1234, 32)
        samples.append({"id": i, "image": img, "caption": cap})
    batch = HydraCollator(ByteTokenizer(), 32, 16, 48, 0.5, 17)(samples)
    assert 0 < int(batch["is_gen"].sum()) < 6  # both tasks present
    return batch


def _no_pickles(folder: Path):
    for p in folder.rglob("*"):
        if not p.is_file():
            continue
        assert p.suffix not in (".pt", ".pth", ".bin", ".pkl", ".ckpt"), p
        head = p.read_bytes()[:2]
        assert not head.startswith(b"\x80"), f"{p} looks like a pickle"
        if zipfile.is_zipfile(p):
            assert not any(n.endswith(".pkl") for n in zipfile.ZipFile(p).namelist()), p


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("rt")
    hf_dir, init = tmp / "hf_qwen2", tmp / "init.safetensors"
    save_tiny_qwen2(hf_dir, hidden=128, layers=2, heads=4, kv_heads=2, vocab=384, ffn=384, seed=5)
    from hydra_dist.cli.import_hf import main as import_main
    assert import_main([str(hf_dir), str(init), "--config", "configs/tiny_cpu.yaml"]) == 0
    run = tmp / "run"
    env = {"PYTHONPATH": os.pathsep.join([str(REPO / "tests" / "export"), os.environ.get("PYTHONPATH", "")])}
    res = run_torchrun(2, ["configs/tiny_cpu.yaml", "train.steps=2", "checkpoint.every=2",
                           "data.synthetic.num_samples=128", f"output_dir={run}",
                           f"model.init_from={init}", "tracking.enabled=false"],
                       timeout=500, env=env, module="pretrain_with_init")
    assert res.returncode == 0, res.stdout[-4000:]
    from hydra_dist.cli.export_hf import main as export_main
    out = tmp / "export"
    assert export_main([str(run), str(out), "--shard-size", "1MB", "--no-progress"]) == 0
    return {"tmp": tmp, "hf_dir": hf_dir, "init": init, "run": run, "out": out}


def read_names(folder):
    return set(json.loads((folder / "model.safetensors.index.json").read_text())["weight_map"])


def test_export_equals_deepspeed_consolidation_and_init_took(trained):
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
    from safetensors.torch import load_file
    from hydra_dist.export.qwen_map import export_to_ours_name
    from hydra_dist.export.st_io import iter_tensors
    ref = get_fp32_state_dict_from_zero_checkpoint(str(trained["run"] / "checkpoints"), tag="step00000002")
    # the root holds the LLM under transformers' Qwen2Model names, the rest under ours
    got = {export_to_ours_name(n): load() for n, load in iter_tensors(trained["out"])}
    assert "llm.layers.0.self_attn.q_proj.weight" in read_names(trained["out"])
    assert set(got) == set(ref)
    for n, t in got.items():
        assert torch.equal(t, ref[n].contiguous()), n
    index = json.loads((trained["out"] / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1  # 1MB shards: really sharded
    # the run started from the imported weights (2 Adam steps move them by ~lr), not from its seed
    init = load_file(str(trained["init"]))
    for n, t in init.items():
        d = (ref[n] - t).abs().max().item()
        assert 0 < d < 5e-3, (n, d)
    _no_pickles(trained["out"])


def test_language_model_and_remote_code_reproduce_our_model(trained, megatron_tp1):
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
    from transformers import AutoModel, Qwen2ForCausalLM
    from hydra_dist.config import load_config
    from hydra_dist.models.hydra import HydraModel
    cfg = load_config(str(trained["run"] / "config.yaml"), ["model.init_from="])
    ours = HydraModel(cfg.model).eval()
    sd = get_fp32_state_dict_from_zero_checkpoint(str(trained["run"] / "checkpoints"), tag="step00000002")
    ours.load_state_dict(sd, strict=True)

    lm_dir = trained["out"] / "language_model"
    qwen, info = Qwen2ForCausalLM.from_pretrained(lm_dir, local_files_only=True, dtype=torch.float32,
                                                  output_loading_info=True)
    assert not any(info.values()), info
    assert qwen.config.vocab_size == 384
    ids = torch.randint(0, 384, (2, 23), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(qwen.eval()(input_ids=ids).logits, our_llm_logits(ours, ids),
                                   atol=1e-5, rtol=0)

    hydra, info = AutoModel.from_pretrained(trained["out"], trust_remote_code=True, local_files_only=True,
                                            dtype=torch.float32, output_loading_info=True)
    assert not any(info.values()), info
    hydra.eval()
    batch = _batch()
    captured = {}
    hook = ours.flow_head.register_forward_hook(lambda m, i, o: captured.update(v=o))
    with torch.no_grad():
        ref = ours(batch, noise_seed=1234)
        out = hydra(**batch, noise_seed=1234)
    hook.remove()
    torch.testing.assert_close(out.ntp_loss, ref["ntp"], atol=1e-5, rtol=0)
    torch.testing.assert_close(out.fm_loss, ref["fm"], atol=1e-5, rtol=0)
    torch.testing.assert_close(out.v_pred, captured["v"], atol=1e-5, rtol=0)
    assert float(out.v_pred.abs().max()) > 0  # flow head trained off its zero init


def test_tokenizer_part_and_bf16(trained):
    from transformers import AutoModel
    from hydra_dist.cli.export_hf import main as export_main
    tok = trained["tmp"] / "tok"
    assert export_main([str(trained["run"] / "checkpoints" / "step00000002"), str(tok),
                        "--part", "tokenizer", "--dtype", "bf16", "--no-progress"]) == 0
    index = json.loads((tok / "model.safetensors.index.json").read_text())
    assert {n.split(".")[0] for n in index["weight_map"]} == {"patch", "gen_vit", "gsb", "sem_vit"}
    assert not (tok / "language_model").exists()
    m = AutoModel.from_pretrained(tok, trust_remote_code=True, local_files_only=True, dtype=torch.bfloat16)
    imgs = model_pixels(_batch()["images"][:2], torch.bfloat16)   # the batch carries uint8
    with torch.no_grad():
        assert m.encode_latent(imgs).shape == (2, 64, 16)
    _no_pickles(tok)
    # an existing, non-empty OUT is refused
    assert export_main([str(trained["run"]), str(tok), "--no-progress"]) == 1
