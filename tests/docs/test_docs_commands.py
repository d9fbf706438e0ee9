"""The docs cannot drift from the code: every `hydra-*`, `sbatch`, `torchrun` and `python`
command written in README.md and docs/*.md parses with the real argument parser (each entry
point runs in-process up to its parse_args), every config it names resolves through
`hydra-pretrain --print-config` at the command's world size, every repository path and test
the docs name exists, every config key they name is in the schema, and the SLURM knobs table
matches the launcher. Each test lists all problems at once, as `file:line: command: why`."""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import importlib.util
import io
import os
import re
import runpy
import sys
import typing
import warnings
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from doc_commands import DOCS, REPO, collect_commands, dummy_argv, has_placeholder, path_refs  # noqa: E402

ENTRY = dict(re.findall(r'"(hydra-[\w-]+)=([\w.]+):main"', (REPO / "setup.py").read_text()))
COMMANDS = collect_commands()
pytestmark = pytest.mark.timeout(120)


class Parsed(Exception):
    """Raised by parse_args once the arguments parsed: the entry point stops before any work."""


@contextlib.contextmanager
def parse_only(argv0: str, args: list[str]):
    real = {m: getattr(argparse.ArgumentParser, m) for m in ("parse_args", "parse_intermixed_args")}

    def stop_after(name):
        def parse(self, *a, **k):
            raise Parsed(real[name](self, *a, **k))
        return parse

    saved_argv, err = sys.argv, io.StringIO()
    sys.argv = [argv0, *args]
    for m in real:
        setattr(argparse.ArgumentParser, m, stop_after(m))
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            yield err
    finally:
        for m, f in real.items():
            setattr(argparse.ArgumentParser, m, f)
        sys.argv = saved_argv


def parse_problem(kind: str, target: str, args: list[str]) -> str | None:
    """None if `target args` parses; else why. kind: entry (hydra-*), module (-m), script.
    A bare name (`hydra-plan` in a table) is checked with --help."""
    args = args or ["--help"]
    with parse_only(target, args) as err, warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # run_module of an imported module
        try:
            if kind == "entry":
                importlib.import_module(ENTRY[target]).main()
            elif kind == "module":
                runpy.run_module(target, run_name="__main__", alter_sys=True)
            else:
                sys.path.insert(0, str((REPO / target).parent))
                try:
                    runpy.run_path(str(REPO / target), run_name="__main__")
                finally:
                    sys.path.pop(0)
        except Parsed:
            return None
        except SystemExit as e:
            if e.code == 0 and args == ["--help"]:
                return None
            return f"exits {e.code} while parsing: {err.getvalue().strip()[-300:]}"
    return "ran to the end without parsing its arguments"


def resolve_problem(config: str | None, overrides: list[str], world: int) -> str | None:
    """None if `WORLD_SIZE=world hydra-pretrain config overrides --print-config` prints a config."""
    from hydra_dist.cli import pretrain
    argv = ([config] if config else []) + overrides + ["--print-config"]
    saved = {k: os.environ.pop(k, None) for k in ("WORLD_SIZE", "SLURM_NTASKS", "RANK")}
    os.environ["WORLD_SIZE"] = str(world)
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = pretrain.main(argv)
    except SystemExit as e:
        rc = e.code
    finally:
        os.environ.pop("WORLD_SIZE")
        os.environ.update({k: v for k, v in saved.items() if v is not None})
    if rc != 0:
        return f"--print-config at world size {world} exits {rc}: {err.getvalue().strip()[-400:]}"
    if "output_dir" not in (yaml.safe_load(out.getvalue()) or {}):
        return "--print-config printed no config"
    return None


# --- what each kind of command means ----------------------------------------------------------
def _opt(args: list[str], *names: str, default=None):
    for i, a in enumerate(args):
        for n in names:
            if a == n and i + 1 < len(args):
                return args[i + 1]
            if a.startswith(n + "="):
                return a.split("=", 1)[1]
    return default


def _without_opt(args: list[str], name: str) -> list[str]:
    out, skip = [], False
    for a in args:
        if skip:
            skip = False
        elif a == name:
            skip = True
        elif not a.startswith(name + "="):
            out.append(a)
    return out


