"""Readers: stage mixtures (ratios), per-stream tasks, ViT transform, chat template, remote
caching, bad samples counted and skipped with fixed batch shapes."""
import pytest
import torch

from data_helpers import build_tokenizer, jpeg_bytes, write_caption_mds, write_text_mds
from hydra_dist.data.collate import HydraCollator
from hydra_dist.data.loader import StreamingBatches
from hydra_dist.data.tokenizer import ByteTokenizer, load_tokenizer
from hydra_dist.data.transforms import vit_transform


def batches(path="", sources=None, mb=4, collate=None, state=None, **kw):
    return StreamingBatches(path, collate or (lambda s: s), mb, 1, 1, True, 5, 0, state,
                            sources=sources, image_size=16, **kw)


def test_mixture_ratio_text_caption_generation(tmp_path):
    img, txt = write_caption_mds(tmp_path / "img", 60), write_text_mds(tmp_path / "txt", 40)
    sources = [{"path": str(txt), "task": "text", "proportion": 1.0},
               {"path": str(img), "task": "caption", "proportion": 2.0},   # same folder twice
               {"path": str(img), "task": "generation", "proportion": 5.0}]
    ld = batches(sources=sources, mb=8, epoch_size=400)
    counts = {"text": 0, "caption": 0, "generation": 0}
    for _ in range(50):  # one full epoch of 400 samples
        for s in ld.next_samples():
            counts[s["task"]] += 1
            assert (s["task"] == "text") == ("image" not in s)
    assert counts == {"text": 50, "caption": 100, "generation": 250}  # exact per epoch
    # within the first 10 batches the mix is close to 1:2:5 (sampling error)
    ld2 = batches(sources=sources, mb=8, epoch_size=400)
    first = [s["task"] for _ in range(10) for s in ld2.next_samples()]
    assert abs(first.count("generation") / 80 - 5 / 8) < 0.2
    assert ld.error_counts() == {"txt/text": 0, "img/caption": 0, "img/generation": 0}


def test_tasks_reach_the_collator_and_images_are_vit_sized(tmp_path):
    img = write_caption_mds(tmp_path / "img", 12)
    col = HydraCollator(ByteTokenizer(), image_size=16, n_vis=4, max_text=16,
                        generation_fraction=0.5, seed=1)
    ld = StreamingBatches("", col, 4, 1, 1, False, 0, 0,
                          sources=[{"path": str(img), "task": "generation", "proportion": 1.0}])
    b = next(ld)
    assert b["is_gen"].all() and b["images"].shape == (4, 3, 16, 16)
    assert b["images"].dtype == torch.uint8 and b["images"].max() > b["images"].min()
    from PIL import Image
    t = vit_transform(Image.new("RGB", (40, 20), (255, 0, 0)), 16)
    assert t.shape == (3, 16, 16) and torch.allclose(t[0], torch.ones(16, 16))


def test_instruct_uses_chat_template(tmp_path, tiny_tokenizer):
    from hydra_dist.data.convert import ConvertOptions, convert
    import json
    (tmp_path / "a.jpg").write_bytes(jpeg_bytes(0))
    recs = [{"id": "x", "image": "a.jpg", "conversations": [
        {"from": "human", "value": "<image>\ndescribe"}, {"from": "gpt", "value": "a red circle"}]},
        {"id": "y", "conversations": [{"from": "human", "value": "hello"},
                                      {"from": "gpt", "value": "world"}]}]
    (tmp_path / "l.json").write_text(json.dumps(recs))
    convert(ConvertOptions(kind="llava", inputs=[str(tmp_path / "l.json")], out=str(tmp_path / "m"),
                           progress=False))
    tok = load_tokenizer(str(tiny_tokenizer))
    col = HydraCollator(tok, image_size=16, n_vis=4, max_text=64, generation_fraction=0.5, seed=1)
    ld = StreamingBatches("", col, 2, 1, 1, False, 0, 0,
                          sources=[{"path": str(tmp_path / "m"), "task": "instruct"}])
    s = {x["id"]: x for x in ld.next_samples()}
    assert s[0]["task"] == "caption" and s[1]["task"] == "text"
    assert s[0]["caption"] == "<|im_start|>user\ndescribe<|im_end|>\n<|im_start|>assistant\na red circle<|im_end|>\n"
    b = col(list(s.values()))
    assert b["images"].shape[0] == 1 and int(b["image_weight"].sum()) == 1
    assert tok.tok.convert_tokens_to_ids("<|im_start|>") in b["input_ids"].flatten().tolist()
    # SFT masking: only the assistant replies (and the closing EOS) are learned
    learned = tok.tok.decode([t for t in b["labels"].flatten().tolist() if t >= 0])
    assert learned in ("a red circle<|im_end|>\n<|im_end|>world<|im_end|>\n<|im_end|>",
                       "world<|im_end|>\n<|im_end|>a red circle<|im_end|>\n<|im_end|>")


