"""hydra-prepare-data and the mistakes users make: each bad input exits non-zero with the
cause named (file, line, record, column, the columns there are) and leaves the earlier good
conversion byte-for-byte intact (conversions are written beside --out and swapped in)."""
import json

import pytest

from data_helpers import jpeg_bytes
from hydra_dist.cli.prepare_data import main as cli_main


def files_bytes(root):
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def read_all(path):
    from streaming import StreamingDataset
    ds = StreamingDataset(local=str(path), shuffle=False, batch_size=1)
    return [ds[i] for i in range(len(ds))]


@pytest.fixture
def good_out(tmp_path):
    (tmp_path / "t.jsonl").write_text('{"text": "kept"}\n')
    out = tmp_path / "mds"
    assert cli_main(["text", str(tmp_path / "t.jsonl"), "--out", str(out), "--no-progress"]) == 0
    return out, files_bytes(out)


def _llava_syntax(tmp):
    (tmp / "l.json").write_text('[\n {"id": "a",\n  "conversations": [}\n]\n')
    return ["llava", str(tmp / "l.json")], ["l.json", "line 3", "JSON syntax error"]


def _llava_shape(tmp):
    (tmp / "l.json").write_text(json.dumps({"data": [{"id": "a", "conversations": []}]}))
    return ["llava", str(tmp / "l.json")], ["l.json", "JSON list of records", "dict", "data"]


def _llava_turn_without_from(tmp):
    (tmp / "l.json").write_text(json.dumps([{"id": "a", "conversations": [{"value": "hi"}]}]))
    return ["llava", str(tmp / "l.json")], ["wrote 0 samples", "bad conversation turn 0", "'from'"]


def _parquet_missing_column(tmp):
    import pyarrow as pa  # parquet input is supported: a missing pyarrow must fail, not skip
    import pyarrow.parquet as pq
    pq.write_table(pa.table({"jpg": [jpeg_bytes(0)], "text": ["x"]}), tmp / "p.parquet")
    return (["parquet", str(tmp / "p.parquet"), "--image-column", "image", "--caption-column", "text"],
            ["p.parquet", "no column 'image'", "--image-column", "its columns are jpg, text"])


def _folder_without_captions(tmp):
    (tmp / "imgs").mkdir()
    (tmp / "imgs" / "a.jpg").write_bytes(jpeg_bytes(0))
    return ["folder", str(tmp / "imgs")], ["wrote 0 samples", "no caption side file a.txt or a.json"]


def _missing_input(tmp):
    return ["text", str(tmp / "nope.jsonl")], ["nope.jsonl", "does not exist"]


@pytest.mark.parametrize("case", [_llava_syntax, _llava_shape, _llava_turn_without_from,
                                  _parquet_missing_column, _folder_without_captions, _missing_input])
def test_bad_input_keeps_earlier_output_and_names_cause(case, good_out, tmp_path, capsys):
    out, before = good_out
    src = tmp_path / "src"
    src.mkdir()
    argv, must_name = case(src)
    code = cli_main(argv + ["--out", str(out), "--no-progress"])
    err = capsys.readouterr().err
    assert code != 0
    for part in must_name:
        assert part in err, (part, err)
    assert err.count("\n") == 1 and "Traceback" not in err  # one line, no traceback
    assert files_bytes(out) == before  # the earlier conversion is untouched
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".mds.")] == []  # no leftovers


def test_llava_turns_validated_with_reader_rules(tmp_path):
    """A turn the reader would reject (no `from`, unknown role) is skipped at conversion with
    the reader's message, so every converted record renders at training time."""
    from hydra_dist.data.samples import ChatRenderer, conversation_messages
    recs = [{"id": "ok", "conversations": [{"from": "human", "value": "Hi"},
                                           {"from": "gpt", "value": "Hello."}]},
            {"id": "nofrom", "conversations": [{"value": "Hi"}]},
            {"id": "role", "conversations": [{"from": "robot", "value": "Hi"}]},
            {"id": "empty", "conversations": []}]
    (tmp_path / "l.json").write_text(json.dumps(recs))
    out = tmp_path / "o"
    assert cli_main(["llava", str(tmp_path / "l.json"), "--out", str(out), "--no-progress"]) == 0
    rows = read_all(out)
    assert [r["key"] for r in rows] == ["ok"]
    ChatRenderer().segments(conversation_messages(rows[0]["conversations"]))
    summary = json.loads((out / "conversion_summary.json").read_text())
    reasons = {s["key"]: s["reason"] for s in summary["skipped"]}
    for key in ("nofrom", "role", "empty"):
        with pytest.raises(ValueError) as e:
            conversation_messages(recs[[r["id"] for r in recs].index(key)]["conversations"])
        assert reasons[key] == str(e.value)


def test_image_folder_with_side_file_captions(tmp_path):
    d = tmp_path / "imgs"
    (d / "sub").mkdir(parents=True)
    (d / "a.jpg").write_bytes(jpeg_bytes(0))
    (d / "a.txt").write_text("a red square\n")
    (d / "sub" / "b.png").write_bytes(jpeg_bytes(1, fmt="PNG"))
    (d / "sub" / "b.json").write_text(json.dumps({"caption": "a blue one"}))
    (d / "c.jpg").write_bytes(jpeg_bytes(2))  # no side file: skipped, named
    out = tmp_path / "o"
    assert cli_main(["folder", str(d), "--out", str(out), "--no-progress"]) == 0
    rows = read_all(out)
    assert [(r["key"], r["caption"]) for r in rows] == [("a.jpg", "a red square"),
                                                       ("sub/b.png", "a blue one")]
    summary = json.loads((out / "conversion_summary.json").read_text())
    assert [(s["key"], s["reason"]) for s in summary["skipped"]] == [
        ("c.jpg", "no caption side file c.txt or c.json")]
