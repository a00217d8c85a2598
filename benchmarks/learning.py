"""Learning curves: return vs frames and vs wall-clock, several seeds, tdppo vs SB3 vs CleanRL.

``python -m benchmarks learning [--quick|--smoke|--full] [--seeds N] [--threads N] [--out DIR]
[--frames N] [--envs ENV[:FRAMES],...]``

The default and full modes add tdppo's gym backend ("tdppo gym compiled") on Pendulum-v1 beside
"tdppo" (which picks the built-in torch env there) and run HalfCheetah-v5 (full) through the gym
backend only. ``--envs``/``--seeds``/``--frames`` give a reduced run, written to
``learning*-<mode>-reduced.*`` with the reductions listed in its report, e.g.
``--full --envs Pendulum-v1,HalfCheetah-v5:131072 --seeds 2``.

Every system trains with the same hyperparameters (8 envs x 256 steps, 10 epochs x 8
minibatches, 64-64 tanh MLPs, lr 3e-4, gamma 0.99, lambda 0.95, clip 0.2, no entropy bonus), seeds
interleaved (seed 0: A B C, seed 1: A B C, ...). A curve point is the mean raw return of the
episodes that finished during that iteration. The final evaluation is 10 deterministic episodes
on raw gymnasium envs (reset seeds 10000..10009, the same for every system) with the
normaliser frozen. Plots show the mean over seeds and the min-max band.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from benchmarks import common
from benchmarks.common import finite_median, interleaved, ppo_shape
from benchmarks.systems import LEARNING, REFERENCE, SB3, SYSTEMS, learning_rows, runner


@dataclass(frozen=True)
class Settings:
    frames: dict[str, int]
    """Frames per run, per env id (whole batches of num_envs x num_steps)."""
    seeds: int
    num_envs: int = 8
    num_steps: int = 256
    epochs: int = 10
    minibatches: int = 8
    eval_episodes: int = 10
    compile: bool = True
    """False: the tdppo row runs eager (``--smoke``)."""
    per_env_rows: bool = False
    """True: :func:`benchmarks.systems.learning_rows` (Pendulum-v1 also through tdppo's gym
    backend; HalfCheetah-v5 as "tdppo gym compiled"); False: :data:`LEARNING` on every env."""
    note: str = ""


_BASE = {"Pendulum-v1": 200_704, "CartPole-v1": 100_352, "Acrobot-v1": 100_352}
MODES: dict[str, Settings] = {
    "default": Settings(frames=_BASE, seeds=3, per_env_rows=True),
    "full": Settings(frames={**_BASE, "HalfCheetah-v5": 1_001_472}, seeds=3, per_env_rows=True),
    "quick": Settings(
        frames={"Pendulum-v1": 4096, "CartPole-v1": 4096},
        seeds=3,
        eval_episodes=3,
        note="--quick (2-minute budget): 2 iterations per run, 3 eval episodes, and no "
        "Acrobot-v1 (it does not fit): a pipeline check, the curves say nothing about learning.",
    ),
    "smoke": Settings(
        frames={"Pendulum-v1": 2048, "CartPole-v1": 2048},
        seeds=1,
        num_steps=128,
        epochs=2,
        minibatches=2,
        eval_episodes=1,
        compile=False,
        note="--smoke: a pipeline check, not a measurement (2 epochs x 2 minibatches, 1 seed, "
        "tdppo eager).",
    ),
}


def _changes(base: Settings, s: Settings) -> str:
    """What ``s`` changes of its mode ``base``, in words ('' when nothing)."""
    out = []
    if s.seeds != base.seeds:
        out.append(f"{s.seeds} seed(s), not {base.seeds}")
    for e, f in s.frames.items():
        if e not in base.frames:
            out.append(f"{e} added ({f:,} frames)")
        elif f != base.frames[e]:
            out.append(f"{e} {f:,} frames, not {base.frames[e]:,}")
    dropped = [e for e in base.frames if e not in s.frames]
    if dropped:
        out.append("not run: " + ", ".join(dropped))
    return ("Reduced / changed from the mode: " + "; ".join(out) + ".") if out else ""


def _final(curve: list, frac: float = 0.1) -> float:
    """Mean of the curve's finite returns over its last ``frac`` of points (at least one)."""
    if not curve:
        return math.nan
    k = max(1, int(round(len(curve) * frac)))
    vals = [c[2] for c in curve[-k:] if math.isfinite(c[2])]
    if not vals:  # no episode finished at the very end: the last one that did
        vals = [c[2] for c in curve if math.isfinite(c[2])][-1:]
    return float(np.mean(vals)) if vals else math.nan


