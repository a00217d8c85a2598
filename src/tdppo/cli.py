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
              [--seeds 0-31] [--sweep lr=1e-4,3e-4]   many agents in one process (vmapped)
  tdppo eval PATH [--episodes K] [--seed S] [--member I]
                                              last stdout line: JSON with mean_return, episodes
  tdppo inspect PATH                          keys, shapes, dtypes, frames, versions, verification
"""


def _train(argv: list[str]) -> int:
    import tyro

    from tdppo.config import Config

    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--env", default=Config.env)
    pre.add_argument("--seeds", default=None)
    pre.add_argument("--sweep", action="append", default=[])
    known, rest = pre.parse_known_args(argv)
    if known.env != Config.env:
        rest = ["--env", known.env, *rest]
    default = Config.for_env(known.env)
    cfg = tyro.cli(Config, args=rest, default=default, prog="tdppo train", description=_TRAIN_DOC)
    if known.seeds is None and not known.sweep:
        from tdppo.trainer import train

        train(cfg)
        return 0
    from tdppo.population import train_population

    seeds = _parse_seeds(known.seeds) if known.seeds is not None else [cfg.seed]
    train_population(cfg, seeds, _parse_sweep(known.sweep))
    return 0


_TRAIN_DOC = """Train PPO. Every Config field is a flag; the preset of --env sets the defaults.

Populations (many agents in one process, vmapped): --seeds 0-31 (or 0,3,7) trains one agent
per seed; --sweep lr=1e-4,3e-4 (repeatable) crosses hyperparameter values with the seeds."""


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
    p = argparse.ArgumentParser(prog="tdppo eval", description="Evaluate a checkpoint.")
    p.add_argument("path", help="run directory (its latest intact checkpoint) or checkpoint dir")
    p.add_argument("--episodes", type=int, default=10, help="episodes to run (default 10)")
    p.add_argument("--seed", type=int, default=0, help="seed of the eval envs (default 0)")
    p.add_argument("--stochastic", action="store_true", help="sample actions instead of the mode")
    p.add_argument("--device", default="cpu", help="device to run on (default cpu)")
    p.add_argument("--member", type=int, default=None, help="member of a population checkpoint")
    a = p.parse_args(argv)
    from tdppo.evaluation import evaluate

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
