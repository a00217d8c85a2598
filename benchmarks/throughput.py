"""Training throughput per system, its env-only and update-only ceilings, and a num_envs sweep.

``python -m benchmarks throughput [--quick|--smoke] [--threads N] [--frames N] [--out DIR]
[--parts ...] [--envs ENV[:FRAMES],...]``

Training SPS is frames per wall-clock second *with updates included*, taken between the end of
the first iteration and the end of the last (compilation and warm-up excluded, as LeanRL does);
``sps_total`` includes them. Rows run interleaved (A B C ... A B C ...), every env's rows in one
sequence; the table gives the median over repeats and the ratios to the CleanRL-style and SB3
rows on the same env. The full mode trains Pendulum-v1 and CartPole-v1 with every system and
HalfCheetah-v5 (MuJoCo, no built-in torch env) with SB3, CleanRL-style and tdppo's gym backend.

Ceilings, per system: *env-only* is the system's own collection path stepped with random actions
(normalisers on; for tdppo's torch envs the pure compiled batched step of the ``env_throughput``
benchmark, physics and resets only); *update-only* is its PPO update (10 epochs x 8
minibatches) on one batch, timed alone, in frames of batch per second. Their serial composition
``floor = 1 / (1/env + 1/update)`` is the best training SPS the system could reach without
overlapping the two; ``train / floor`` says how close it gets.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from benchmarks import common, process
from benchmarks.common import finite_median, fmt, interleaved, ppo_shape
from benchmarks.systems import REFERENCE, SB3, SYSTEMS, ceiling, runner, throughput_rows


@dataclass(frozen=True)
class Settings:
    repeats: dict[str, int]
    """Env id -> interleaved repeats of the training rows on it (the median is reported). The
    rows of every env run in one interleaved sequence (repeat 0 of every env's rows, then repeat
    1, ...); :func:`benchmarks.systems.throughput_rows` says which rows an env has."""
    frames: int
    """Frames per training run (whole batches of num_envs x num_steps)."""
    env_frames: tuple[tuple[str, int], ...] = ()
    """``(env id, frames)`` overriding ``frames`` for that env (``--envs ENV:FRAMES``)."""
    num_envs: int = 8
    num_steps: int = 256
    epochs: int = 10
    minibatches: int = 8
    ceiling_envs: tuple[str, ...] = ("Pendulum-v1", "CartPole-v1")
    ceiling_repeats: int = 3
    ceiling_frames: int = 4096
    ceiling_iters: int = 2
    sweep: tuple[int, ...] = (8, 32, 128, 512, 1024, 2048, 4096)
    sweep_batches: int = 4
    """Iterations per sweep point (the first is excluded from the steady SPS)."""
    sweep_repeats: int = 3
    sweep_system: str = "tdppo torch compiled"
    compile: bool = True
    """False: tdppo's compiled rows run eager (``--smoke``)."""
    process_frames: int = 49 * 2048
    """Frames of each whole-process run (``benchmarks.process``): the issue's 100k."""
    process_repeats: int = 2
    process_systems: tuple[str, ...] = process.ROWS
    process_timeout: float = 1800.0
    population_agents: int = 32
    population_frames: int = 8 * 2048
    """Frames per agent of each population-vs-one-agent run (``--parts population``)."""
    population_repeats: int = 2
    note: str = ""


