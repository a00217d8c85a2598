"""``python -m benchmarks <name> [--quick|--smoke|--full] [--seeds N] [--threads N] [--out DIR]``

Names: ``throughput``, ``learning`` (here), ``env_throughput``, ``update_speed``,
``resume_integrity``, ``population``, ``step_profile`` (modules beside this one, each with
``main(argv) -> int | None``), and
``all`` (each in turn; a missing or failing one is reported and the rest still run).

Modules written elsewhere receive ``[--quick | --smoke] [--threads N] [--out DIR]`` plus any
arguments this parser does not know. Results go to ``benchmarks/results/`` unless ``--out``;
files of ``--quick`` / ``--smoke`` runs carry that suffix.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
import traceback
from pathlib import Path

OWN = ("throughput", "learning")
EXTERNAL = ("env_throughput", "update_speed", "resume_integrity", "population", "step_profile")
NAMES = (*OWN, *EXTERNAL)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n")[0])
    p.add_argument("name", choices=(*NAMES, "all"))
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="each benchmark under 2 minutes")
    mode.add_argument("--smoke", action="store_true", help="tiny pipeline check (tests)")
    mode.add_argument("--full", action="store_true", help="learning: add HalfCheetah-v5")
    p.add_argument("--seeds", type=int, default=None, help="learning: seeds (default 3)")
    p.add_argument("--threads", type=int, default=1, help="torch threads for every system")
    p.add_argument("--frames", type=int, default=None, help="override frames per run")
    p.add_argument("--out", type=Path, default=None, help="results directory")
    p.add_argument(
        "--envs",
        type=_envs,
        default=(),
        help="throughput (training) and learning: comma-separated env ids, each ENV or "
        "ENV:FRAMES, replacing the mode's envs (e.g. Pendulum-v1,HalfCheetah-v5:131072)",
    )
    p.add_argument(
        "--parts",
        default=None,
        help="throughput: comma-separated sections to run (process,training,sweep,ceilings,"
        "population; default all)",
    )
    return p


def _envs(text: str) -> tuple[tuple[str, int | None], ...]:
    """``"A,B:4096"`` -> ``(("A", None), ("B", 4096))``."""
    out = []
    for item in filter(None, (t.strip() for t in text.split(","))):
        env_id, _, frames = item.partition(":")
        try:
            out.append((env_id, int(frames) if frames else None))
        except ValueError as e:
            raise argparse.ArgumentTypeError(f"bad frames in {item!r}") from e
    return tuple(out)


def _mode(args: argparse.Namespace) -> str:
    return "quick" if args.quick else "smoke" if args.smoke else "full" if args.full else "default"


def _external(name: str, args: argparse.Namespace, extra: list[str]) -> tuple[str, str]:
    """Run ``benchmarks.<name>.main(argv)``; ``(status, message)``, status ok|absent|failed."""
    try:
        mod = importlib.import_module(f"benchmarks.{name}")
    except ModuleNotFoundError as e:
        if e.name == f"benchmarks.{name}":
            return "absent", f"benchmarks/{name}.py is not there yet"
        raise
    argv = ["--quick"] if args.quick else ["--smoke"] if args.smoke else []
    argv += ["--threads", str(args.threads)]
    if args.out is not None:
        argv += ["--out", str(args.out)]
    argv += extra
    try:
        rc = mod.main(argv)
    except SystemExit as e:  # argparse usage errors, sys.exit in main
        rc = e.code
    if rc in (None, 0):
        return "ok", ""
    return "failed", f"main({argv}) returned {rc}"


def _own(name: str, args: argparse.Namespace) -> tuple[str, str]:
    from benchmarks import common

    out = args.out if args.out is not None else common.RESULTS
    mode = _mode(args)
    if name == "throughput":
        from benchmarks import throughput

        parts = tuple(args.parts.split(",")) if args.parts else throughput.PARTS
        throughput.run(
            "full" if mode == "default" else mode,
            args.threads,
            out,
            frames=args.frames,
            parts=parts,
            envs=args.envs,
        )
    else:
        from benchmarks import learning

        learning.run(mode, args.threads, out, seeds=args.seeds, frames=args.frames, envs=args.envs)
    return "ok", ""


def run_one(name: str, args: argparse.Namespace, extra: list[str]) -> tuple[str, str]:
    """One benchmark; an exception becomes status ``failed`` with its message."""
    try:
        return _own(name, args) if name in OWN else _external(name, args, extra)
    except Exception as e:
        traceback.print_exc()
        return "failed", f"{type(e).__name__}: {e}"


def main(argv: list[str] | None = None) -> int:
    args, extra = parser().parse_known_args(argv)
    if extra and args.name in OWN:
        parser().error(f"unrecognized arguments: {' '.join(extra)}")
    known = ("process", "training", "sweep", "ceilings", "population")  # throughput.PARTS
    if args.parts and not set(args.parts.split(",")) <= set(known):
        parser().error(f"--parts takes a comma-separated subset of {','.join(known)}")
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import torch

    torch.set_num_threads(args.threads)
    names = NAMES if args.name == "all" else (args.name,)
    statuses = {}
    for name in names:
        t0 = time.perf_counter()
        print(f"### {name} ({_mode(args)}, {args.threads} thread(s))", flush=True)
        status, msg = run_one(name, args, extra)
        statuses[name] = (status, msg, time.perf_counter() - t0)
        print(f"### {name}: {status} {msg} ({statuses[name][2]:.0f}s)", flush=True)
    if len(names) > 1:
        print("\nsummary:")
        for name, (status, msg, secs) in statuses.items():
            print(f"  {name:18s} {status:7s} {secs:6.0f}s  {msg}")
    if args.name != "all" and statuses[args.name][0] == "absent":
        return 2
    return 1 if any(s == "failed" for s, _, _ in statuses.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
