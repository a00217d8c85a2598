"""One process vs two (torchrun, gloo) running the same data-parallel shards, on this machine.

``python -m benchmarks.distributed [--quick] [--repeats N] [--out DIR]``: Pendulum-v1 with
``--shards 2`` (the same mathematics either way), eager, 1 torch thread per process,
interleaved repeats. Reports training SPS after the first update (metrics.csv), whole-process
wall clock, and their ratios two / one, with the machine's facts.
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _args(frames: int, run_dir: Path) -> list[str]:
    return [
        "--env", "Pendulum-v1", "--num-envs", "16", "--shards", "2", "--num-steps", "256",
        "--epochs", "10", "--minibatches", "8", "--frames", str(frames), "--threads", "1",
        "--quiet", "--eval-episodes", "0", "--checkpoint-every", "0", "--run-dir", str(run_dir),
        "--no-compile",  # several processes run eagerly (README, Limitations): so does the baseline
    ]  # fmt: skip


def _run(procs: int, frames: int, run_dir: Path) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if procs == 1:
        cmd = [sys.executable, "-m", "tdppo", "train", *_args(frames, run_dir)]
    else:
        launch = ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={procs}"]
        cmd = [sys.executable, *launch, "-m", "tdppo", "train", *_args(frames, run_dir)]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if p.returncode:
        raise RuntimeError(f"{cmd} exited {p.returncode}: {p.stderr[-2000:]}")
    with open(run_dir / "metrics.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("updates")]
    first, last = rows[0], rows[-1]
    steady = (int(last["frames"]) - int(first["frames"])) / (
        float(last["time_s"]) - float(first["time_s"])
    )
    return {"procs": procs, "wall_s": wall, "steady_sps": steady}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.distributed")
    ap.add_argument("--quick", action="store_true", help="fewer frames (about 2 minutes)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", type=Path, default=HERE / "results")
    a = ap.parse_args(argv)
    frames = 4 * 16 * 256 if a.quick else 16 * 16 * 256
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(a.repeats):
            for procs in (1, 2):  # interleaved
                runs.append({"repeat": rep, **_run(procs, frames, Path(tmp) / f"r{rep}p{procs}")})
    out = a.out
    out.mkdir(parents=True, exist_ok=True)
    suffix = "_quick" if a.quick else ""
    with open(out / f"distributed{suffix}.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(runs[0]))
        w.writeheader()
        w.writerows(runs)

    def med(procs: int, key: str) -> float:
        return statistics.median(r[key] for r in runs if r["procs"] == procs)

    load = os.getloadavg()[0]
    lines = [
        f"# One vs two processes, --shards 2 ({frames} frames, Pendulum-v1, 16 envs x 256 steps)",
        "",
        f"Machine: {os.cpu_count()} CPUs, load average {load:.1f} at the end; 1 torch thread per "
        f"process; gloo; eager (--no-compile); median of {a.repeats} interleaved repeats "
        f"(`python -m benchmarks.distributed{' --quick' if a.quick else ''}`).",
        "",
        "| processes | steady SPS | whole process (s) |",
        "|---|---|---|",
        f"| 1 | {med(1, 'steady_sps'):,.0f} | {med(1, 'wall_s'):.1f} |",
        f"| 2 (torchrun) | {med(2, 'steady_sps'):,.0f} | {med(2, 'wall_s'):.1f} |",
        f"| ratio 2 / 1 | {med(2, 'steady_sps') / med(1, 'steady_sps'):.2f}x | "
        f"{med(1, 'wall_s') / med(2, 'wall_s'):.2f}x faster |",
        "",
        "Every run: "
        + "; ".join(
            f"{r['procs']}p rep {r['repeat']}: {r['steady_sps']:.0f} SPS, {r['wall_s']:.1f} s"
            for r in runs
        ),
    ]
    (out / f"distributed{suffix}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
