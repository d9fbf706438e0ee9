"""A bad configuration fails before any process group starts: exit status 2, a message naming
the file (or "command line") and the key, within seconds, and no run folder."""
import subprocess
import sys
import time

import pytest

from launch import REPO

CLI = [sys.executable, "-m", "hydra_dist.cli.pretrain"]


def _cli(args, out_dir, nproc=0):
    t0 = time.monotonic()
    extra = ["--nproc-per-node", str(nproc)] if nproc else []
    res = subprocess.run(CLI + extra + args + [f"output_dir={out_dir}"], cwd=REPO, text=True,
                         capture_output=True, timeout=120)
    return res, time.monotonic() - t0


CASES = {
    "malformed_yaml": ("file", "train: {steps: 3\n", ["malformed YAML"]),
    "unknown_key_file": ("file", "defaults: [tiny_cpu.yaml]\ntrain:\n  stepz: 3\n",
                         ["train.stepz: unknown key"]),
    "unknown_key_cmdline": ("args", ["configs/tiny_cpu.yaml", "train.stepz=3"],
                            ["command line: train.stepz: unknown key"]),
    "wrong_type": ("args", ["configs/tiny_cpu.yaml", "train.optim.lr=fast"],
                   ["command line: train.optim.lr: expected float, got 'fast'"]),
    "impossible_layout": ("args2", ["configs/tiny_cpu.yaml", "parallel.tp=3"],
                          ["command line: parallel.tp: world size 2 is not divisible by tp*pp = 3*1"]),
    "missing_data_path": ("args", ["configs/tiny_cpu.yaml", "data.path=/nonexistent"],
                          ["command line: data.path: /nonexistent is not an MDS folder"]),
    "missing_data_path_torchrun": ("args2", ["configs/tiny_cpu.yaml", "data.path=/nonexistent"],
                                   ["command line: data.path: /nonexistent is not an MDS folder"]),
    "misspelt_section_cmdline": ("args", ["configs/tiny_cpu.yaml", "chekpoint.every=5"],
                                 ["command line: chekpoint: unknown key"]),
    # DeepSpeed itself would stop only at engine start, on every rank, with NotImplementedError
    "bf16_without_zero": ("args2", ["configs/tiny_cpu.yaml", "parallel.precision=bf16",
                                    "parallel.zero_stage=0"],
                          ["parallel.zero_stage: 0 with parallel.precision=bf16: DeepSpeed has no "
                           "fp32 master weights"]),
}


def _write_safetensors(path):
    import numpy as np
    from safetensors.numpy import save_file
    save_file({"llm.embed.weight": np.zeros((2, 2), np.float32)}, str(path))
    return path


def _truncated_mds(tmp):
    from streaming import MDSWriter
    with MDSWriter(out=str(tmp / "mds"), columns={"id": "int", "text": "str"}, size_limit="1kb") as w:
        for i in range(200):
            w.write({"id": i, "text": f"sample {i} " * 4})
    shard = sorted((tmp / "mds").glob("shard.*.mds"))[1]
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])   # a half-copied shard
    return [f"data.path={tmp / 'mds'}"], [f"command line: data.path: 1 of", f"{shard} has",
                                           "bytes, index.json says"]


# Path keys checked before launch: (overrides, expected stderr parts), built in tmp_path.
PATH_CASES = {
    "init_from_not_safetensors": lambda tmp: (
        (tmp / "w.safetensors").write_bytes(b"\xff" * 64) and
        [f"model.init_from={tmp / 'w.safetensors'}"],
        [f"command line: model.init_from: {tmp / 'w.safetensors'} is not a readable safetensors "
         "file", "header too large"]),
    "init_from_missing": lambda tmp: (
        [f"model.init_from={tmp / 'nope.safetensors'}"],
        [f"command line: model.init_from: {tmp / 'nope.safetensors'} does not exist"]),
    "init_from_folder_one_bad_file": lambda tmp: (
        (tmp / "exp").mkdir() or _write_safetensors(tmp / "exp" / "a.safetensors") and
        (tmp / "exp" / "b.safetensors").write_bytes(b"{}") and [f"model.init_from={tmp / 'exp'}"],
        [f"model.init_from: {tmp / 'exp' / 'b.safetensors'} is not a readable safetensors"]),
    "tokenizer_from_not_torch": lambda tmp: (
        (tmp / "tok").mkdir() or (tmp / "tok" / "tokenizer.pt").write_text("hello") and
        [f"model.tokenizer_from={tmp / 'tok'}"],
        [f"model.tokenizer_from: {tmp / 'tok' / 'tokenizer.pt'} is not a torch.save file"]),
    "data_tokenizer_not_hf_folder": lambda tmp: (
        (tmp / "hf").mkdir() or [f"data.tokenizer={tmp / 'hf'}"],
        [f"data.tokenizer: {tmp / 'hf'} has no tokenizer.json"]),
    "truncated_mds_shard": _truncated_mds,
}


@pytest.mark.parametrize("case", sorted(PATH_CASES))
def test_bad_path_key_named_before_launch(tmp_path, case):
    """Every path key is checked before torchrun starts (--nproc-per-node 2): exists, has its
    format (safetensors header read by safetensors, torch zip, MDS shards against index.json)."""
    overrides, expect = PATH_CASES[case](tmp_path)
    out_dir = tmp_path / "run"
    res, took = _cli(["configs/tiny_cpu.yaml", *overrides], out_dir, nproc=2)
    assert res.returncode == 2, res.stdout + res.stderr
    for e in expect:
        assert e in res.stderr, res.stderr
    assert took < 15, took
    assert not out_dir.exists() and "rank0" not in res.stderr


def test_good_path_keys_pass_the_check(tmp_path):
    from hydra_dist.config import load_config
    f = _write_safetensors(tmp_path / "w.safetensors")
    cfg = load_config("tiny_cpu", [f"model.init_from={f}"], check_files=True)
    assert cfg.model.init_from == str(f)


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_config_exits_2_before_any_process_group(tmp_path, case):
    kind, payload, expect = CASES[case]
    if kind == "file":
        cfg = tmp_path / "bad.yaml"
        cfg.write_text(payload.replace("tiny_cpu.yaml", str(REPO / "configs" / "tiny_cpu.yaml")))
        args = [str(cfg)]
        expect = [f"{cfg}: {e}" if "unknown key" in e else e for e in expect] + [str(cfg)]
    else:
        args = payload
    out_dir = tmp_path / "run"
    res, took = _cli(args, out_dir, nproc=2 if kind == "args2" else 0)
    assert res.returncode == 2, res.stdout + res.stderr
    for e in expect:
        assert e in res.stderr, res.stderr
    assert took < 10, took
    assert not out_dir.exists()
    assert "init_process_group" not in res.stderr and "rank0" not in res.stderr


def test_yaml_python_tag_is_refused_and_not_executed(tmp_path):
    marker = tmp_path / "pwned"
    cfg = tmp_path / "evil.yaml"
    cfg.write_text(f'name: !!python/object/apply:os.system ["touch {marker}"]\n')
    res, _ = _cli([str(cfg)], tmp_path / "run")
    assert res.returncode == 2
    assert f"{cfg}: malformed YAML" in res.stderr and "python/object/apply:os.system" in res.stderr
    assert not marker.exists()


def test_remote_data_uri_is_not_checked_locally():
    from hydra_dist.config import load_config
    cfg = load_config("tiny_cpu", ["data.path=s3://bucket/mds"], check_files=True)
    assert cfg.data.path == "s3://bucket/mds"
