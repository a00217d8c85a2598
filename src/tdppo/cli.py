"""``tdppo`` command line: ``train``, ``eval``, ``inspect``.

``tdppo train`` flags are generated from :class:`tdppo.Config` (every field is a flag). A fresh
run's config is the defaults, then the preset of ``--env``, then the flags typed. A resumed run's
(``--resume --run-dir R``) is the config saved with R's checkpoint, then only the flags typed; a
typed flag that cannot change mid-run (:data:`tdppo.config.RESUME_FIXED`) is refused.

No parser accepts abbreviations (``--seed`` is never read as ``--seeds``). Errors a user can
cause (unknown flag, bad value, bad env id, config mismatch on resume, damaged checkpoint, ...)
print one line on stderr and exit with status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import difflib
import io
import json
import os
import re
import sys
from typing import TYPE_CHECKING, NoReturn

if TYPE_CHECKING:
    from tdppo.config import Config

__all__ = ["main", "parse_train"]

_USAGE = """usage: tdppo {train,eval,inspect} ...

  tdppo train [--env Pendulum-v1] [--frames N] [--seed S] [--num-envs E]
              [--device auto|cpu|cuda] [--run-dir DIR] [--checkpoint-every FRAMES]
              [--compile/--no-compile] [... every Config field: tdppo train --help]
              [--seeds 0-31] [--sweep lr=1e-4,3e-4]   many agents in one process (vmapped)
  tdppo train --resume --run-dir DIR [--frames N] [flags to change]
                                              the saved run's config, then the flags typed
  tdppo eval PATH [--episodes K] [--seed S] [--member I]
                                              last stdout line: JSON with mean_return, episodes
  tdppo inspect PATH                          keys, shapes, dtypes, frames, versions, verification
"""

_TRAIN_DOC = """Train PPO. Every Config field is a flag; the preset of --env sets the defaults.

Resume: --resume --run-dir R continues R from its latest intact checkpoint with the config saved
there; only the flags typed change it (e.g. --frames N), and a flag that cannot change mid-run
is refused. Populations (many agents in one process, vmapped): --seeds 0-31 (or 0,3,7) trains
one agent per seed; --sweep lr=1e-4,3e-4 (repeatable) crosses hyperparameter values with the
seeds."""


class _Parser(argparse.ArgumentParser):
    """argparse without abbreviations, whose errors are one line (``prog: error: ...``)."""

    def __init__(self, *args, **kwargs):
        kwargs["allow_abbrev"] = False
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        raise SystemExit(2)


_OWN_FLAGS = ("--seeds", "--sweep")  # parsed before tyro (not Config fields)
_RULE = re.compile(r"^[\s\-\u2500-\u257f]*$")  # box-drawing and dash-only lines


def _one_line(text: str) -> str:
    """tyro's boxed error message -> ``"<message> (did you mean --x?)"``, one line."""
    lines = [ln.strip(" \t\u2502\u2503|").strip() for ln in text.splitlines()]
    sections: list[list[str]] = [[]]
    for ln in lines:
        if _RULE.match(ln):
            if sections[-1]:
                sections.append([])
        else:
            sections[-1].append(ln)
    sections = [s for s in sections if s]
    # The box title ("Unrecognized options", "Value error", ...) comes first: in the top border
    # (a terminal) or on a line of its own above a rule (plain output). Then the message.
    if sections and len(sections[0]) > 1:
        sections[0] = sections[0][1:]
    else:
        sections = sections[1:]
    msg = " ".join(sections[0] if sections else [])
    msg = re.sub(r"\s+", " ", msg).strip() or "invalid arguments (see tdppo train --help)"
    rest = [ln for sec in sections[1:] for ln in sec]
    meant = [i for i, ln in enumerate(rest) if ln.startswith("Perhaps you meant")]
    flags = []
    if meant:  # candidate flags start their lines; their descriptions are indented below
        flags = [re.match(r"--[\w-]+", ln)[0] for ln in rest[meant[0] + 1 :] if ln.startswith("--")]
    if msg.startswith("Unrecognized options"):  # the flags tyro does not parse
        typed = re.findall(r"--[\w-]+", msg)
        flags += [f for t in typed for f in difflib.get_close_matches(t, _OWN_FLAGS, 1)]
    flags = [f for f in dict.fromkeys(flags) if f != "--help"][:3]
    if flags:
        msg += f" (did you mean {' or '.join(flags)}?)"
    return msg


