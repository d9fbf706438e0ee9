"""Commands and repository paths as README.md and docs/*.md write them, for the docs test.

A command is a line of a shell code block, or an inline code span, that starts (after
`VAR=value` prefixes and `.venv/bin/`) with `hydra-*`, `sbatch`, `torchrun`, `python`, or
`bash`. Placeholders (`<stage>`, `CONFIG`, `OUT`, `key=value`, `...`) become dummy values, so
the argument parser still sees the flags the docs use; `[--opt A|B]` keeps the first choice.
"""
from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
COMMAND_WORDS = ("sbatch", "torchrun", "python", "python3", "bash")
PLACEHOLDER = "PLACEHOLDER"
# Top-level entries a repository path may start with, and hydra_dist's subpackages (docs name
# `models/gsb.py` for `hydra_dist/models/gsb.py`).
TOP = ("hydra_dist", "configs", "docs", "slurm", "tests", "benchmarks", "csrc", ".ci")
TOP_FILES = ("README.md", "constraints.txt", "setup.py", "pyproject.toml")
SUBPACKAGES = tuple(p.name for p in (REPO / "hydra_dist").iterdir() if p.is_dir() and
                    (p / "__init__.py").exists())


@dataclass
class Command:
    where: str                 # file:line
    text: str                  # as written (continuations joined)
    env: dict = field(default_factory=dict)
    argv: list = field(default_factory=list)   # placeholders replaced

    @property
    def program(self) -> str:
        return self.argv[0] if self.argv else ""


def _placeholder_free(text: str) -> str:
    """Placeholders out of the way of the shell lexer: `<stage>` -> PLACEHOLDER, `[a|b]` -> a."""
    text = re.sub(r"<[^<>\s]+>", PLACEHOLDER, text)
    text = re.sub(r"\[([^\[\]]*)\]", lambda m: re.sub(r"(\S+?)\|\S+", r"\1", m.group(1)), text)
    return text


def _is_placeholder(tok: str) -> bool:
    return (tok in ("...", "key=value", "key=value...") or PLACEHOLDER in tok
            or bool(re.fullmatch(r"[A-Z][A-Z0-9_]*", tok)))


def _split_commands(line: str) -> list[list[str]]:
    """Shell words of a line, split at && || ; | (comments dropped)."""
    lex = shlex.shlex(_placeholder_free(line), posix=True, punctuation_chars=";&|")
    lex.whitespace_split = True
    lex.commenters = "#"
    out = [[]]
    for tok in lex:
        if tok and set(tok) <= set(";&|"):
            out.append([])
        else:
            out[-1].append(tok)
    return [c for c in out if c]


def _as_command(words: list[str], where: str, text: str) -> Command | None:
    env = {}
    while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", words[0]):
        k, v = words.pop(0).split("=", 1)
        env[k] = v
    if not words:
        return None
    prog = words[0].removeprefix(".venv/bin/")
    if not (prog.startswith("hydra-") or prog in COMMAND_WORDS):
        return None
    return Command(where, text, env, [prog, *words[1:]])


def _code_lines(path: Path):
    """(line number, text) of the shell lines in fenced blocks (continuations joined), and of
    every inline code span outside fences."""
    lines = path.read_text().splitlines()
    fence, lang, pending, start = False, "", "", 0
    for i, line in enumerate(lines, 1):
        s = line.strip()
        if s.startswith("```"):
            fence, lang = (not fence), s[3:].strip().lower()
            continue
        if fence:
            if lang not in ("", "bash", "sh", "shell", "console"):
                continue
            if not pending:
                start = i
            if s.endswith("\\"):
                pending += s[:-1] + " "
                continue
            yield start, pending + s
            pending = ""
        else:
            for span in re.findall(r"`([^`]+)`", line):
                yield i, span


