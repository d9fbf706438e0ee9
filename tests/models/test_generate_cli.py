"""hydra-generate on real tiny runs (issue 20, item 2): a decoder whose encoder is not the one
the run makes latents with is refused with the reason (the main job's random Gen-ViT/GSB used
to give grey noise silently), the matching tokenizer run is accepted, and stdout carries only
the answer or the image path."""
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