def test_chat_segments_mark_only_assistant_turns(tiny_tokenizer):
    from hydra_dist.data.collate import IGNORE
    from hydra_dist.data.samples import ChatRenderer
    msgs = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "q1"},
            {"role": "assistant", "content": "a1"}, {"role": "user", "content": "q2"},
            {"role": "assistant", "content": "a2"}]
    for spec in ("byte", str(tiny_tokenizer)):
        chat = ChatRenderer(spec)
        seg = chat.segments(msgs)
        assert "".join(t for t, _ in seg) == chat(msgs)       # nothing lost or repeated
        assert [t for t, tr in seg if tr] == ["a1<|im_end|>\n", "a2<|im_end|>\n"]
        assert seg[-3:] == [("<|im_start|>user\nq2<|im_end|>\n", False),
                            ("<|im_start|>assistant\n", False), ("a2<|im_end|>\n", True)]
    # the byte tokenizer path through the collator: labels are exactly the replies' bytes + EOS
    tok = load_tokenizer("byte")
    col = HydraCollator(tok, image_size=16, n_vis=4, max_text=200, generation_fraction=0.0, seed=1)
    b = col([{"id": 0, "task": "text", "text": chat(msgs), "segments": ChatRenderer("byte").segments(msgs)}])
    lab = [t for t in b["labels"][0].tolist() if t != IGNORE]
    assert lab == tok.encode("a1<|im_end|>\na2<|im_end|>\n") + [tok.EOS]
    # a reply cut by max_text does not learn EOS at the cut
    short = HydraCollator(tok, image_size=16, n_vis=4, max_text=60, generation_fraction=0.0, seed=1)
    b = short([{"id": 0, "task": "text", "text": chat(msgs), "segments": ChatRenderer("byte").segments(msgs)}])
    assert tok.EOS not in b["labels"][0].tolist()


def test_tokenizer_requires_specials_and_template(tmp_path):
    bare = build_tokenizer(tmp_path / "bare", chat_template=False)
    tok = load_tokenizer(str(bare))
    with pytest.raises(ValueError, match="chat template"):
        tok.render_chat([{"role": "user", "content": "hi"}])


def test_remote_local_path_is_cached(tmp_path):
    img = write_caption_mds(tmp_path / "img", 8)
    cache = tmp_path / "cache"
    ld = batches(sources=[{"remote": str(img), "task": "caption"}], cache_dir=str(cache))
    got = [s["caption"] for _ in range(2) for s in ld.next_samples()]
    assert sorted(got) == sorted(f"sample {i}" for i in range(8))
    assert list(cache.rglob("*.mds"))  # shards were copied into the local cache


def test_bad_samples_skipped_counted_and_shapes_fixed(tmp_path):
    bad = {2: "truncated", 5: "garbage", 9: "missing", 13: "type"}
    img = write_caption_mds(tmp_path / "img", 24, bad)
    txt = write_text_mds(tmp_path / "txt", 8)
    col = HydraCollator(ByteTokenizer(), image_size=16, n_vis=4, max_text=16,
                        generation_fraction=0.5, seed=1)
    ld = StreamingBatches("", col, 4, 1, 1, True, 3, 0, sources=[
        {"path": str(img), "task": "auto", "name": "imgs"}, {"path": str(txt), "task": "text"}])
    seen = []
    for _ in range(8):  # one epoch: 32 samples, 8 raw batches
        samples = ld.next_samples()
        assert len(samples) == 4
        seen += [s["id"] for s in samples]
        b = col(samples)
        assert int(b["segment_ids"].max(dim=1).values.sum()) == 4  # four samples packed
    assert ld.error_counts() == {"imgs": 4, "txt/text": 0}
    assert set(seen) == set(range(32)) - set(bad)  # every good sample, none of the bad
    assert ld.epoch == 0 and ld.next_samples() and ld.epoch == 1  # boundary after 8 batches