MODES: dict[str, Settings] = {
    "full": Settings(
        repeats={"Pendulum-v1": 3, "CartPole-v1": 3, "HalfCheetah-v5": 3}, frames=16 * 2048
    ),
    "quick": Settings(
        repeats={"Pendulum-v1": 2},
        frames=2 * 2048,
        ceiling_envs=("Pendulum-v1",),
        ceiling_repeats=1,
        ceiling_frames=2048,
        ceiling_iters=1,
        sweep=(8, 1024),
        sweep_batches=2,
        sweep_repeats=1,
        process_frames=8 * 2048,
        population_frames=4 * 2048,
        population_repeats=1,
        note="--quick (2-minute budget): Pendulum-v1 only (CartPole-v1 does not fit: its "
        "discrete policy compiles anew) and 2 repeats, not 3 (3 took 160 s on this 2-core "
        "machine); 2 iterations per run (the steady SPS is the second); "
        "ceilings with 1 repeat; num_envs sweep at 8 and 1024 only (each size recompiles), 2 "
        "iterations, 1 repeat. Whole-process rows: 16,384 frames (8 iterations).",
    ),
    "smoke": Settings(
        repeats={"Pendulum-v1": 1},
        frames=2 * 512,
        num_steps=64,
        epochs=2,
        minibatches=2,
        ceiling_envs=("Pendulum-v1",),
        ceiling_repeats=1,
        ceiling_frames=512,
        ceiling_iters=1,
        compile=False,
        sweep=(8, 64),
        sweep_batches=2,
        sweep_repeats=1,
        process_frames=2 * 512,
        process_repeats=1,
        process_systems=(process.CLEANRL, process.EAGER),
        process_timeout=600.0,
        population_agents=2,
        population_frames=2 * 512,
        population_repeats=1,
        note="--smoke: a pipeline check, not a measurement (64-step rollouts, 2 epochs x 2 "
        "minibatches, 1 repeat, tdppo's 'compiled' rows run eager).",
    ),
}

CEILING_SYSTEMS = [
    "SB3",
    "CleanRL-style",
    "TorchRL-style",
    "tdppo torch compiled",  # env-only is shared with the eager row
    "tdppo gym compiled",
]


