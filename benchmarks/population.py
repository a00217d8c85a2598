"""N agents vmapped in one process (``tdppo.population``) vs the same N run one after the other.

``python -m benchmarks population [--quick|--smoke] [--threads N] [--out DIR] [--agents N]
[--frames F] [--env ID] [--compile|--no-compile]``

Both sides train the same agents (seeds ``0..N-1``, the env's preset, 8 envs x 256 steps for
Pendulum-v1), in the same process, one after the other: first the population
(:func:`tdppo.train` with ``seeds``), then ``N`` single-agent :func:`tdppo.train` runs.
Reported, for each side: the total wall-clock (setup and ``torch.compile`` included: the
single-agent graphs compile once, in the first run, and are reused by the others) and the
steady time of one update of all ``N`` agents (the time between the first and the last logged
update, per update: compilation and warm-up excluded), and the ratios sequential / population.
Member ``i`` is the single-agent run of seed ``i`` (tests/test_population.py), so the returns
of both sides are printed side by side as a check, with the population's mean and spread
across seeds per update.

Modes: default 32 agents x 20,480 frames (10 updates), compiled; ``--quick`` 8 agents x 2
updates of 8 envs x 128 steps, eager (under 2 minutes: compiling the vmapped functions alone
can take longer on a loaded 2-core box); ``--smoke`` 2 tiny agents (pipeline check for tests).
Writes ``population[_quick|_smoke].{md,csv}`` (and a ``.png`` of the returns when matplotlib
is installed) under ``--out`` (default ``benchmarks/results``); the last stdout line is the
JSON of the numbers.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

SMOKE = dict(num_envs=2, num_steps=16, epochs=1, minibatches=2, hidden=(16,))
QUICK = dict(num_steps=128)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks population", description=__doc__)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="8 agents, 2 short updates, eager")
    mode.add_argument("--smoke", action="store_true", help="2 tiny agents (tests)")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    p.add_argument("--out", type=Path, default=None, help="results directory")
    p.add_argument("--agents", type=int, default=None, help="population size N")
    p.add_argument("--frames", type=int, default=None, help="frames per agent")
    p.add_argument("--env", default="Pendulum-v1", help="a built-in env id")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None)
    return p


def _read_metrics(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _steady(times: list[float]) -> float:
    """Seconds per update between the first and the last logged update (NaN with one)."""
    return (times[-1] - times[0]) / (len(times) - 1) if len(times) > 1 else float("nan")


def _returns_by_update(rows: list[dict]) -> dict[int, list[float]]:
    out: dict[int, list[float]] = {}
    for r in rows:
        out.setdefault(int(r["updates"]), []).append(float(r["episode_return_mean"]))
    return out


def _finite_stats(xs: list[float]) -> dict[str, float]:
    xs = [x for x in xs if math.isfinite(x)]
    if not xs:
        return {"mean": math.nan, "std": math.nan, "min": math.nan, "max": math.nan}
    return {
        "mean": statistics.fmean(xs),
        "std": statistics.pstdev(xs),
        "min": min(xs),
        "max": max(xs),
    }


def run(args: argparse.Namespace) -> dict:
    """Train both sides; the numbers as a dict (side effects: run dirs in a temp dir)."""
    from tdppo import Config, train

    extra = SMOKE if args.smoke else QUICK if args.quick else {}
    cfg = Config.for_env(
        args.env,
        frames=args.frames,
        compile=args.compile,
        quiet=True,
        eval_episodes=0,
        checkpoint_every=0,
        threads=args.threads,
        **extra,
    )
    seeds = list(range(args.agents))
    updates = math.ceil(cfg.frames / cfg.batch_size)
    load_start = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="tdppo-population-") as tmp:
        tmp = Path(tmp)
        # POPULATION: one process, torch.vmap over members
        t0 = time.perf_counter()
        train(cfg.__class__(**{**cfg.__dict__, "run_dir": str(tmp / "pop")}), seeds=seeds)
        pop_total = time.perf_counter() - t0
        pop_rows = _read_metrics(tmp / "pop" / "metrics.csv")
        pop_times = sorted({float(r["time_s"]) for r in pop_rows})
        print(f"population of {len(seeds)}: {pop_total:.1f} s", flush=True)
        # SEQUENTIAL: the same agents, one tdppo.train after the other
        seq_total, seq_steady, seq_rows = 0.0, 0.0, []
        for s in seeds:
            run_dir = tmp / f"seed{s}"
            t0 = time.perf_counter()
            train(cfg.__class__(**{**cfg.__dict__, "seed": s, "run_dir": str(run_dir)}))
            seq_total += time.perf_counter() - t0
            rows = _read_metrics(run_dir / "metrics.csv")
            seq_steady += _steady([float(r["time_s"]) for r in rows])
            seq_rows += [{**r, "member": s} for r in rows]
        print(f"{len(seeds)} single-agent runs: {seq_total:.1f} s", flush=True)
    pop_steady = _steady(pop_times)
    agent_frames = len(seeds) * updates * cfg.batch_size
    steady_frames = len(seeds) * cfg.batch_size
    pop_ret, seq_ret = _returns_by_update(pop_rows), _returns_by_update(seq_rows)
    return {
        "env": cfg.env,
        "agents": len(seeds),
        "frames_per_agent": updates * cfg.batch_size,
        "updates": updates,
        "compile": cfg.compile,
        "threads": args.threads,
        "population_total_s": pop_total,
        "sequential_total_s": seq_total,
        "total_ratio": seq_total / pop_total,
        "population_update_s": pop_steady,
        "sequential_update_s": seq_steady,
        "steady_ratio": seq_steady / pop_steady if pop_steady > 0 else math.nan,
        "population_agent_fps_total": agent_frames / pop_total,
        "sequential_agent_fps_total": agent_frames / seq_total,
        "population_agent_fps_steady": steady_frames / pop_steady if pop_steady > 0 else math.nan,
        "sequential_agent_fps_steady": steady_frames / seq_steady if seq_steady > 0 else math.nan,
        "load_average_start": load_start,
        "load_average_end": os.getloadavg()[0],
        "returns_population": {u: _finite_stats(v) for u, v in pop_ret.items()},
        "returns_sequential": {u: _finite_stats(v) for u, v in seq_ret.items()},
        "returns_population_raw": pop_ret,
    }


def _report(res: dict, out: Path, suffix: str) -> None:
    from benchmarks import common

    sides = [
        {
            "side": f"population: {res['agents']} agents vmapped in one process",
            "total (s)": res["population_total_s"],
            "one update of all agents, steady (s)": res["population_update_s"],
            "agent-frames/s, total": res["population_agent_fps_total"],
            "agent-frames/s, steady": res["population_agent_fps_steady"],
        },
        {
            "side": f"sequential: {res['agents']} tdppo.train runs, one after the other",
            "total (s)": res["sequential_total_s"],
            "one update of all agents, steady (s)": res["sequential_update_s"],
            "agent-frames/s, total": res["sequential_agent_fps_total"],
            "agent-frames/s, steady": res["sequential_agent_fps_steady"],
        },
        {
            "side": "ratio sequential / population",
            "total (s)": res["total_ratio"],
            "one update of all agents, steady (s)": res["steady_ratio"],
        },
    ]
    columns = list(sides[0])
    common.write_csv(out / f"population{suffix}.csv", sides, columns)
    learn = []
    for u, st in sorted(res["returns_population"].items()):
        sq = res["returns_sequential"].get(u, {})
        learn.append(
            {
                "update": u,
                "population mean": st["mean"],
                "population std": st["std"],
                "population min": st["min"],
                "population max": st["max"],
                "sequential mean": sq.get("mean", math.nan),
            }
        )
    facts = common.machine_facts(res["threads"])
    facts["load average (1 min, at end)"] = f"{res['load_average_end']:.2f}"
    setup = (
        f"{res['env']}, {res['agents']} agents (seeds 0..{res['agents'] - 1}), "
        f"{res['frames_per_agent']} frames each ({res['updates']} updates), "
        f"{'compiled' if res['compile'] else 'eager'}, {res['threads']} thread(s). Total: "
        "setup and compilation included. Steady: per update, first logged update excluded."
    )
    sections = [
        ("setup", setup),
        ("wall-clock", common.markdown_table(sides, columns)),
        ("episode return per update across seeds", common.markdown_table(learn, list(learn[0]))),
    ]
    try:
        import numpy as np

        fig, axes = common.new_figure(1, f"{res['env']}: {res['agents']} vmapped agents")
        raw = res["returns_population_raw"]
        xs = np.array(sorted(raw))
        common.plot_spread(axes[0], xs, np.array([raw[u] for u in xs]).T, "population")
        axes[0].set_xlabel("update")
        axes[0].set_ylabel("episode return (mean of episodes finished)")
        common.save_figure(fig, out / f"population{suffix}.png")
        sections.append(("plot", f"![returns](population{suffix}.png)"))
    except ImportError:
        pass
    common.write_markdown(out / f"population{suffix}.md", "tdppo population", facts, sections)


def main(argv: list[str] | None = None) -> int:
    args, _unknown = _parser().parse_known_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    torch.set_num_threads(args.threads)
    suffix, agents, frames, compile = "", 32, 10 * 2048, True
    if args.quick:
        suffix, agents, frames, compile = "_quick", 8, 2 * 1024, False
    if args.smoke:
        suffix, agents, frames, compile = "_smoke", 2, 2 * 32, False
    args.agents = args.agents or agents
    args.frames = args.frames or frames
    args.compile = compile if args.compile is None else args.compile
    if args.compile:
        from torch._inductor import config as inductor_config

        inductor_config.compile_threads = 1  # no worker pool on a 2-core box
    from benchmarks import common

    out = args.out if args.out is not None else common.RESULTS
    res = run(args)
    _report(res, out, suffix)
    print(
        f"{res['agents']} agents: population {res['population_total_s']:.1f} s vs sequential "
        f"{res['sequential_total_s']:.1f} s total ({res['total_ratio']:.2f}x); per update "
        f"{res['population_update_s']:.3f} s vs {res['sequential_update_s']:.3f} s "
        f"({res['steady_ratio']:.2f}x)",
        flush=True,
    )
    slim = {k: v for k, v in res.items() if not k.startswith("returns_")}
    print(json.dumps(slim), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