def _sbatch_default(script: str, opt: str) -> str | None:
    for line in (REPO / script).read_text().splitlines():
        m = re.match(rf"#SBATCH {opt}=(\S+)", line)
        if m:
            return m.group(1)
    return None


def plan(cmd) -> tuple[list, list]:
    """(parse checks [(kind, target, args)], resolve checks [(config, overrides, world)])."""
    argv, raw = dummy_argv(cmd.argv), cmd.argv
    prog, args = argv[0], argv[1:]
    parses, resolves = [], []
    concrete = not any(has_placeholder(t) for t in raw[1:])

    def pretrain_run(pargs, world):
        cfg_over = [a for a in pargs if not a.startswith("-")]
        if concrete:
            config = cfg_over[0] if cfg_over and "=" not in cfg_over[0] else None
            resolves.append((config, cfg_over[1:] if config else cfg_over, world))

    if prog.startswith("hydra-"):
        parses.append(("entry", prog, args))
        world = int(cmd.env.get("WORLD_SIZE", 1))
        if prog == "hydra-pretrain":
            n = _opt(args, "--nproc-per-node")
            pretrain_run(_without_opt(_without_opt(args, "--nproc-per-node"), "--print-config"),
                         int(n) if n else world)
        elif prog in ("hydra-plan",) and concrete and args:
            resolves.append((args[0], [a for a in args[1:] if "=" in a and not a.startswith("-")], 1))
        elif _opt(args, "--config") and concrete:
            resolves.append((_opt(args, "--config"), [], 1))
    elif prog in ("python", "python3", "torchrun"):
        if "-m" in args:
            i = args.index("-m")
            mod, rest = args[i + 1], args[i + 2:]
            if mod == "x":  # `python -m ...`: a placeholder module
                return parses, resolves
            parses.append(("module", mod, rest))
            if prog == "torchrun" and mod == "hydra_dist.cli.pretrain":
                world = int(_opt(args, "--nproc_per_node", "--nproc-per-node", default=1)) * \
                    int(_opt(args, "--nnodes", default=1))
                pretrain_run(rest, world)
        elif args and args[0].endswith(".py"):
            parses.append(("script", args[0], args[1:]))
    elif prog == "sbatch":
        script = next((a for a in args if a.endswith(".sh")), None)
        if script is None:
            return parses, resolves
        parses.append(("path", script, []))
        i = args.index(script)
        opts, rest = args[:i], args[i + 1:]
        nodes = int(_opt(opts, "--nodes", "-N", default=_sbatch_default(script, "--nodes") or 1))
        device = cmd.env.get("HYDRA_DEVICE", "cuda")
        gpus = int(_opt(opts, "--gpus-per-node", default=_sbatch_default(script, "--gpus-per-node") or 8))
        ppn = int(cmd.env.get("HYDRA_PROCS_PER_NODE", 1 if device == "cpu" else gpus))
        m = re.search(r'hydra_main "\$\{HYDRA_DEFAULT_CONFIG:-([^}]*)\}"', (REPO / script).read_text())
        default = m.group(1) if m else ""
        if rest and ("=" not in rest[0] or (REPO / rest[0]).exists()):
            config, over = rest[0], rest[1:]
        else:
            config, over = default, rest
        if concrete and config:
            resolves.append((config, (["parallel.backend=gloo"] if device == "cpu" else []) + over,
                             nodes * ppn))
    elif prog == "bash" and args and not args[0].startswith("-"):
        parses.append(("path", args[0], []))
    return parses, resolves


def _checks():
    parses, resolves = {}, {}
    for cmd in COMMANDS:
        p, r = plan(cmd)
        for item in p:
            parses.setdefault((item[0], item[1], tuple(item[2])), []).append(cmd)
        for config, over, world in r:
            resolves.setdefault((config, tuple(over), world), []).append(cmd)
    return parses, resolves


PARSES, RESOLVES = _checks()


def _where(cmds) -> str:
    return f"{cmds[0].where}: `{cmds[0].text.strip()}`"