def sweep_steps(num_envs: int) -> int:
    """Rollout length at ``num_envs``: 256 up to 256 envs, then a 64k-frame batch (min 16)."""
    return max(16, min(256, 65536 // num_envs))


def frames_for(s: Settings, env_id: str) -> int:
    return dict(s.env_frames).get(env_id, s.frames)


def _training(s: Settings, threads: int, log: Callable[[str], None]) -> list[dict]:
    """Every env's rows in one interleaved sequence: repeat 0 of each (env, row), then repeat 1,
    ... (an env with fewer repeats drops out); a row that failed is not run again."""
    eager = not s.compile

    def call(name: str, env_id: str, r: int) -> dict:
        return runner(name, eager=eager)(
            env_id=env_id,
            frames=frames_for(s, env_id),
            seed=r,
            **ppo_shape(s),
            threads=threads,
            eval_episodes=0,
        )

    log("== training throughput on " + ", ".join(s.repeats))
    runs, failed = [], set()
    for r in range(max(s.repeats.values(), default=0)):
        rows = {
            f"{env_id}|{name}": (lambda _r, name=name, env_id=env_id, r=r: call(name, env_id, r))
            for env_id, repeats in s.repeats.items()
            if r < repeats
            for name in throughput_rows(env_id)
            if f"{env_id}|{name}" not in failed
        }
        relog = lambda m, r=r: log(m.replace("] repeat 0:", f"] repeat {r}:"))  # noqa: E731
        for key, results in interleaved(rows, 1, relog).items():
            env_id, name = key.split("|", 1)
            for res in results:
                res = {**_without_curve(res), "repeat": r}
                if res["error"]:
                    failed.add(key)
                runs.append({"env": env_id, "system": name, **res})
    return runs


def _without_curve(res: dict) -> dict:
    return {k: v for k, v in res.items() if k != "curve"}


def summarize(runs: list[dict]) -> list[dict]:
    """One row per (env, system): median/min/max SPS over repeats and the ratio to CleanRL."""
    out = []
    for env_id in dict.fromkeys(r["env"] for r in runs):
        rows = []
        for name in dict.fromkeys(r["system"] for r in runs if r["env"] == env_id):
            mine = [r for r in runs if r["env"] == env_id and r["system"] == name]
            ok = [r for r in mine if not r.get("error")]
            sps = [r["sps"] for r in ok]
            rows.append(
                {
                    "env": env_id,
                    "system": name,
                    "sps": finite_median(sps),
                    "sps_min": min(sps) if sps else math.nan,
                    "sps_max": max(sps) if sps else math.nan,
                    "sps_total": finite_median([r["sps_total"] for r in ok]),
                    "frames": ok[0]["frames"] if ok else "",
                    "repeats": len(ok),
                    "error": next((r["error"] for r in mine if r.get("error")), ""),
                    "setup": SYSTEMS[name].note if name in SYSTEMS else "",
                }
            )
        ref = next((r["sps"] for r in rows if r["system"] == REFERENCE), math.nan)
        sb3 = next((r["sps"] for r in rows if r["system"] == SB3), math.nan)
        for r in rows:
            r["x_cleanrl"] = r["sps"] / ref if ref and math.isfinite(ref) else math.nan
            r["x_sb3"] = r["sps"] / sb3 if sb3 and math.isfinite(sb3) else math.nan
        out += rows
    return out


def _ceilings(s: Settings, threads: int, summary: list[dict], log) -> list[dict]:
    eager = not s.compile
    out = []
    for env_id in s.ceiling_envs:
        log(f"== ceilings on {env_id}")
        rows: dict[str, Callable[[int], dict]] = {}
        for name in CEILING_SYSTEMS:
            rows[f"{name}|env"] = lambda r, name=name, env_id=env_id: ceiling(
                name,
                "env_only",
                eager=eager,
                env_id=env_id,
                frames=s.ceiling_frames,
                num_envs=s.num_envs,
                threads=threads,
            )
            rows[f"{name}|update"] = lambda r, name=name, env_id=env_id: ceiling(
                name,
                "update_only",
                eager=eager,
                env_id=env_id,
                **ppo_shape(s),
                threads=threads,
                iters=s.ceiling_iters,
            )
        res = interleaved(rows, s.ceiling_repeats, log)
        for name in CEILING_SYSTEMS:
            env_sps = finite_median([r.get("sps", math.nan) for r in res[f"{name}|env"]])
            upd = finite_median([r.get("fps", math.nan) for r in res[f"{name}|update"]])
            train = next(
                (r["sps"] for r in summary if r["env"] == env_id and r["system"] == name),
                math.nan,
            )
            floor = 1.0 / (1.0 / env_sps + 1.0 / upd) if env_sps > 0 and upd > 0 else math.nan
            errors = [
                r["error"] for k in ("env", "update") for r in res[f"{name}|{k}"] if r["error"]
            ]
            out.append(
                {
                    "env": env_id,
                    "system": name,
                    "train_sps": train,
                    "env_only_sps": env_sps,
                    "update_only_fps": upd,
                    "floor_sps": floor,
                    "train_vs_floor": train / floor if floor > 0 else math.nan,
                    "note": "; ".join(errors),
                }
            )
    return out


def _sweep(s: Settings, threads: int, log) -> list[dict]:
    eager = not s.compile
    log(f"== num_envs sweep ({s.sweep_system}, Pendulum-v1)")
    rows: dict[str, Callable[[int], dict]] = {}
    for n in s.sweep:
        steps = sweep_steps(n) if s.num_steps == 256 else s.num_steps
        rows[f"{n}|train"] = lambda r, n=n, steps=steps: runner(s.sweep_system, eager=eager)(
            env_id="Pendulum-v1",
            frames=s.sweep_batches * n * steps,
            seed=r,
            num_envs=n,
            num_steps=steps,
            epochs=s.epochs,
            minibatches=s.minibatches,
            threads=threads,
            eval_episodes=0,
        )
        rows[f"{n}|env"] = lambda r, n=n, steps=steps: ceiling(
            s.sweep_system,
            "env_only",
            eager=eager,
            env_id="Pendulum-v1",
            frames=max(n * 8, min(n * steps, 65536)),
            num_envs=n,
            threads=threads,
        )
    res = interleaved(rows, s.sweep_repeats, log)
    out = []
    for n in s.sweep:
        steps = sweep_steps(n) if s.num_steps == 256 else s.num_steps
        train, env = res[f"{n}|train"], res[f"{n}|env"]
        errors = [r["error"] for r in train + env if r["error"]]
        out.append(
            {
                "num_envs": n,
                "num_steps": steps,
                "batch": n * steps,
                "train_sps": finite_median([r.get("sps", math.nan) for r in train]),
                "train_sps_total": finite_median([r.get("sps_total", math.nan) for r in train]),
                "env_only_sps": finite_median([r.get("sps", math.nan) for r in env]),
                "repeats": sum(1 for r in train if not r["error"]),
                "note": "; ".join(dict.fromkeys(errors)),
            }
        )
    return out


SUMMARY_COLS = [
    "env",
    "system",
    "sps",
    "x_cleanrl",
    "x_sb3",
    "sps_min",
    "sps_max",
    "sps_total",
    "frames",
    "repeats",
    "error",
]
RUN_COLS = ["env", "system", "repeat", "frames", "wall_s", "sps", "sps_total", "error"]
CEILING_COLS = [
    "env",
    "system",
    "train_sps",
    "env_only_sps",
    "update_only_fps",
    "floor_sps",
    "train_vs_floor",
    "note",
]
SWEEP_COLS = [
    "num_envs",
    "num_steps",
    "batch",
    "train_sps",
    "train_sps_total",
    "env_only_sps",
    "repeats",
    "note",
]


PARTS = ("process", "training", "sweep", "ceilings", "population")


def _cli_kw(s: Settings, frames: int, threads: int) -> dict:
    """The shared hyperparameters of the CLI-run rows (:func:`benchmarks.process.tdppo_argv`)."""
    return dict(env_id="Pendulum-v1", frames=frames, num_envs=s.num_envs, num_steps=s.num_steps,
                epochs=s.epochs, minibatches=s.minibatches, threads=threads)  # fmt: skip


def _process(s: Settings, threads: int, log) -> tuple[list[dict], list[dict]]:
    """Whole-process rows (one subprocess each), interleaved; ``(summary, runs)``."""
    log(f"== whole process, Pendulum-v1, {s.process_frames} frames, start to exit")
    kw = _cli_kw(s, s.process_frames, threads)
    systems = (
        s.process_systems
        if s.compile
        else tuple(n for n in s.process_systems if n not in (process.COLD, process.WARM))
    )
    ab = os.environ.get("TDPPO_BENCH_AB_SRC")
    ab_src = Path(ab) if ab else None
    if ab_src is not None:
        log(f"   A/B: rows marked [A] import tdppo from {ab_src}")
    table = process.rows(kw, s.process_timeout, systems, ab_src)
    res = interleaved(table, s.process_repeats, log)
    runs = [
        {"system": name, **r} for name, rs in res.items() if not name.startswith("_") for r in rs
    ]
    return process.summarize(res), runs


ONE_AGENT, POPULATION = "tdppo, one agent", "tdppo, population"
POPULATION_COLS = ["system", "sps", "x_sps", "sps_min", "sps_max", "wall_s", "frames", "repeats",
                   "error"]  # fmt: skip


def _population(s: Settings, threads: int, log) -> tuple[list[dict], list[dict]]:
    """Steady agent-frames/s of a vmapped population (``tdppo train --seeds 0-{N-1}``) against
    one agent (``tdppo train``), both the CLI at the same hyperparameters on one warm cache (a
    first run of each side, not counted, fills it), interleaved; ``(summary, runs)``, with
    ``sps`` in agent-frames/s and the ratios to the one agent."""
    n = s.population_agents
    log(f"== population of {n} vs one agent, Pendulum-v1, {s.population_frames} frames each")
    kw = _cli_kw(s, s.population_frames, threads)
    cache = Path(tempfile.mkdtemp(prefix="tdppo-inductor-"))

    def one(r: int) -> dict:
        return process.run_tdppo({**kw, "seed": r}, s.compile, cache, s.process_timeout)

    def population(r: int) -> dict:
        res = process.run_tdppo({**kw, "seed": r}, s.compile, cache, s.process_timeout,
                                extra=("--seeds", f"{r}-{r + n - 1}"))  # fmt: skip
        return {**res, "sps": res["sps"] * n, "frames": res["frames"] * n}

    try:
        one(100), population(100)  # warm-up, not counted: compiles both sides' packages
        res = interleaved({ONE_AGENT: one, POPULATION: population}, s.population_repeats, log)
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    runs = [{"system": name, **r} for name, rs in res.items() for r in rs]
    return process.summarize(res, reference=ONE_AGENT), runs


def run(
    mode: str = "full",
    threads: int = 1,
    out: Path = common.RESULTS,
    frames: int | None = None,
    log: Callable[[str], None] = print,
    parts: tuple[str, ...] = PARTS,
    envs: Sequence[tuple[str, int | None]] = (),
) -> dict[str, Path]:
    """Run the benchmark in ``mode`` (full, quick, smoke); write CSVs, markdown and plots.

    ``parts``: which sections run (``process``: whole-process wall clock, one subprocess per
    system; ``training``: in-process steady SPS of every system; ``sweep``; ``ceilings``).
    ``envs``: ``(env id, frames or None)`` replacing the mode's training envs (``--envs``); an
    env the mode lacks gets the mode's largest repeat count."""
    s = MODES[mode]
    batch = s.num_envs * s.num_steps
    if frames:
        s = replace(s, frames=max(1, frames // batch) * batch)
    if envs:
        most = max(s.repeats.values())
        s = replace(
            s,
            repeats={e: s.repeats.get(e, most) for e, _ in envs},
            env_frames=tuple((e, max(1, f // batch) * batch) for e, f in envs if f),
        )
    facts = common.machine_facts(threads)
    log("machine: " + ", ".join(f"{k}={v}" for k, v in facts.items()))
    proc_summary, proc_runs = _process(s, threads, log) if "process" in parts else ([], [])
    runs = _training(s, threads, log) if "training" in parts else []
    summary = summarize(runs)
    sweep = _sweep(s, threads, log) if "sweep" in parts else []
    # last: tdppo's env-only resets dynamo
    ceilings = _ceilings(s, threads, summary, log) if "ceilings" in parts else []
    pop_summary, pop_runs = _population(s, threads, log) if "population" in parts else ([], [])
    facts["load average (1, 5, 15 min) at the end"] = _loadavg()

    tag = mode_tag = "" if mode == "full" else f"-{mode}"
    if envs:  # a run on chosen envs keeps the mode's files
        tag = "-" + "-".join(dict.fromkeys(e.split("-v")[0] for e, _ in envs)) + tag
    if tuple(parts) != PARTS:  # a partial run keeps the full run's files
        tag = "-" + "-".join(parts) + tag
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    if proc_summary:
        files["process_csv"] = common.write_csv(
            out / f"throughput-process{mode_tag}.csv", proc_summary, process.COLS
        )
        files["process_runs_csv"] = common.write_csv(
            out / f"throughput-process-runs{mode_tag}.csv", proc_runs, process.RUN_COLS
        )
    if pop_summary:
        files["population_csv"] = common.write_csv(
            out / f"throughput-population{mode_tag}.csv", pop_summary, POPULATION_COLS
        )
        files["population_runs_csv"] = common.write_csv(
            out / f"throughput-population-runs{mode_tag}.csv", pop_runs, process.RUN_COLS
        )
    if "training" in parts:
        files["csv"] = common.write_csv(out / f"throughput{tag}.csv", summary, SUMMARY_COLS)
        files["runs_csv"] = common.write_csv(out / f"throughput-runs{tag}.csv", runs, RUN_COLS)
        for env_id in s.repeats:
            mine = [r for r in summary if r["env"] == env_id]
            files[f"png_{env_id}"] = common.plot_bars(
                out / f"throughput-{env_id}{tag}.png",
                [r["system"] for r in mine],
                [r["sps"] for r in mine],
                f"PPO training SPS, {env_id}, {threads} thread(s)",
                "frames / s (updates included)",
                notes=[_ratios(r) for r in mine],
            )
    if "ceilings" in parts:
        files["ceilings_csv"] = common.write_csv(
            out / f"throughput-ceilings{tag}.csv", ceilings, CEILING_COLS
        )
    if "sweep" in parts:
        files["sweep_csv"] = common.write_csv(out / f"throughput-sweep{tag}.csv", sweep, SWEEP_COLS)
        files["png_sweep"] = common.plot_lines(
            out / f"throughput-sweep{tag}.png",
            {
                "training SPS": (
                    [r["num_envs"] for r in sweep],
                    [r["train_sps"] for r in sweep],
                ),
                "env-only SPS": (
                    [r["num_envs"] for r in sweep],
                    [r["env_only_sps"] for r in sweep],
                ),
            },
            f"{s.sweep_system}, Pendulum-v1, {threads} thread(s)",
            "num_envs",
            "frames / s",
            logx=True,
        )
    files["md"] = common.write_markdown(
        out / f"throughput{tag}.md",
        f"Training throughput ({mode})",
        facts,
        _sections(
            s,
            mode,
            summary,
            ceilings,
            sweep,
            files,
            proc_summary,
            proc_runs,
            runs,
            pop_summary,
            pop_runs,
        ),  # fmt: skip
    )
    log(f"wrote {files['md']}")
    return files


def _ratios(row: dict) -> str:
    parts = [
        f"{fmt(row[k])}x {who}"
        for k, who in (("x_cleanrl", "CleanRL"), ("x_sb3", "SB3"))
        if math.isfinite(row[k])
    ]
    return f"({', '.join(parts)})" if parts else ""


def _sections(
    s, mode, summary, ceilings, sweep, files, proc=(), proc_runs=(), runs=(), pop=(), pop_runs=()
) -> list[tuple[str, str]]:
    setup = (
        f"{s.num_envs} envs x {s.num_steps} steps, {s.epochs} epochs x {s.minibatches} "
        f"minibatches, 64-64 tanh MLPs, lr 3e-4, gamma 0.99, lambda 0.95, clip 0.2, no entropy "
        f"bonus, no value clipping, the same for every system; frames per run: "
        + ", ".join(f"{e} {frames_for(s, e)}" for e in s.repeats)
        + "; median of the interleaved repeats (every env's rows in one sequence, A B C ... A B "
        "C ...; "
        + ", ".join(f"{e}: {n}" for e, n in s.repeats.items())
        + "). `sps` excludes the first iteration "
        "(compilation, warm-up); `sps_total` includes it. `x_cleanrl` = sps / CleanRL-style sps, "
        "`x_sb3` = sps / SB3 sps (medians); `sps_min`/`sps_max`: the spread over repeats."
    )
    if s.note:
        setup += f"\n\n{s.note}"
    names = dict.fromkeys(n for e in s.repeats for n in throughput_rows(e))
    rows = "\n".join(f"- **{n}**: {SYSTEMS[n].note}" for n in names)
    rows += "".join(
        f"\n\n{e}: " + ", ".join(throughput_rows(e)) for e in s.repeats if len(s.repeats) > 1
    )
    plots = "\n".join(f"![{k}]({p.name})" for k, p in files.items() if p.suffix == ".png")
    sections = [("Setup", setup + "\n\nRows:\n\n" + rows)] if summary else []
    if proc:
        sections.append(
            (
                "Whole process, start to exit",
                _process_text(s)
                + "\n\n"
                + common.markdown_table(proc, process.COLS)
                + "\n\n"
                + _paired(proc_runs),
            )
        )
    if summary:
        sections.append(
            (
                "Training SPS",
                common.markdown_table(summary, SUMMARY_COLS) + "\n\n" + _paired_training(runs),
            )
        )
    if ceilings:
        sections.append(
            (
                "Ceilings (env-only, update-only, and how close training gets)",
                common.markdown_table(ceilings, CEILING_COLS),
            )
        )
    if sweep:
        sections.append(
            (
                f"num_envs sweep ({s.sweep_system}, Pendulum-v1)",
                common.markdown_table(sweep, SWEEP_COLS) + "\n\n" + _saturation(sweep),
            )
        )
    if pop:
        sections.append((f"Population of {s.population_agents} vs one agent", _population_text(s)
                         + "\n\n" + common.markdown_table(pop, POPULATION_COLS) + "\n\n"
                         + _paired(pop_runs, ONE_AGENT)))  # fmt: skip
    if plots:
        sections.append(("Plots", plots))
    return sections


def _population_text(s: Settings) -> str:
    return (
        f"`tdppo train --seeds R-{{R+{s.population_agents - 1}}}` (one process, the members "
        f"vmapped) against `tdppo train --seed R`, Pendulum-v1, {s.population_frames} frames per "
        f"agent, {s.num_envs} envs x {s.num_steps} steps and {s.epochs} epochs x "
        f"{s.minibatches} minibatches per agent, {'compiled' if s.compile else 'eager'}, both on "
        "one cache folder warmed by a first run of each (not counted), interleaved over "
        f"{s.population_repeats} repeat(s). `sps`: steady agent-frames/s (members x frames "
        "per agent between the first and the last update / their time); `x_sps` = sps / the one "
        "agent's; `frames`: agent-frames; `wall_s`: the whole process."
    )


def _paired_training(runs) -> str:
    """Per env and tdppo row, each repeat's sps over CleanRL-style's and SB3's of that repeat
    (the rows of one repeat ran back to back, so a pair sees similar load)."""
    ok = [r for r in runs if not r.get("error")]
    by = {(r["env"], r["system"], int(r["repeat"])): float(r["sps"]) for r in ok}
    lines = ["Paired by repeat (row sps / CleanRL-style sps, row sps / SB3 sps, same repeat):", ""]
    for env_id, name in dict.fromkeys((r["env"], r["system"]) for r in ok):
        if not name.startswith("tdppo"):
            continue
        pairs = []
        for (e, n, rep), sps in by.items():
            if (e, n) != (env_id, name):
                continue
            ref, sb3 = by.get((e, REFERENCE, rep)), by.get((e, SB3, rep))
            x = [f"{fmt(sps / v)}x {who}" for v, who in ((ref, "CleanRL"), (sb3, "SB3")) if v]
            pairs.append(f"repeat {rep}: " + ", ".join(x))
        lines.append(f"- {env_id}, {name}: " + "; ".join(pairs))
    return "\n".join(lines)


def _saturation(sweep: list[dict]) -> str:
    """Where training SPS stops growing: the first point within 10% of the best."""
    ok = [r for r in sweep if math.isfinite(r["train_sps"])]
    if not ok:
        return "No sweep point ran."
    best = max(r["train_sps"] for r in ok)
    first = next(r for r in ok if r["train_sps"] >= 0.9 * best)
    return (
        f"Training SPS peaks at {fmt(best)}; it is within 10% of that from "
        f"num_envs = {first['num_envs']} on."
    )


def _process_text(s: Settings) -> str:
    return (
        f"Each row is a fresh Python process training Pendulum-v1 for {s.process_frames} frames "
        f"({s.num_envs} envs x {s.num_steps} steps, {s.epochs} epochs x {s.minibatches} "
        "minibatches, 64-64 tanh, lr 3e-4; tdppo anneals it to 0 over the run), timed by the "
        "parent from `Popen` to exit (`wall_s`), and to the end of the first update "
        "(`first_update_s`). `sps`: steady-state frames/s after the first iteration. "
        f"Median (min, max) of {s.process_repeats} interleaved repeats. `x_wall` = CleanRL-style "
        "wall / row wall (higher is faster); `x_sps` = row sps / CleanRL-style sps. tdppo runs "
        "as the CLI a user types (`python -m tdppo train ...`); the cold row compiles into a new "
        "empty `TORCHINDUCTOR_CACHE_DIR`, the warm row runs again on that folder. "
        "(benchmarks/process.py)"
    )


def _paired(runs, reference: str = process.REFERENCE) -> str:
    """Per repeat, reference wall / row wall and row sps / reference sps (the rows of one repeat
    ran minutes apart, so these pairs see similar load)."""
    ref = {r["repeat"]: r for r in runs if r["system"] == reference and not r["error"]}
    lines = ["Paired by repeat (`x_wall`; `x_sps`):", ""]
    for name in dict.fromkeys(r["system"] for r in runs):
        mine = [r for r in runs if r["system"] == name and not r["error"] and r["repeat"] in ref]
        pairs = []
        for r in mine:
            base = ref[r["repeat"]]
            pairs.append(f"{base['wall_s'] / r['wall_s']:.2f}; {r['sps'] / base['sps']:.2f}")
        lines.append(f"- {name}: " + ", ".join(pairs))
    return "\n".join(lines)


def _loadavg() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "unknown"
