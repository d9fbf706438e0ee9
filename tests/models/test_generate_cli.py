"""hydra-generate on real tiny runs (issue 20, item 2): a decoder whose encoder is not the one
the run makes latents with is refused with the reason (the main job's random Gen-ViT/GSB used
to give grey noise silently), the matching tokenizer run is accepted, and stdout carries only
the answer or the image path. Then the run's export (item 3): hydra-generate on it gives the
run's answer and pixels, and the export alone, in a process where hydra_dist, deepspeed,
megatron, streaming and mlflow cannot be imported, gives the same text continuation, the same
answer about an image and the same image (transformers' generate with its KV cache, the
processor, the byte tokenizer and the pixel decoder carried in the export)."""
import json
import os
import subprocess
import sys

from launch import REPO, run_torchrun

TOK = ["configs/tokenizer/tiny_stage1.yaml", "train.steps=1", "data.synthetic.num_samples=32",
       "tokenizer.eval_images=0", "tracking.enabled=false"]
UNI = ["configs/unified/tiny_shapes_evidence.yaml", "train.steps=1", "data.synthetic.num_samples=32",
       "tracking.enabled=false", "train.eval_every=0"]


def _generate(*args):
    return subprocess.run([sys.executable, "-m", "hydra_dist.cli.generate", *map(str, args)],
                          cwd=REPO, capture_output=True, text=True, timeout=300)


def test_decoder_must_match_the_runs_encoder_and_stdout_is_only_the_answer(tmp_path):
    tok, fresh, based = tmp_path / "tok", tmp_path / "fresh", tmp_path / "based"
    for args in (TOK + [f"output_dir={tok}"], UNI + [f"output_dir={fresh}", "model.tokenizer_from="],
                 UNI + [f"output_dir={based}", f"model.tokenizer_from={tok / 'tokenizer.pt'}"]):
        res = run_torchrun(1, args, timeout=400)
        assert res.returncode == 0, res.stdout[-4000:]
    png = tmp_path / "a.png"
    res = _generate(fresh, "--prompt", "a red circle", "--decoder", tok, "--out", png, "--steps", 2,
                    "--decoder-steps", 2)
    assert res.returncode == 2, res.stderr[-3000:]
    assert f"{tok} does not decode {fresh}'s latents" in res.stderr
    assert "model.tokenizer_from is empty, so they were never trained" in res.stderr
    assert not png.exists() and res.stdout == ""
    res = _generate(based, "--prompt", "a red circle", "--decoder", tok, "--out", png, "--steps", 2,
                    "--decoder-steps", 2)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout == f"{png}\n" and png.is_file()   # nothing else on stdout
    res = _generate(fresh, "--prompt", "a red circle", "--decoder", tok, "--out", png, "--steps", 2,
                    "--decoder-steps", 2, "--allow-mismatched-decoder")
    assert res.returncode == 0 and res.stdout == f"{png}\n", res.stderr[-3000:]
    res = _generate(based, "--image", png, "--max-new-tokens", 4)
    assert res.returncode == 0, res.stderr[-3000:]
    assert len(res.stdout.splitlines()) == 1   # the answer, one line, and nothing else
    # an export of the whole model answers and draws as its run (fp32 export: same weights)
    _export_matches_its_run(tmp_path, based, tok)


def _export_matches_its_run(tmp_path, run, tok):
    from PIL import Image

    from hydra_dist.data.synthetic import make_sample
    export = tmp_path / "export"
    res = subprocess.run([sys.executable, "-m", "hydra_dist.cli.export_hf", str(run), str(export),
                          "--no-progress"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert (export / "hydra_run_config.yaml").is_file()
    make_sample(3, 987654, 32)[0].save(tmp_path / "q.png")
    answers = [_generate(src, "--image", tmp_path / "q.png", "--max-new-tokens", 12) for src in (run, export)]
    for a in answers:
        assert a.returncode == 0, a.stderr[-3000:]
    assert answers[0].stdout == answers[1].stdout and answers[0].stdout.strip()
    pngs = [tmp_path / f"{name}.png" for name in ("from_run", "from_export")]
    for src, png in zip((run, export), pngs):
        res = _generate(src, "--prompt", "a red circle", "--decoder", tok, "--out", png, "--steps", 2,
                        "--decoder-steps", 2)
        assert res.returncode == 0 and res.stdout == f"{png}\n", res.stderr[-3000:]
    assert Image.open(pngs[0]).tobytes() == Image.open(pngs[1]).tobytes()
    # the export carries the decoder of model.tokenizer_from: no --decoder needed
    own = tmp_path / "own_decoder.png"
    res = _generate(export, "--prompt", "a red circle", "--out", own, "--steps", 2, "--decoder-steps", 2)
    assert res.returncode == 0 and res.stdout == f"{own}\n", res.stderr[-3000:]
    assert Image.open(own).tobytes() == Image.open(pngs[0]).tobytes()
    text = _generate(export, "--prompt", "a red circle", "--max-new-tokens", 12)
    assert text.returncode == 0, text.stderr[-3000:]
    _transformers_only_matches(tmp_path, export, answers[0].stdout, text.stdout, pngs[0])


# image through the export vs hydra-generate: the same fp32 ops on the same weights; measured
# identical, the bound allows one grey level for a different attention kernel
IMAGE_TOL = 1


def _transformers_only_matches(tmp_path, export, answer, text, png):
    import numpy as np
    from PIL import Image
    out = tmp_path / "hf_only"
    out.mkdir()
    res = subprocess.run([sys.executable, str(REPO / "tests/export/hf_only_inference.py"), str(export),
                          str(tmp_path / "q.png"), "a red circle", str(out)],
                         cwd=tmp_path, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "HF_MODULES_CACHE": str(tmp_path / "hf_modules"),
                              "HF_HUB_OFFLINE": "1"})
    assert res.returncode == 0, res.stderr[-4000:]
    r = json.loads((out / "result.json").read_text())
    assert r["modules"] == [] and r["can_generate"] and r["tokenizer_class"] == "HydraByteTokenizer"
    assert r["answer"] + "\n" == answer      # same tokens: the byte text is the token sequence
    assert r["text"] + "\n" == text
    assert r["chat_ids_equal"]
    a = np.asarray(Image.open(out / "hf.png"), dtype=int)
    b = np.asarray(Image.open(png), dtype=int)
    assert a.shape == b.shape and np.abs(a - b).max() <= IMAGE_TOL and b.std() > 1
