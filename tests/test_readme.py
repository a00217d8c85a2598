"""README.md's own commands, run as printed (small), so the README and the code cannot drift.

Extracted: every line of every fenced code block (``\\`` continuations joined, ``# comments``
dropped) and every inline code span that is a ``tdppo`` or ``python -m benchmarks`` command.
Each is one of:

- a bracketed usage synopsis (a block whose first command has ``[--flag ...]``): not run, but
  every ``--flag`` it names must be a flag of that subcommand;
- ``tdppo ...``, ``python -m tdppo ...``, ``torchrun ... -m tdppo ...``: run as printed, in
  one shared working directory and in README order, chained as a user chains them
  (``R``/``RUN``/``PATH``/``DIR`` name the run the preceding train produced). A fresh ``train``
  gets a small ``--frames`` and ``--num-envs 2 --num-steps 16 --epochs 1 --minibatches 2
  --no-compile --quiet --eval-episodes 0 --threads 1``; a ``--resume`` gets only a small
  ``--frames`` (the rest must come from the saved run, as the README promises);
- ``make TARGET``: the Makefile must have the target (``make test`` is not run recursively);
- ``pip install -e .[extra]``: pyproject.toml must define the extra;
- ``python -m benchmarks NAME ...`` (minutes each): the harness's parser must accept it;
- ``bash X.sh`` (scripts for the GPU machine or the network): X.sh must exist and parse;
- ```` ```python ```` blocks that import tdppo: run in a subprocess, with ``tdppo.train``'s
  frames made small; a block without an import is a fragment of the API shown in the prose
  around it, and must compile.

Anything else fails the test: a new README command must be taught here, never skipped.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import os
import re
import shlex
import subprocess
import sys
import textwrap
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
BATCH = 32  # --num-envs 2 --num-steps 16
SMALL = {"--num-envs": "2", "--num-steps": "16", "--epochs": "1", "--minibatches": "2"}
QUIET = ["--no-compile", "--quiet", "--eval-episodes", "0", "--threads", "1"]
RUN_PLACEHOLDERS = {"R", "RUN", "PATH", "DIR"}
VALUE_PLACEHOLDERS = {"ENV": "CartPole-v1", "S": "1", "K": "2", "E": "2", "I": "0", "N": "0"}


@dataclass
class Command:
    text: str  # as printed (continuations joined, comment dropped)
    where: str  # "README.md:<line>"
    synopsis: bool = False
    args: list[str] = field(default_factory=list)


@dataclass
class PythonBlock:
    code: str
    where: str


# ----------------------------------------------------------------------------- extraction


def _fences(text: str):
    """(language, first line number, lines) of each fenced block, and the prose outside."""
    blocks, prose, cur, lang, start = [], [], None, "", 0
    for i, line in enumerate(text.splitlines(), 1):
        if line.startswith("```"):
            if cur is None:
                cur, lang, start = [], line[3:].strip(), i + 1
            else:
                blocks.append((lang, start, cur))
                cur = None
        elif cur is None:
            prose.append((i, line))
        else:
            cur.append(line)
    assert cur is None, "README.md has an unclosed code fence"
    return blocks, prose


def _is_command(line: str) -> bool:
    if re.match(r"torchrun\s.*\s-m tdppo\s", line):
        return True
    return bool(re.match(r"(tdppo|python3? -m (tdppo|pip|benchmarks)|make|pip|bash)(\s|$)", line))


def extract(text: str) -> list[Command | PythonBlock]:
    """The README's commands and python blocks, in order. Raises AssertionError for a line
    of a shell block that is no command this test knows how to run or check."""
    out: list[tuple[int, Command | PythonBlock]] = []
    blocks, prose = _fences(text)
    for lang, start, lines in blocks:
        if lang == "python":
            out.append((start, PythonBlock("\n".join(lines), f"README.md:{start}")))
            continue
        if lang not in ("", "sh", "bash", "shell", "console"):
            continue
        if any(re.search("[\u2500-\u257f]", ln) for ln in lines):
            continue  # a tree diagram, not commands
        joined: list[tuple[int, str]] = []
        cont = False
        for n, ln in enumerate(lines, start):
            if cont or (joined and ln.startswith((" ", "\t")) and ln.strip()):
                joined[-1] = (joined[-1][0], joined[-1][1].rstrip("\\ ") + " " + ln.strip())
            elif ln.strip():
                joined.append((n, ln.strip()))
            cont = ln.rstrip().endswith("\\")
        synopsis = bool(joined) and " [" in joined[0][1]
        for n, ln in joined:
            cmd = _strip_comment(ln)
            where = f"README.md:{n}"
            assert _is_command(cmd), f"{where}: not a command this test knows: {ln!r}"
            out.append((n, Command(cmd, where, synopsis=synopsis)))
    for n, line in prose:
        for span in re.findall(r"`([^`]+)`", line):
            cli = re.match(r"(tdppo|python3? -m tdppo) (train|eval|inspect) \S", span)
            bench = re.match(r"python3? -m benchmarks \w", span)  # not `... <name> [...]`
            if cli or bench:
                out.append((n, Command(span, f"README.md:{n} (inline)")))
    return [c for _, c in sorted(out, key=lambda t: t[0])]


def _strip_comment(line: str) -> str:
    return re.sub(r"(^|\s)#.*$", "", line).strip()


# ----------------------------------------------------------------------------- running


def _set(args: list[str], flag: str, value: str) -> list[str]:
    """``flag value`` replaced in ``args`` (``--flag v`` or ``--flag=v``), else appended."""
    out, i, found = [], 0, False
    while i < len(args):
        a = args[i]
        if a == flag:
            out += [flag, value]
            i += 2
            found = True
        elif a.startswith(flag + "="):
            out.append(f"{flag}={value}")
            i += 1
            found = True
        else:
            out.append(a)
            i += 1
    return out if found else [*out, flag, value]


class Session:
    """One user at one shell: a working directory and the runs made so far."""

    def __init__(self, cwd: Path):
        self.cwd = cwd
        self.last: str | None = None  # the last run trained (any kind)
        self.single: str | None = None  # the last single-agent run
        self.population: str | None = None  # the last population run
        self.n = 0

    def exe(self, tokens: list[str], cmd: Command) -> tuple[list[str], list[str]]:
        """The program as printed (the venv's ``tdppo``/``python``/``torchrun``) and tdppo's
        own arguments."""
        bindir = Path(sys.executable).parent
        if tokens[0] == "tdppo":
            script = bindir / "tdppo"
            exe = [str(script)] if script.exists() else [sys.executable, "-m", "tdppo"]
            return exe, tokens[1:]
        if tokens[0] == "torchrun":  # torchrun [its options] -m tdppo ARGS
            i = next(i for i in range(len(tokens) - 1) if tokens[i : i + 2] == ["-m", "tdppo"])
            return [str(bindir / "torchrun"), *tokens[1:i], "-m", "tdppo"], tokens[i + 2 :]
        assert tokens[1:3] == ["-m", "tdppo"], f"{cmd.where}: `{cmd.text}`"
        return [sys.executable, "-m", "tdppo"], tokens[3:]

    def run(self, cmd: Command) -> None:
        tokens = shlex.split(cmd.text)
        if tokens[0] == "make":
            return _check_make(tokens[1:], cmd)
        if tokens[0] == "pip" or tokens[:4] == ["python", "-m", "pip", "install"]:
            return _check_pip(tokens, cmd)
        if tokens[0] == "bash":
            return _check_bash(tokens[1:], cmd)
        if tokens[1:3] == ["-m", "benchmarks"]:
            return _check_benchmark(tokens[3:], cmd)
        assert tokens[0] in ("tdppo", "python", "python3", "torchrun"), f"{cmd.where}: {cmd.text}"
        exe, args = self.exe(tokens, cmd)
        if cmd.synopsis:
            return _check_synopsis(args, cmd)
        sub, args = args[0], args[1:]
        if "--help" in args or "-h" in args:
            p = self._call(exe, [sub, *args], cmd)
            assert "usage" in p.stdout.lower()
            return
        before = self._runs()
        if sub == "train":
            args = self._train_args(args, cmd)
        elif sub in ("eval", "inspect"):
            args = self._path_args(args, cmd)
        else:
            raise AssertionError(f"{cmd.where}: unknown tdppo subcommand {sub!r}")
        p = self._call(exe, [sub, *args], cmd)
        if sub == "train":
            self._record(args, before, cmd)
        elif sub == "eval":
            res = json.loads(p.stdout.strip().splitlines()[-1])
            assert {"mean_return", "episodes"} <= set(res), f"{cmd.where}: {p.stdout[-500:]}"
        else:
            assert "frames" in p.stdout, f"{cmd.where}: {p.stdout[-500:]}"

    def _call(self, exe, args, cmd) -> subprocess.CompletedProcess:
        p = subprocess.run([*exe, *args], cwd=self.cwd, capture_output=True, text=True, env=ENV)
        assert p.returncode == 0, (
            f"{cmd.where}: `{cmd.text}` (run as `{shlex.join(args)}`) exited {p.returncode}:\n"
            f"{p.stderr[-3000:]}"
        )
        return p

    def _runs(self) -> set[Path]:
        d = self.cwd / "runs"
        return set(d.iterdir()) if d.is_dir() else set()

    def _values(self, args: list[str], cmd: Command) -> list[str]:
        out = []
        for a in args:
            if a in VALUE_PLACEHOLDERS:
                a = VALUE_PLACEHOLDERS[a]
            elif re.fullmatch(r"[A-Z]+", a) and a not in RUN_PLACEHOLDERS:
                raise AssertionError(f"{cmd.where}: unknown placeholder {a!r} in `{cmd.text}`")
            out.append(a)
        return out

    def _train_args(self, args: list[str], cmd: Command) -> list[str]:
        args = self._values(args, cmd)
        if "--resume" in args:  # only the frames: everything else must come from the run
            i = args.index("--run-dir") if "--run-dir" in args else None
            if i is not None and args[i + 1] in RUN_PLACEHOLDERS:
                assert self.last, f"{cmd.where}: `{cmd.text}` resumes before any train"
                args[i + 1] = self.last
            return _set(args, "--frames", str(2 * BATCH))
        if "--run-dir" in args:
            i = args.index("--run-dir")
            if args[i + 1] in RUN_PLACEHOLDERS:
                self.n += 1
                args[i + 1] = f"runs/readme-{self.n}"
        args = [a if a != "--compile" else "--no-compile" for a in args]
        args = _set(args, "--frames", str(BATCH))
        for flag, value in SMALL.items():
            args = _set(args, flag, value)
        return [*args, *QUIET]

    def _record(self, args: list[str], before: set[Path], cmd: Command) -> None:
        if "--run-dir" in args:
            run = str(self.cwd / args[args.index("--run-dir") + 1])
        else:
            new = self._runs() - before
            assert len(new) == 1, f"{cmd.where}: `{cmd.text}` made run dirs {sorted(new)}"
            run = str(new.pop())
        latest = Path(run) / "checkpoints" / "LATEST"
        assert latest.exists(), f"{cmd.where}: no checkpoint in {run}"
        if "--resume" in args:
            frames = int(args[args.index("--frames") + 1])
            assert int(latest.read_text().strip()) == frames, f"{cmd.where}: resume stopped early"
        self.last = run
        if "--seeds" in args or any(a.startswith(("--sweep", "--seeds=")) for a in args):
            self.population = run
        elif "--resume" not in args:
            self.single = run

    def _path_args(self, args: list[str], cmd: Command) -> list[str]:
        args = self._values(args, cmd)
        for i, a in enumerate(args):
            if a in RUN_PLACEHOLDERS:
                run = self.population if "--member" in args else self.single
                assert run, f"{cmd.where}: `{cmd.text}` names {a} before a matching train"
                args[i] = run
        return args


def _check_make(targets: list[str], cmd: Command) -> None:
    text = (ROOT / "Makefile").read_text()
    defined = set(re.findall(r"^([\w.-]+)\s*:", text, flags=re.M))
    for t in targets or ["(default)"]:
        assert t in defined, f"{cmd.where}: `{cmd.text}`: the Makefile has no target {t!r}"


def _check_bash(args: list[str], cmd: Command) -> None:
    # Scripts for another machine (the GPU one) or the network: not run, but they must exist
    # and parse.
    assert args and args[0].endswith(".sh"), f"{cmd.where}: `{cmd.text}`: expected bash X.sh"
    script = ROOT / args[0]
    assert script.is_file(), f"{cmd.where}: `{cmd.text}`: {args[0]} does not exist"
    p = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert p.returncode == 0, f"{cmd.where}: {args[0]} does not parse: {p.stderr[-1000:]}"


def _check_benchmark(args: list[str], cmd: Command) -> None:
    # Benchmarks take minutes: the name and flags must be ones the harness accepts.
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from benchmarks.__main__ import parser

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            parser().parse_known_args([a for a in args if a not in RUN_PLACEHOLDERS])
        except SystemExit as e:
            raise AssertionError(f"{cmd.where}: `{cmd.text}`: {err.getvalue().strip()}") from e


def _check_pip(tokens: list[str], cmd: Command) -> None:
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    specs = [t for t in tokens if t.startswith(".[")]
    assert specs, f"{cmd.where}: `{cmd.text}`: only `pip install -e .[extra]` is understood"
    for spec in specs:
        for extra in spec[2:].rstrip("]").split(","):
            assert extra in extras, f"{cmd.where}: pyproject.toml has no extra {extra!r}"


@functools.cache
def _help_flags(sub: str) -> set[str]:
    """The flags ``tdppo SUB --help`` lists (in process: the same parsers as the CLI)."""
    from tdppo.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as e:
        main([sub, "--help"])
    assert e.value.code in (0, None)
    return set(re.findall(r"(--[a-z][\w-]*)", out.getvalue()))


def _check_synopsis(args: list[str], cmd: Command) -> None:
    sub = args[0]
    assert sub in ("train", "eval", "inspect"), f"{cmd.where}: unknown subcommand {sub!r}"
    named = {f for a in args[1:] for f in re.findall(r"--[a-z][\w-]*", a)}
    known = _help_flags(sub) | ({"--seeds", "--sweep"} if sub == "train" else set())
    assert named <= known, f"{cmd.where}: `{cmd.text}` names unknown flags {named - known}"


PRELUDE = f"""
import dataclasses, tdppo.trainer as _t
_real = _t.train
def _small(config=None, *a, **kw):
    config = dataclasses.replace(
        config, frames=min(config.frames, {BATCH}), compile=False, quiet=True,
        eval_episodes=0, threads=1,
    )
    return _real(config, *a, **kw)
_t.train = _small
"""


def _run_python(block: PythonBlock, cwd: Path) -> None:
    code = textwrap.dedent(block.code)
    if not re.search(r"^(import|from) tdppo\b", code, flags=re.M):
        # A fragment that shows a piece of the API (no import: its names come from the
        # prose around it): it must at least be valid Python.
        compile(code, block.where, "exec")
        return
    code = PRELUDE + "\n" + code
    p = subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, env=ENV
    )
    assert p.returncode == 0, f"{block.where}: python block failed:\n{p.stderr[-3000:]}"


# ----------------------------------------------------------------------------- tests


def test_extractor_joins_continuations_drops_comments_and_refuses_unknown_lines():
    text = (
        "```\ntdppo train --env CartPole-v1 \\\n    --seed 1   # one agent\n"
        "make test  # the suite\n```\n"
        "Then `tdppo eval R --episodes 3`, not `tdppo.train`.\n"
        "```\ntdppo eval PATH [--episodes K]\n            [--seed S]\ntdppo inspect PATH\n```\n"
    )
    got = extract(text)
    assert [(c.text, c.synopsis) for c in got] == [
        ("tdppo train --env CartPole-v1 --seed 1", False),
        ("make test", False),
        ("tdppo eval R --episodes 3", False),
        ("tdppo eval PATH [--episodes K] [--seed S]", True),
        ("tdppo inspect PATH", True),
    ]
    with pytest.raises(AssertionError, match="not a command"):
        extract("```\ntdppo train\nfrobnicate --now\n```\n")


def test_every_readme_command_runs_as_printed(tmp_path):
    items = extract(README.read_text())
    commands = [c for c in items if isinstance(c, Command) and not c.synopsis]
    assert any(shlex.split(c.text)[1:2] == ["train"] for c in commands)
    assert any("--resume" in c.text for c in commands), "the README documents resume"
    session = Session(tmp_path)
    for item in items:
        if isinstance(item, PythonBlock):
            _run_python(item, tmp_path)
        else:
            session.run(item)
