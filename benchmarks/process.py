"""Whole-process wall clock: each system trains in a fresh Python process, start to exit.

A user pays the whole process: interpreter start, imports, compilation, training, exit. Each row
here is one subprocess, timed from ``Popen`` to its exit by this (parent) process; it also reports
the time to the end of the first update (from ``Popen``) and the steady-state SPS (frames per
second after the first iteration).

Rows (interleaved: A B C D E, A B C D E, ...):

- **CleanRL-style**, **SB3**: ``python -m benchmarks.process child <system> ...`` runs the
  baseline's ``run`` (``benchmarks/baselines``); the child prints the wall-clock instant of the
  end of its first iteration.
- **tdppo compiled, cold cache**: ``python -m tdppo train ...``, the command a user types, with
  ``TORCHINDUCTOR_CACHE_DIR`` pointing at a new empty folder, and ``TMPDIR`` at an empty folder
  in it (torch keeps some compile artifacts under the temp folder, outside the cache): every
  graph compiles from scratch, as on a fresh machine.
- **tdppo compiled, warm cache**: the same command in the same folder again (the cold row of the
  same repeat filled it): a second run on the same machine.
- **tdppo eager**: ``--no-compile``.

For tdppo the first update's end is when its ``metrics.csv`` (``--log-every 1``) gets its first
row, polled every 10 ms by the parent.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from benchmarks.common import REPO, finite_median, steady_sps

CLEANRL, SB3 = "CleanRL-style", "SB3"
COLD, WARM, EAGER = "tdppo compiled, cold cache", "tdppo compiled, warm cache", "tdppo eager"
ROWS = (CLEANRL, SB3, COLD, WARM, EAGER)
REFERENCE = CLEANRL
_BASELINE_MODULES = {CLEANRL: "cleanrl_ppo", SB3: "sb3_ppo"}
_MARK = "@@process@@"


def tdppo_argv(
    env_id: str,
    frames: int,
    seed: int,
    num_envs: int,
    num_steps: int,
    epochs: int,
    minibatches: int,
    threads: int,
    compile: bool,
    run_dir: Path,
) -> list[str]:
    """``python -m tdppo train`` with the shared hyperparameters (lr annealed to 0 over the run,
    as the issue's setup; no entropy bonus, no value clipping, no checkpoints, no evaluation)."""
    from benchmarks.common import HYPER

    return [
        sys.executable, "-m", "tdppo", "train",
        "--env", env_id, "--frames", str(frames), "--seed", str(seed),
        "--num-envs", str(num_envs), "--num-steps", str(num_steps),
        "--epochs", str(epochs), "--minibatches", str(minibatches),
        "--lr", str(HYPER["lr"]), "--anneal-frames", str(frames),
        "--gamma", str(HYPER["gamma"]), "--gae-lambda", str(HYPER["gae_lambda"]),
        "--clip-eps", str(HYPER["clip_coef"]), "--ent-coef", str(HYPER["ent_coef"]),
        "--vf-coef", str(HYPER["vf_coef"]), "--max-grad-norm", str(HYPER["max_grad_norm"]),
        "--adam-eps", str(HYPER["adam_eps"]), "--no-clip-vloss", "--norm-adv",
        "--threads", str(threads), "--device", "cpu", "--checkpoint-every", "0",
        "--eval-episodes", "0", "--log-every", "1", "--quiet", "--no-tensorboard",
        "--compile" if compile else "--no-compile", "--run-dir", str(run_dir),
    ]  # fmt: skip


def _env(threads: int, cache_dir: Path | None, src: Path | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = str(threads)
    src = REPO / "src" if src is None else src
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(src), str(REPO), env.get("PYTHONPATH", "")) if p
    )
    if cache_dir is not None:
        env["TORCHINDUCTOR_CACHE_DIR"] = str(cache_dir)
        # torch writes some compile artifacts under the temp folder whatever the cache folder
        # (inductor's precompiled headers, in /tmp/torchinductor_<user>): a fresh one per cache
        # folder, so that cold is a fresh machine's first run for every row, [A] included
        tmp = cache_dir / "tmp"
        tmp.mkdir(parents=True, exist_ok=True)
        env["TMPDIR"] = str(tmp)
    return env


def _first_row(metrics: Path) -> bool:
    try:
        with open(metrics) as f:
            return sum(1 for line in f if line[:1].isdigit()) >= 1
    except OSError:
        return False


def run_tdppo(
    kw: dict,
    compile: bool,
    cache_dir: Path | None,
    timeout: float,
    src: Path | None = None,
    extra: Sequence[str] = (),
) -> dict:
    """One ``python -m tdppo train`` process; wall clock, first-update time, steady SPS (frames
    per agent). ``src``: the folder tdppo is imported from (default this checkout's ``src``);
    ``extra``: more flags (``--seeds 0-31`` for a population)."""
    from benchmarks.baselines.tdppo_ppo import read_metrics

    run_dir = Path(tempfile.mkdtemp(prefix="tdppo-proc-"))
    try:
        argv = tdppo_argv(**kw, compile=compile, run_dir=run_dir / "run") + list(extra)
        metrics = run_dir / "run" / "metrics.csv"
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            argv,
            cwd=REPO,
            env=_env(kw["threads"], cache_dir, src),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        first = math.nan
        while proc.poll() is None:
            if math.isnan(first) and _first_row(metrics):
                first = time.perf_counter() - t0
            if time.perf_counter() - t0 > timeout:
                proc.kill()
                raise TimeoutError(f"tdppo train ran past {timeout:.0f}s")
            time.sleep(0.01)
        wall = time.perf_counter() - t0
        out = proc.stdout.read() if proc.stdout else ""
        if proc.returncode != 0:
            raise RuntimeError(f"tdppo train exited {proc.returncode}: {out.strip()[-400:]}")
        curve = list({row[0]: row for row in read_metrics(metrics)}.values())  # a row per update
        if math.isnan(first) and curve:  # finished between two polls
            first = wall
        frames = curve[-1][0] if curve else 0
        return {"wall_s": wall, "first_update_s": first, "sps": steady_sps(curve),
                "frames": frames}  # fmt: skip
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