def _tyro_parse(args: list[str], default: Config) -> Config:
    """Parse ``args`` into a Config with tyro (no abbreviations); errors are one line."""
    import tyro

    from tdppo.config import Config

    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            return tyro.cli(
                Config, args=args, default=default, prog="tdppo train", description=_TRAIN_DOC
            )
    except SystemExit as e:
        if e.code not in (0, None):
            print(f"tdppo train: error: {_one_line(err.getvalue())}", file=sys.stderr)
        else:
            sys.stderr.write(err.getvalue())
        raise


def parse_train(argv: list[str]) -> tuple[Config, list[int] | None, dict | None]:
    """``tdppo train`` arguments -> ``(effective config, seeds, sweep)``; nothing is touched.

    A fresh run: the defaults, then ``PRESETS[--env]``, then the flags typed. With
    ``--resume``: the config saved with ``--run-dir``'s latest intact checkpoint, then only the
    flags typed. Raises ``ValueError`` (one line) for ``--resume`` without ``--run-dir``, a
    typed change of a field in ``RESUME_FIXED`` (listed as ``name: saved -> new``), a bad
    ``--seeds``/``--sweep`` or an invalid config; ``CheckpointError`` for a run that cannot be
    resumed; exits 2 (one line) for an unknown flag or a bad value.
    """
    from tdppo.config import Config, config_diff

    pre = _Parser(prog="tdppo train", add_help=False)
    pre.add_argument("--seeds", default=None)
    pre.add_argument("--sweep", action="append", default=[])
    known, rest = pre.parse_known_args(argv)
    seeds = _parse_seeds(known.seeds) if known.seeds is not None else None
    sweep = _parse_sweep(known.sweep)
    first = _tyro_parse(rest, Config())  # what was typed for env / resume / run_dir
    if not first.resume:
        cfg = _tyro_parse(rest, Config.for_env(first.env))
        return cfg.validate(), seeds, sweep
    if not first.run_dir:
        raise ValueError("--resume needs --run-dir (the run to continue)")
    from tdppo import checkpoint as ckpt

    path, _ = ckpt.resolve(first.run_dir)  # the trainer reports skipped checkpoints itself
    saved_dict = ckpt.read_manifest(path)["config"]
    saved = Config.from_dict(saved_dict)
    cfg = _tyro_parse(rest, saved)
    cfg = dataclasses.replace(cfg, resume=True, run_dir=first.run_dir)
    diff = config_diff(saved.to_dict(), cfg)
    if diff:
        raise ValueError(
            f"cannot resume {first.run_dir}: fields that cannot change mid-run differ "
            f"(saved -> typed): {', '.join(diff)}; nothing was changed"
        )
    return cfg.validate(), seeds, sweep


def _train(argv: list[str]) -> int:
    cfg, seeds, sweep = parse_train(argv)
    from tdppo.trainer import train

    _freeze_imports()
    # seeds/sweep None on resume: the driver continues the run's own members (if any), and
    # compares them with the ones typed otherwise.
    train(cfg, seeds=seeds, sweep=sweep)
    return 0


def _freeze_imports() -> None:
    """Once the heavy imports are done: ``gc.freeze()`` moves the ~350k objects they made (torch,
    tensordict, TorchRL) out of the cyclic collector's reach. They live as long as the process
    anyway; unfrozen, the full collections during training and the interpreter's collections at
    exit walk them all (the exit alone took ~0.8 s). The CLI owns its process; the Python API
    (:func:`tdppo.train`) leaves the caller's collector alone."""
    import gc

    gc.freeze()