def _spread(values: list[float]) -> tuple[float, float, float]:
    vals = [v for v in values if math.isfinite(v)]
    if not vals:
        return math.nan, math.nan, math.nan
    return float(np.mean(vals)), min(vals), max(vals)


def aligned(curves: list[list]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Curves of several seeds on one grid: ``frames [P]``, ``wall [P]`` (mean over seeds) and
    ``returns [S, P]`` with gaps (no episode finished) filled by the previous point."""
    p = min(len(c) for c in curves)
    arr = np.array([[pt for pt in c[:p]] for c in curves], dtype=np.float64)  # [S, P, 3]
    returns = arr[:, :, 2].copy()
    for s in range(returns.shape[0]):
        for i in range(1, p):
            if not math.isfinite(returns[s, i]):
                returns[s, i] = returns[s, i - 1]
    return arr[0, :, 0], arr[:, :, 1].mean(axis=0), returns


def run(
    mode: str = "default",
    threads: int = 1,
    out: Path = common.RESULTS,
    seeds: int | None = None,
    frames: int | None = None,
    log: Callable[[str], None] = print,
    envs: Sequence[tuple[str, int | None]] = (),
) -> dict[str, Path]:
    """Run the benchmark in ``mode``; write curves and summary CSVs, markdown and plots.

    ``seeds``, ``frames`` (every env) and ``envs`` (``(env id, frames or None)`` replacing the
    mode's envs; None: the mode's frames for it, else ``frames``, else 200,704) reduce or change
    the mode; the files then carry ``-<mode>-reduced`` and the report lists what changed."""
    base = s = MODES[mode]
    batch = s.num_envs * s.num_steps
    whole = lambda f: max(1, f // batch) * batch  # noqa: E731
    if seeds:
        s = replace(s, seeds=seeds)
    if frames:
        s = replace(s, frames={e: whole(frames) for e in s.frames})
    if envs:
        default = whole(frames) if frames else 200_704
        s = replace(s, frames={e: whole(f) if f else s.frames.get(e, default) for e, f in envs})
    changed = _changes(base, s)
    if changed:
        s = replace(s, note=(s.note + "\n\n" if s.note else "") + changed)
    facts = common.machine_facts(threads)
    log("machine: " + ", ".join(f"{k}={v}" for k, v in facts.items()))

    results: dict[str, dict[str, list[dict]]] = {}
    eager = not s.compile
    for env_id, env_frames in s.frames.items():
        log(f"== learning on {env_id}, {env_frames} frames, {s.seeds} seeds")
        kw = dict(
            env_id=env_id,
            frames=env_frames,
            **ppo_shape(s),
            threads=threads,
            eval_episodes=s.eval_episodes,
        )
        rows = {
            name: (lambda seed, name=name, kw=kw: runner(name, eager=eager)(seed=seed, **kw))
            for name in (learning_rows(env_id) if s.per_env_rows else LEARNING)
        }
        results[env_id] = interleaved(rows, s.seeds, log)

    curves_rows, summary = [], []
    for env_id, per_system in results.items():
        for name, runs in per_system.items():
            ok = [r for r in runs if not r["error"]]
            for r in ok:
                for f, w, ret in r["curve"]:
                    curves_rows.append(
                        {
                            "env": env_id,
                            "system": name,
                            "seed": r["repeat"],
                            "frames": f,
                            "wall_s": w,
                            "episode_return": ret,
                        }
                    )
            final = _spread([_final(r["curve"]) for r in ok])
            ev = _spread([r["eval_return"] for r in ok])
            summary.append(
                {
                    "env": env_id,
                    "system": name,
                    "seeds": len(ok),
                    "frames": ok[0]["frames"] if ok else "",
                    "final_return": final[0],
                    "final_min": final[1],
                    "final_max": final[2],
                    "eval_return": ev[0],
                    "eval_min": ev[1],
                    "eval_max": ev[2],
                    "wall_s": finite_median([r["wall_s"] for r in ok]),
                    "sps": finite_median([r["sps"] for r in ok]),
                    "sps_min": min((r["sps"] for r in ok), default=math.nan),
                    "sps_max": max((r["sps"] for r in ok), default=math.nan),
                    "error": next((r["error"] for r in runs if r["error"]), ""),
                }
            )
        mine = [r for r in summary if r["env"] == env_id]
        for who, col in ((REFERENCE, "x_cleanrl"), (SB3, "x_sb3")):
            ref = next((r for r in mine if r["system"] == who), None)
            for r in mine:
                ok_ref = ref is not None and ref["sps"] > 0
                r[col] = r["sps"] / ref["sps"] if ok_ref else math.nan
                r[col.replace("x_", "wall_x_")] = (
                    ref["wall_s"] / r["wall_s"] if ok_ref and r["wall_s"] > 0 else math.nan
                )

    tag = "" if mode in ("default", "full") else f"-{mode}"
    if changed:  # a reduced run keeps the mode's files
        tag = f"-{mode}-reduced"
    out.mkdir(parents=True, exist_ok=True)
    files = {
        "csv": common.write_csv(out / f"learning{tag}.csv", summary, SUMMARY_COLS),
        "curves_csv": common.write_csv(out / f"learning-curves{tag}.csv", curves_rows, CURVE_COLS),
    }
    for env_id, per_system in results.items():
        files[f"png_{env_id}"] = _plot(out / f"learning-{env_id}{tag}.png", env_id, per_system)
    files["md"] = common.write_markdown(
        out / f"learning{tag}.md", f"Learning curves ({mode})", facts, _sections(s, summary, files)
    )
    log(f"wrote {files['md']}")
    return files


SUMMARY_COLS = [
    "env",
    "system",
    "seeds",
    "frames",
    "final_return",
    "final_min",
    "final_max",
    "eval_return",
    "eval_min",
    "eval_max",
    "wall_s",
    "sps",
    "sps_min",
    "sps_max",
    "x_cleanrl",
    "x_sb3",
    "wall_x_cleanrl",
    "wall_x_sb3",
    "error",
]
CURVE_COLS = ["env", "system", "seed", "frames", "wall_s", "episode_return"]


def _plot(path: Path, env_id: str, per_system: dict[str, list[dict]]) -> Path:
    fig, (ax_f, ax_w) = common.new_figure(2, f"{env_id}: mean over seeds, min-max band")
    for name, runs in per_system.items():
        curves = [r["curve"] for r in runs if not r["error"] and r["curve"]]
        if not curves:
            continue
        frames, wall, returns = aligned(curves)
        label = f"{name} ({len(curves)} seeds)"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            common.plot_spread(ax_f, frames, returns, label)
            common.plot_spread(ax_w, wall, returns, label)
    ax_f.set_xlabel("frames")
    ax_w.set_xlabel("wall-clock seconds")
    for ax in (ax_f, ax_w):
        ax.set_ylabel("episode return")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return common.save_figure(fig, path)


def _sections(s: Settings, summary: list[dict], files: dict[str, Path]) -> list[tuple[str, str]]:
    setup = (
        f"{s.num_envs} envs x {s.num_steps} steps, {s.epochs} epochs x {s.minibatches} "
        f"minibatches, 64-64 tanh MLPs, lr 3e-4 constant, gamma 0.99, lambda 0.95, clip 0.2, no "
        f"entropy bonus, no value clipping, for every system (no per-env tuning). Frames: "
        + ", ".join(f"{e} {f:,}" for e, f in s.frames.items())
        + f". {s.seeds} seeds. `final_return`: mean over seeds of each run's mean episode return "
        f"over its last 10% of iterations (min/max across seeds beside it). `eval_return`: "
        f"{s.eval_episodes} deterministic episodes per seed on raw gymnasium envs, normaliser "
        f"frozen. `sps` includes updates and excludes the first iteration (median over seeds, "
        f"`sps_min`/`sps_max` the spread). `x_cleanrl`, `x_sb3`: sps over CleanRL-style's and "
        f"SB3's on the same env; `wall_x_cleanrl`, `wall_x_sb3`: their median wall-clock "
        f"(setup and compilation included, evaluation not) over the row's."
    )
    if s.note:
        setup += f"\n\n{s.note}"
    names = LEARNING
    if s.per_env_rows:
        names = list(dict.fromkeys(n for e in s.frames for n in learning_rows(e)))
    rows = "\n".join(f"- **{n}**: {SYSTEMS[n].note}" for n in names)
    plots = "\n".join(f"![{k}]({p.name})" for k, p in files.items() if p.suffix == ".png")
    return [
        ("Setup", setup + "\n\nRows:\n\n" + rows),
        ("Final and evaluation returns", common.markdown_table(summary, SUMMARY_COLS)),
        ("Plots", plots),
    ]