def run_baseline(name: str, kw: dict, timeout: float) -> dict:
    """One ``python -m benchmarks.process child`` process running a baseline."""
    argv = [sys.executable, "-m", "benchmarks.process", "child", name, json.dumps(kw)]
    t0_epoch = time.time()
    t0 = time.perf_counter()
    proc = subprocess.run(
        argv,
        cwd=REPO,
        env=_env(kw["threads"], None),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{name} exited {proc.returncode}: {proc.stderr.strip()[-400:]}")
    line = next(ln for ln in proc.stdout.splitlines()[::-1] if ln.startswith(_MARK))
    res = json.loads(line[len(_MARK) :])
    return {"wall_s": wall, "first_update_s": res["first_epoch"] - t0_epoch, "sps": res["sps"],
            "frames": res["frames"]}  # fmt: skip


def child(name: str, kw: dict) -> None:
    """In the child process: run the baseline, print the result line (no curve)."""
    import importlib

    mod = importlib.import_module(f"benchmarks.baselines.{_BASELINE_MODULES[name]}")
    firsts: list[float] = []

    def log(_msg: str) -> None:
        if not firsts:
            firsts.append(time.time())

    res = mod.run(**kw, log=log, eval_episodes=0)
    out = {"first_epoch": firsts[0], "sps": res["sps"], "frames": res["frames"]}
    print(_MARK + json.dumps(out), flush=True)


def rows(
    kw: dict, timeout: float, systems=ROWS, ab_src: Path | None = None
) -> dict[str, Callable[[int], dict]]:
    """The interleavable rows; ``kw``: env_id, frames, num_envs, num_steps, epochs, minibatches,
    threads (seed = repeat). The warm row reuses the cold row's cache folder of the same repeat
    (a cold row must come first in each repeat). ``ab_src``: another tdppo source folder (a copy
    of ``src`` from before a change): its compiled rows run too, interleaved, named ``... [A]``
    (``TDPPO_BENCH_AB_SRC=/copy/of/src python -m benchmarks throughput``)."""
    caches: dict[tuple[int, str], Path] = {}

    def cache(r: int, tag: str) -> Path:
        if (r, tag) not in caches:
            caches[r, tag] = Path(tempfile.mkdtemp(prefix="tdppo-inductor-"))
        return caches[r, tag]

    table: dict[str, Callable[[int], dict]] = {}
    variants = [("", None)] + ([(" [A]", ab_src)] if ab_src is not None else [])
    for name in systems:
        if name in _BASELINE_MODULES:
            table[name] = lambda r, n=name: run_baseline(n, {**kw, "seed": r}, timeout)
            continue
        for tag, src in variants if name in (COLD, WARM) else variants[:1]:
            compiled = name in (COLD, WARM)
            table[name + tag] = lambda r, c=compiled, t=tag, s=src: run_tdppo(
                {**kw, "seed": r}, c, cache(r, t) if c else None, timeout, s
            )
    table["_cleanup"] = lambda r: _cleanup([caches.pop(k) for k in list(caches) if k[0] == r])
    return table


def _cleanup(paths: list[Path]) -> dict:
    for path in paths:
        shutil.rmtree(path, ignore_errors=True)
    return {}


def summarize(results: dict[str, list[dict]], reference: str = REFERENCE) -> list[dict]:
    """Median, min and max of wall clock, first-update time and SPS per row; ratios to the
    reference (wall: reference / row, so > 1 is faster; SPS: row / reference)."""
    out = []
    for name, res in results.items():
        if name.startswith("_"):
            continue
        ok = [r for r in res if not r.get("error")]

        def stat(key, ok=ok):
            vals = [r[key] for r in ok]
            return finite_median(vals), min(vals, default=math.nan), max(vals, default=math.nan)

        wall, wall_lo, wall_hi = stat("wall_s")
        first, first_lo, first_hi = stat("first_update_s")
        sps, sps_lo, sps_hi = stat("sps")
        out.append(
            {
                "system": name,
                "wall_s": wall,
                "wall_min": wall_lo,
                "wall_max": wall_hi,
                "first_update_s": first,
                "first_min": first_lo,
                "first_max": first_hi,
                "sps": sps,
                "sps_min": sps_lo,
                "sps_max": sps_hi,
                "frames": ok[0]["frames"] if ok else "",
                "repeats": len(ok),
                "error": next((r["error"] for r in res if r.get("error")), ""),
            }
        )
    ref = next((r for r in out if r["system"] == reference), None)
    for r in out:
        good = ref is not None and r["repeats"] and ref["repeats"]
        r["x_wall"] = ref["wall_s"] / r["wall_s"] if good else math.nan
        r["x_sps"] = r["sps"] / ref["sps"] if good else math.nan
    return out


COLS = [
    "system", "wall_s", "x_wall", "wall_min", "wall_max", "first_update_s", "first_min",
    "first_max", "sps", "x_sps", "sps_min", "sps_max", "frames", "repeats", "error",
]  # fmt: skip
RUN_COLS = ["system", "repeat", "frames", "wall_s", "first_update_s", "sps", "error"]


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "child":
        child(sys.argv[2], json.loads(sys.argv[3]))
    else:
        print("usage: python -m benchmarks.process child SYSTEM JSON", file=sys.stderr)
        sys.exit(2)