def collect_commands() -> list[Command]:
    cmds = []
    for doc in DOCS:
        rel = doc.relative_to(REPO)
        for ln, text in _code_lines(doc):
            try:
                parts = _split_commands(text)
            except ValueError:  # unbalanced quotes: prose in backticks, not a command
                continue
            for words in parts:
                c = _as_command(list(words), f"{rel}:{ln}", text)
                if c:
                    cmds.append(c)
    return cmds


def dummy_argv(argv: list[str]) -> list[str]:
    """Placeholders replaced: `output_dir=runs/<name>` and `--partition=<p>` keep their key, N
    becomes 1 (a count), CONFIG and OUT become x; `...` and `key=value` go."""
    out = []
    for tok in argv:
        if tok in ("...", "key=value", "key=value..."):
            continue
        if "=" in tok:
            k, v = tok.split("=", 1)
            out.append(f"{k}={'x' if _is_placeholder(v) else v}")
        elif _is_placeholder(tok):
            out.append("1" if tok == "N" else "x")
        else:
            out.append(tok)
    return out


def has_placeholder(tok: str) -> bool:
    return _is_placeholder(tok) or (("=" in tok) and _is_placeholder(tok.split("=", 1)[1]))


# --- repository paths -----------------------------------------------------------------------
PATH_RE = re.compile(r"(?<![\w/.$<>~:-])((?:\.ci|[A-Za-z_][\w-]*)/[\w./{},*-]*[\w*}/])")
MD_RE = re.compile(r"(?<![\w/.-])((?:[\w-]+/)*[\w-]+\.md)\b")
TESTFILE_RE = re.compile(r"(?<![\w/.-])(test_\w+\.py)(?:::(\w+))?")


def _expand_braces(p: str) -> list[str]:
    m = re.search(r"\{([^{}]*)\}", p)
    if not m:
        return [p]
    return [q for alt in m.group(1).split(",") for q in _expand_braces(p[:m.start()] + alt + p[m.end():])]


def _exists(rel: str, base: Path) -> bool:
    for root in (REPO, base):
        for cand in _expand_braces(rel):
            if any(ch in cand for ch in "*?"):
                if list(root.glob(cand)):
                    return True
            elif (root / cand).exists():
                return True
    return False


def path_refs(doc: Path):
    """(line, path, ok) for each repository path the doc names in code spans and blocks, each
    markdown link target, each `*.md` file name and each `test_*.py[::name]`."""
    fenced, fence = set(), False
    lines = doc.read_text().splitlines()
    for i, line in enumerate(lines, 1):
        if line.strip().startswith("```"):
            fence = not fence
        elif fence:
            fenced.add(i)
    for ln, line in enumerate(lines, 1):
        # code spans, or the whole line inside a fenced block (diagrams and shell lines)
        code = line if ln in fenced else " ".join(re.findall(r"`([^`]+)`", line))
        for target in re.findall(r"\]\(([^)#\s]+)", line):
            if "://" not in target:
                yield ln, target, _exists(target, doc.parent) or (REPO / doc.parent / target).exists()
        for name in MD_RE.findall(line):
            yield ln, name, any((d / name).exists() for d in (REPO, REPO / "docs", doc.parent))
        for name, func in TESTFILE_RE.findall(line):
            hits = list((REPO / "tests").rglob(name))
            ok = bool(hits) and (not func or any(re.search(rf"^def {func}\b", h.read_text(), re.M)
                                                 for h in hits))
            yield ln, f"{name}::{func}" if func else name, ok
        for p in PATH_RE.findall(code):
            first = p.split("/")[0]
            if first in TOP:
                yield ln, p, _exists(p, doc.parent)
            elif first in SUBPACKAGES and p.endswith(".py"):
                yield ln, p, _exists(f"hydra_dist/{p}", doc.parent)
        for f in TOP_FILES:
            if re.search(rf"(?<![\w/.-]){re.escape(f)}\b", code):
                yield ln, f, (REPO / f).exists()