def test_docs_name_commands_of_every_kind():
    """The collector itself works: it finds the commands the README is built around."""
    progs = {c.program for c in COMMANDS}
    assert {"hydra-pretrain", "sbatch", "torchrun", "python", "hydra-export-hf"} <= progs, progs
    assert any(k[1] == "hydra_dist.cli.pretrain" for k in PARSES), PARSES.keys()
    assert any(k[0] == "configs/tiny_cpu.yaml" for k in RESOLVES), RESOLVES.keys()


def test_every_documented_command_parses():
    problems = []
    for (kind, target, args), cmds in sorted(PARSES.items()):
        if kind == "entry" and target not in ENTRY:
            problems.append(f"{_where(cmds)}: no console script {target} in setup.py")
        elif kind == "module" and importlib.util.find_spec(target.split(".")[0]) is None:
            problems.append(f"{_where(cmds)}: no module {target}")
        elif kind == "module" and not target.startswith("hydra_dist"):
            continue  # a tool (pytest): it exists, its flags are its own
        elif kind == "module" and importlib.util.find_spec(target) is None:
            problems.append(f"{_where(cmds)}: no module {target}")
        elif kind in ("path", "script") and not (REPO / target).is_file():
            problems.append(f"{_where(cmds)}: no file {target}")
        elif kind == "script" and "argparse" not in (REPO / target).read_text():
            continue  # a script without options (tests/slurm/cluster.py starts a cluster)
        elif kind in ("entry", "module", "script"):
            why = parse_problem(kind, target, list(args))
            if why:
                problems.append(f"{_where(cmds)}: {target} {' '.join(args)}: {why}")
    assert not problems, "documented commands that do not parse:\n" + "\n".join(problems)


def test_every_config_a_command_names_resolves():
    problems = []
    for (config, over, world), cmds in sorted(RESOLVES.items(), key=str):
        why = resolve_problem(config, list(over), world)
        if why:
            problems.append(f"{_where(cmds)}: {why}")
    assert not problems, "documented configs that do not resolve:\n" + "\n".join(problems)


def test_every_repository_path_and_test_the_docs_name_exists():
    problems = [f"{doc.relative_to(REPO)}:{ln}: {p} does not exist"
                for doc in DOCS for ln, p, ok in path_refs(doc) if not ok]
    assert not problems, "docs name missing files:\n" + "\n".join(problems)


# --- config keys ---------------------------------------------------------------------------
SECTIONS = ("model", "parallel", "data", "train", "checkpoint", "tracking", "tokenizer")
KEY_RE = re.compile(rf"^((?:{'|'.join(SECTIONS)})\.[\w.*]+?)(?:\.\*)?(=\S*)?$")
FILE_EXT = (".py", ".pt", ".json", ".yaml", ".safetensors", ".md", ".png", ".jsonl", ".db")


def is_code_reference(word: str) -> bool:
    """`train.trainer.train`, `data.collate.HydraCollator`: a module (and a name in it)."""
    parts = word.split(".")
    return any((REPO / "hydra_dist" / Path(*parts[:i])).with_suffix(".py").is_file()
               for i in range(2, len(parts) + 1))


def schema_has(key: str) -> bool:
    from hydra_dist.config import RunConfig
    tp = RunConfig
    for part in key.split("."):
        if part == "*":
            return True
        if not dataclasses.is_dataclass(tp):
            return True  # below a dict or list field: the keys are the user's
        hints = typing.get_type_hints(tp)
        if part not in hints:
            return False
        tp = hints[part]
    return True


def test_every_config_key_the_docs_name_is_in_the_schema():
    problems = []
    for doc in DOCS:
        for ln, line in enumerate(doc.read_text().splitlines(), 1):
            for span in re.findall(r"`([^`]+)`", line):
                for word in span.split():
                    m = KEY_RE.match(word)
                    if (m and not word.endswith(FILE_EXT) and not is_code_reference(word)
                            and not schema_has(m.group(1))):
                        problems.append(f"{doc.relative_to(REPO)}:{ln}: `{word}`: no key {m.group(1)}")
    assert not problems, "docs name config keys the schema lacks:\n" + "\n".join(problems)


REFUSED_RE = re.compile(r"`([\w.]+)` is refused for `task: (\w+)`")
TASK_CONFIG = {"unified": "configs/tiny_cpu.yaml", "tokenizer": "configs/tokenizer/tiny_stage1.yaml"}


