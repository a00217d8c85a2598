"""``tdppo`` command line: ``train``, ``eval``, ``inspect``.

``tdppo train`` flags are generated from :class:`tdppo.Config` (every field is a flag); the
preset of ``--env`` supplies defaults that flags override. Errors a user can cause (bad env id,
config mismatch on resume, damaged checkpoint, ...) print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

__all__ = ["main"]

_USAGE = """usage: tdppo {train,eval,inspect} ...

  tdppo train [--env Pendulum-v1] [--frames N] [--seed S] [--num-envs E]
              [--device auto|cpu|cuda] [--run-dir DIR] [--checkpoint-every FRAMES]
              [--compile/--no-compile] [--resume] [... every Config field: tdppo train --help]
  tdppo eval PATH [--episodes K] [--seed S]   last stdout line: JSON with mean_return, episodes
  tdppo inspect PATH                          keys, shapes, dtypes, frames, versions, verification
"""


def _train(argv: list[str]) -> int:
    import tyro

    from tdppo.config import Config

    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--env", default=Config.env)
    known, _ = pre.parse_known_args(argv)
    default = Config.for_env(known.env)
    cfg = tyro.cli(Config, args=argv, default=default, prog="tdppo train")
    from tdppo.trainer import train

    train(cfg)
    return 0


def _eval(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="tdppo eval", description="Evaluate a checkpoint.")
    p.add_argument("path", help="run directory (its latest intact checkpoint) or checkpoint dir")
    p.add_argument("--episodes", type=int, default=10, help="episodes to run (default 10)")
    p.add_argument("--seed", type=int, default=0, help="seed of the eval envs (default 0)")
    p.add_argument("--stochastic", action="store_true", help="sample actions instead of the mode")
    p.add_argument("--device", default="cpu", help="device to run on (default cpu)")
    a = p.parse_args(argv)
    from tdppo.evaluation import evaluate

    res = evaluate(
        a.path, episodes=a.episodes, seed=a.seed, deterministic=not a.stochastic, device=a.device
    )
    print(json.dumps(res))
    return 0


def _inspect(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="tdppo inspect", description="Describe a checkpoint.")
    p.add_argument("path", help="run directory or checkpoint dir")
    a = p.parse_args(argv)
    from tdppo.checkpoint import inspect

    print(inspect(a.path))
    return 0


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
    from tdppo.checkpoint import CheckpointError

    try:
        return commands[cmd](rest)
    except (ValueError, CheckpointError, FileNotFoundError) as e:
        if os.environ.get("TDPPO_TRACEBACK"):
            raise
        print(f"tdppo {cmd}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"tdppo {cmd}: interrupted", file=sys.stderr)
        return 130
