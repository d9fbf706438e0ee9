"""Config errors name the file and key; composition and overrides resolve as documented."""
import pytest

from hydra_dist.config import ConfigError, load_config
from hydra_dist.config.loader import resolve_path


def write(tmp_path, name, text):
    p = tmp_path / name
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)
    return p


def test_shipped_configs_load():
    cfg = load_config("configs/tiny_cpu.yaml", world_size=2)
    assert cfg.parallel.zero_stage == 3 and cfg.model.vit.image_size == 32
    assert resolve_path("tiny_cpu").name == "tiny_cpu.yaml"


def test_defaults_compose_and_override(tmp_path):
    write(tmp_path, "model/m.yaml", "model:\n  llm: {num_layers: 3}\n  vit: {gen_layers: 1}\n")
    write(tmp_path, "par.yaml", "parallel: {zero_stage: 2}\n")
    top = write(tmp_path, "top.yaml", "defaults: [model/m.yaml, par.yaml]\nmodel:\n  vit: {gen_layers: 3}\n")
    cfg = load_config(top, ["train.optim.lr=5e-4", "parallel.zero_stage=1"])
    assert cfg.model.llm.num_layers == 3            # from the included file
    assert cfg.model.vit.gen_layers == 3            # the including file wins
    assert cfg.model.vit.sem_layers == 2            # schema default kept
    assert cfg.train.optim.lr == 5e-4 and cfg.parallel.zero_stage == 1  # command line wins


def test_wrong_type_names_file_and_key(tmp_path):
    p = write(tmp_path, "x.yaml", "train:\n  optim: {lr: fast}\n")
    with pytest.raises(ConfigError, match=r"x\.yaml: train\.optim\.lr: expected float, got 'fast'"):
        load_config(p)


def test_wrong_type_in_included_file_names_that_file(tmp_path):
    write(tmp_path, "inc.yaml", "parallel: {tp: two}\n")
    top = write(tmp_path, "top.yaml", "defaults: [inc.yaml]\n")
    with pytest.raises(ConfigError, match=r"inc\.yaml: parallel\.tp: expected int"):
        load_config(top)


def test_unknown_key(tmp_path):
    p = write(tmp_path, "x.yaml", "model:\n  llm: {layers: 3}\n")
    with pytest.raises(ConfigError, match=r"x\.yaml: model\.llm\.layers: unknown key"):
        load_config(p)


def test_unknown_key_on_command_line():
    with pytest.raises(ConfigError, match=r"command line: train\.stepz: unknown key"):
        load_config(None, ["train.stepz=3"])


def test_malformed_yaml(tmp_path):
    p = write(tmp_path, "bad.yaml", "model: {llm: [1, 2\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: malformed YAML"):
        load_config(p)


def test_missing_file():
    with pytest.raises(ConfigError, match="config file not found: nope.yaml"):
        load_config("nope.yaml")


def test_impossible_values(tmp_path):
    p = write(tmp_path, "x.yaml", "model:\n  vit: {image_size: 30, patch_size: 4}\n")
    with pytest.raises(ConfigError, match=r"x\.yaml: model\.vit\.image_size: 30 is not a multiple"):
        load_config(p)
    with pytest.raises(ConfigError, match=r"parallel\.zero_stage: 5 is not 0, 1, 2 or 3"):
        load_config(None, ["parallel.zero_stage=5"])
    with pytest.raises(ConfigError, match=r"model\.llm\.num_kv_heads"):
        load_config(None, ["model.llm.num_kv_heads=3"])


def test_bool_is_not_int():
    with pytest.raises(ConfigError, match=r"parallel\.tp: expected int, got True"):
        load_config(None, ["parallel.tp=true"])


def test_impossible_layouts():
    with pytest.raises(ConfigError, match=r"world size 3 is not divisible by tp\*pp = 2\*1"):
        load_config(None, ["parallel.tp=2"], world_size=3)
    with pytest.raises(ConfigError, match="DeepSpeed refuses ZeRO-2/3 with pipeline"):
        load_config(None, ["parallel.pp=2"], world_size=2)
    with pytest.raises(ConfigError, match=r"model\.llm\.num_kv_heads: 2 heads are not divisible by parallel\.tp=4"):
        load_config(None, ["parallel.tp=4"], world_size=4)


def test_include_cycle(tmp_path):
    write(tmp_path, "a.yaml", "defaults: [b.yaml]\n")
    write(tmp_path, "b.yaml", "defaults: [a.yaml]\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(tmp_path / "a.yaml")


def test_cli_reports_config_error_before_any_process_group(capsys):
    from hydra_dist.cli.pretrain import main
    assert main(["configs/tiny_cpu.yaml", "train.optim.lr=fast"]) == 2
    assert "train.optim.lr: expected float, got 'fast'" in capsys.readouterr().err


def test_stage_configs_carry_the_papers_schedule():
    s1 = load_config("configs/unified/stage1_alignment.yaml", world_size=64)
    s2 = load_config("configs/unified/stage2_pretrain.yaml", world_size=64)
    s3 = load_config("configs/unified/stage3_sft.yaml", world_size=64)
    assert "llm" in s1.model.freeze and "llm" not in s2.model.freeze
    assert s1.train.optim.lr_per_part == {"projector": 1e-4, "flow_head": 1e-4, "sem_vit": 5e-5}
    assert s2.train.optim.lr_per_part["llm"] == 2e-5 and s2.train.optim.lr_per_part["flow_head"] == 5e-5
    assert (s1.train.steps, s2.train.steps, s3.train.steps) == (150000, 100000, 20000)
    p = s1.parallel
    assert p.micro_batch_size * p.grad_accum * 64 == 1024
    for tiny in ("tiny_stage1_alignment", "tiny_stage2_pretrain", "tiny_stage3_sft"):
        load_config(f"configs/unified/{tiny}.yaml", world_size=2)


@pytest.mark.parametrize("suffix", ["", "_7b"])
def test_each_stage_starts_from_the_previous_stage(suffix):
    """Stage 2 starts from the stage-1 export and stage 3 from stage 2's, never the same folder
    twice (stage3_sft.yaml once inherited stage 2's init_from, i.e. the stage-1 export)."""
    names = ("stage1_alignment", "stage2_pretrain", "stage3_sft")
    cfgs = [load_config(f"configs/unified/{n}{suffix}.yaml", world_size=64) for n in names]
    inits = [c.model.init_from for c in cfgs]
    assert len(set(inits)) == 3, inits
    assert "stage1" in inits[1] and "stage2" in inits[2], inits
    assert len({c.output_dir for c in cfgs}) == 3


def test_tokenizer_on_the_megatron_engine_only_where_supported():
    base = ["parallel.engine=megatron", "parallel.zero_stage=0", "parallel.grad_accum=4"]
    cfg = load_config("configs/tokenizer/tiny_stage1.yaml", base + ["parallel.pp=2"], world_size=2)
    assert cfg.parallel.pp == 2
    for extra, key in ((["parallel.tp=2"], r"parallel\.tp"),
                       (["parallel.pp=2", "tokenizer.weights.gan=0.1"], r"tokenizer\.weights\.gan"),
                       (["parallel.pp=2", "parallel.grad_accum=1"], r"parallel\.grad_accum"),
                       (["parallel.pp=2", "parallel.virtual_pp=2"], r"parallel\.virtual_pp"),
                       (["parallel.pp=2", "tokenizer.decoder.num_layers=3"],
                        r"tokenizer\.decoder\.num_layers")):
        with pytest.raises(ConfigError, match=key):
            load_config("configs/tokenizer/tiny_stage1.yaml", base + extra, world_size=2)