def _parse_seeds(spec: str) -> list[int]:
    """``"0-31"`` or ``"0,3,7"`` (or a mix: ``"0-3,10"``)."""
    out: list[int] = []
    try:
        for part in spec.split(","):
            if "-" in part.strip()[1:]:
                lo, hi = part.split("-", 1)
                out.extend(range(int(lo), int(hi) + 1))
            else:
                out.append(int(part))
    except ValueError:
        raise ValueError(
            f"--seeds {spec!r}: expected a range like 0-31 or a list like 0,3,7"
        ) from None
    if not out:
        raise ValueError(f"--seeds {spec!r} names no seed")
    return out


def _parse_sweep(specs: list[str]) -> dict[str, list[float]] | None:
    """``["lr=1e-4,3e-4", "gamma=0.9,0.99"]`` -> ``{"lr": [...], "gamma": [...]}``."""
    if not specs:
        return None
    sweep: dict[str, list[float]] = {}
    for spec in specs:
        name, sep, values = spec.partition("=")
        try:
            if not sep:
                raise ValueError
            sweep[name.strip().replace("-", "_")] = [float(v) for v in values.split(",")]
        except ValueError:
            raise ValueError(
                f"--sweep {spec!r}: expected FIELD=v1,v2,... (e.g. lr=1e-4,3e-4)"
            ) from None
    return sweep


def _eval(argv: list[str]) -> int:
    p = _Parser(prog="tdppo eval", description="Evaluate a checkpoint.")
    p.add_argument("path", help="run directory (its latest intact checkpoint) or checkpoint dir")
    p.add_argument("--episodes", type=int, default=10, help="episodes to run (default 10)")
    p.add_argument("--seed", type=int, default=0, help="seed of the eval envs (default 0)")
    p.add_argument("--stochastic", action="store_true", help="sample actions instead of the mode")
    p.add_argument("--device", default="cpu", help="device to run on (default cpu)")
    p.add_argument("--member", type=int, default=None, help="member of a population checkpoint")
    a = p.parse_args(argv)
    from tdppo.evaluation import evaluate

    _freeze_imports()

    res = evaluate(
        a.path,
        episodes=a.episodes,
        seed=a.seed,
        deterministic=not a.stochastic,
        device=a.device,
        member=a.member,
    )
    print(json.dumps(res))
    return 0


def _inspect(argv: list[str]) -> int:
    p = _Parser(prog="tdppo inspect", description="Describe a checkpoint.")
    p.add_argument("path", help="run directory or checkpoint dir")
    a = p.parse_args(argv)
    from tdppo.checkpoint import inspect

    _freeze_imports()
    print(inspect(a.path))
    return 0


def _refuse(cmd: str, e: Exception) -> int:
    """A user-caused failure: one line on stderr, exit status 2 (TDPPO_TRACEBACK=1: raise)."""
    if os.environ.get("TDPPO_TRACEBACK"):
        raise e
    msg = " ".join(str(e).split())  # one line, whatever the message
    print(f"tdppo {cmd}: error: {msg}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_USAGE)
        return 0 if argv else 2
    cmd, rest = argv[0], argv[1:]
    commands = {"train": _train, "eval": _eval, "inspect": _inspect}
    if cmd not in commands:
        print(
            f"tdppo: unknown command {cmd!r}; expected one of train, eval, inspect", file=sys.stderr
        )
        return 2
    import errno

    from tdppo import lazy_dynamo

    lazy_dynamo.install()  # before tensordict and TorchRL: ~1 s of every command's start
    from tdppo.checkpoint import CheckpointError
    from tdppo.signals import Preempted

    try:
        return commands[cmd](rest)
    except Preempted as e:  # SIGTERM / SIGINT: stopped after saving a checkpoint (143 / 130)
        print(e, file=sys.stderr)
        return e.exit_status
    except (ValueError, CheckpointError, FileNotFoundError) as e:
        return _refuse(cmd, e)
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):  # a full disk (metrics.csv, say)
            raise
        return _refuse(cmd, e)
    except KeyboardInterrupt:
        print(f"tdppo {cmd}: interrupted", file=sys.stderr)
        return 130