def _full_key(leaf: str) -> str:
    from hydra_dist.config import RunConfig
    found = []

    def walk(tp, prefix):
        for name, sub in typing.get_type_hints(tp).items():
            if dataclasses.is_dataclass(sub):
                walk(sub, f"{prefix}{name}.")
            elif f"{prefix}{name}".endswith(leaf):
                found.append(f"{prefix}{name}")
    walk(RunConfig, "")
    assert len(found) == 1, (leaf, found)
    return found[0]


def test_what_the_docs_say_is_refused_is_refused():
    """`KEY` is refused for `task: T`: setting KEY on T's tiny config is a config error."""
    from hydra_dist.config import ConfigError, load_config
    claims, problems = 0, []
    for doc in DOCS:
        for ln, line in enumerate(doc.read_text().splitlines(), 1):
            for leaf, task in REFUSED_RE.findall(line):
                claims += 1
                key = _full_key(leaf)
                try:
                    load_config(TASK_CONFIG[task], [f"{key}=true"], world_size=1)
                    problems.append(f"{doc.relative_to(REPO)}:{ln}: {key}=true resolves for task {task}")
                except ConfigError:
                    pass
    # Shipped configs of a task must not use what the docs say that task refuses either.
    assert not problems, "docs claim refusals the config accepts:\n" + "\n".join(problems)


# --- SLURM knobs --------------------------------------------------------------------------------
def test_slurm_knobs_have_one_default_and_the_docs_table_matches():
    table = {m.group(1): m.group(2) for m in re.finditer(
        r"^\| `(HYDRA_\w+)`(?:, `HYDRA_\w+`)* \| ([^|]*) \|", (REPO / "docs/slurm.md").read_text(), re.M)}
    for m in re.finditer(r"^\| `(HYDRA_\w+)`, `(HYDRA_\w+)` \| ([^|]*) \|",
                         (REPO / "docs/slurm.md").read_text(), re.M):
        table[m.group(2)] = m.group(3)
    problems = []
    for script in ("slurm/_launch.sh", "slurm/env.sh"):
        text = (REPO / script).read_text()
        code = "\n".join(l for l in text.splitlines() if not l.lstrip().startswith("#"))
        for name in set(re.findall(r"^\s*(HYDRA_\w+)=\"\$\{\1:-", code, re.M)):
            n = len(re.findall(rf"^\s*{name}=", code, re.M))
            if n > 1:  # a knob's default in two places drifts apart
                problems.append(f"{script}: {name} gets its default {n} times")
        for name in sorted(set(re.findall(r"\$\{(HYDRA_\w+)", code))):
            defaults = set(re.findall(rf"\$\{{{name}:-([\w.]+)\}}", code))
            if name not in table:
                problems.append(f"{script}: {name} is not in docs/slurm.md's knobs table")
            elif len(defaults) > 1:
                problems.append(f"{script}: {name} has defaults {sorted(defaults)}")
            elif defaults and re.fullmatch(r"[\w.]+", d := defaults.pop()) and d not in table[name]:
                problems.append(f"{script}: {name} defaults to {d}; docs/slurm.md says {table[name].strip()}")
    assert not problems, "\n".join(problems)


def test_code_and_configs_point_only_at_files_in_the_repository():
    """Comments in the package, configs and SLURM scripts name docs that exist (no DESIGN.md or
    ../shared/ outside the repository)."""
    from doc_commands import MD_RE
    problems = []
    files = [*(REPO / "hydra_dist").rglob("*.py"), *(REPO / "configs").rglob("*.yaml"),
             *(REPO / "slurm").glob("*.sh"), REPO / "setup.py", REPO / "constraints.txt"]
    for f in files:
        for ln, line in enumerate(f.read_text().splitlines(), 1):
            names = MD_RE.findall(line)
            if "../shared" in line:
                names.append("../shared")
            for name in names:
                if name == "../shared" or not any((d / name).exists() for d in (REPO, REPO / "docs")):
                    problems.append(f"{f.relative_to(REPO)}:{ln}: {name}")
    assert not problems, "references to files outside the repository:\n" + "\n".join(problems)
