"""Pieces every benchmark shares: machine facts, the interleaved runner, writers and plots.

Side effects (files, subprocess ``git``) are confined to :func:`machine_facts`, the ``write_*``
and ``plot_*`` functions. Nothing here imports a baseline, so a baseline may import this module.
"""

from __future__ import annotations

import csv
import datetime
import importlib.metadata
import math
import os
import platform
import statistics
import subprocess
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
REPO = Path(__file__).resolve().parent.parent

HYPER: dict[str, float] = {
    "lr": 3e-4,
    "gamma": 0.99,
    "gae_lambda": 0.95,
    "clip_coef": 0.2,
    "ent_coef": 0.0,
    "vf_coef": 0.5,
    "max_grad_norm": 0.5,
    "adam_eps": 1e-5,
}
"""Hyperparameters shared by every baseline (besides 8 envs x 256 steps, 10 epochs, 8 minibatches,
64-64 tanh MLPs): constant learning rate, no entropy bonus, no value clipping, advantages
normalised per minibatch, gradients clipped at global norm 0.5."""

Curve = list[tuple[int, float, float]]
"""A learning curve: one ``(frames, wall_s, mean return of episodes finished since the previous
point)`` per training iteration; the return is NaN when no episode finished."""

_VERSIONED = ["torch", "torchrl", "tensordict", "gymnasium", "stable-baselines3", "numpy"]


class Unavailable(RuntimeError):
    """A row's system cannot run here (not installed, not written yet): reported, not raised."""


# ----------------------------------------------------------------------------- measuring


def steady_sps(curve: Curve) -> float:
    """Frames per second between the end of the first iteration and the end of the last.

    The first iteration carries one-off costs (imports warmed, ``torch.compile``, allocator), as
    LeanRL's burn-in; with a single iteration the total rate is returned instead.
    """
    if not curve:
        return float("nan")
    if len(curve) < 2:
        frames, wall, _ = curve[0]
        return frames / wall if wall > 0 else float("nan")
    (f0, t0, _), (f1, t1, _) = curve[0], curve[-1]
    return (f1 - f0) / (t1 - t0) if t1 > t0 else float("nan")


def evaluate_raw(
    env_id: str,
    act: Callable[[np.ndarray], Any],
    episodes: int = 10,
    seed: int = 10_000,
) -> float:
    """Mean undiscounted return of ``episodes`` episodes of the raw gymnasium env.

    ``act`` maps one raw observation ``[obs_dim]`` to one action (it holds the frozen normaliser
    and acts deterministically). Box actions are clipped to the action space. Episode ``i`` is
    reset with seed ``seed + i``, the same for every system.
    """
    import gymnasium as gym

    env = gym.make(env_id)
    box = isinstance(env.action_space, gym.spaces.Box)
    returns = []
    for i in range(episodes):
        obs, _ = env.reset(seed=seed + i)
        total, done = 0.0, False
        while not done:
            a = np.asarray(act(obs))
            a = np.clip(a, env.action_space.low, env.action_space.high) if box else int(a)
            obs, r, terminated, truncated, _ = env.step(a)
            total += float(r)
            done = terminated or truncated
        returns.append(total)
    env.close()
    return float(np.mean(returns))


def ppo_shape(s: Any) -> dict[str, int]:
    """The rollout and update shape every system of a benchmark shares, from its settings."""
    return dict(
        num_envs=s.num_envs, num_steps=s.num_steps, epochs=s.epochs, minibatches=s.minibatches
    )


def finite_median(values: Sequence[float]) -> float:
    """Median of the finite values; NaN when there are none."""
    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    return statistics.median(vals) if vals else float("nan")


def interleaved(
    rows: dict[str, Callable[[int], dict]],
    repeats: int,
    log: Callable[[str], None] = print,
) -> dict[str, list[dict]]:
    """Run every row once per repeat, in turn (A B C A B C ...), so drift hits all rows alike.

    ``rows[name](repeat)`` returns a result dict. An exception becomes ``{"error": message}`` and
    the row is not retried in later repeats (a missing system stays missing). Returns, per row,
    the list of result dicts (each with ``"repeat"`` and ``"error"`` set).
    """
    out: dict[str, list[dict]] = {name: [] for name in rows}
    failed: set[str] = set()
    for r in range(repeats):
        for name, fn in rows.items():
            if name in failed:
                continue
            t0 = time.perf_counter()
            try:
                res = dict(fn(r))
                res["error"] = ""
            except Unavailable as e:
                res = {"error": str(e)}
            except Exception as e:  # a broken row must not take the harness down
                res = {"error": f"{type(e).__name__}: {e}"}
                log(traceback.format_exc())
            res["repeat"] = r
            out[name].append(res)
            if res["error"]:
                failed.add(name)
                log(f"[{name}] repeat {r}: FAILED: {res['error']}")
            else:
                log(f"[{name}] repeat {r}: {_brief(res)} ({time.perf_counter() - t0:.1f}s)")
    return out


def _brief(res: dict) -> str:
    keys = [k for k in ("sps", "fps", "frames", "eval_return") if k in res]
    return " ".join(f"{k}={fmt(res[k])}" for k in keys)


# ----------------------------------------------------------------------------- machine facts


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git_commit() -> str:
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        return (sha + ("-dirty" if dirty else "")) if sha else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def machine_facts(threads: int) -> dict[str, str]:
    """CPU, cores, threads used, library versions, device, git commit and date, as strings."""
    import torch

    device = "cpu"
    if torch.cuda.is_available():
        device = f"cpu (cuda present: {torch.cuda.get_device_name(0)}, unused)"
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count() or 0
    facts = {
        "cpu": _cpu_model(),
        "logical cores": str(os.cpu_count()),
        "usable cores": str(usable),
        "threads used": str(threads),
        "device": device,
        "load average (1 min, at start)": f"{os.getloadavg()[0]:.2f}",
        "python": platform.python_version(),
    }
    facts.update({name: _version(name) for name in _VERSIONED})
    facts["git commit"] = _git_commit()
    facts["date (UTC)"] = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M")
    return facts


# ----------------------------------------------------------------------------- writers


def fmt(v: Any) -> str:
    """Numbers to short strings: 3 significant digits, thousands as-is, NaN as '-'."""
    if isinstance(v, bool) or v is None:
        return "" if v is None else str(v)
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if not math.isfinite(v):
            return "-"
        if abs(v) >= 1000:
            return f"{v:,.0f}"
        if abs(v) >= 10:
            return f"{v:.1f}"
        return f"{v:.3g}"
    return str(v)


def write_csv(path: Path, rows: Sequence[dict], columns: Sequence[str]) -> Path:
    """Write ``rows`` (dicts) with the given column order; missing cells are empty."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
        w.writeheader()
        for row in rows:
            w.writerow({c: row.get(c, "") for c in columns})
    return path


def markdown_table(rows: Sequence[dict], columns: Sequence[str]) -> str:
    """A GitHub markdown table of ``rows`` over ``columns``, numbers through :func:`fmt`."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(fmt(row.get(c, "")) for c in columns) + " |")
    return "\n".join(lines)


def write_markdown(
    path: Path,
    title: str,
    facts: dict[str, str],
    sections: Sequence[tuple[str, str]],
) -> Path:
    """Markdown report: title, machine facts, then ``(heading, body)`` sections."""
    parts = [f"# {title}", "", "| machine | |", "|---|---|"]
    parts += [f"| {k} | {v} |" for k, v in facts.items()]
    for heading, body in sections:
        parts += ["", f"## {heading}", "", body.rstrip()]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(parts) + "\n")
    return path


# ----------------------------------------------------------------------------- plots


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_bars(
    path: Path,
    labels: Sequence[str],
    values: Sequence[float],
    title: str,
    ylabel: str,
    notes: Sequence[str] | None = None,
) -> Path:
    """Horizontal bar chart (one bar per label, value and ``notes[i]`` written beside it);
    NaN bars are drawn empty."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 0.5 * len(labels) + 1.5))
    vals = [v if math.isfinite(v) else 0.0 for v in values]
    ax.barh(list(labels), vals, color="tab:blue")
    for i, v in enumerate(values):
        extra = f" {notes[i]}" if notes else ""
        ax.text(vals[i], i, " " + fmt(v) + extra, va="center", fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel(ylabel)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_lines(
    path: Path,
    series: dict[str, tuple[Sequence[float], Sequence[float]]],
    title: str,
    xlabel: str,
    ylabel: str,
    logx: bool = False,
) -> Path:
    """One line per series, ``series[name] = (x, y)``."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, (x, y) in series.items():
        ax.plot(x, y, marker="o", label=name)
    if logx:
        ax.set_xscale("log", base=2)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_spread(
    ax: Any,
    x: np.ndarray,
    ys: np.ndarray,
    label: str,
) -> None:
    """Mean line and min-max band of ``ys`` ``[seeds, points]`` over ``x`` ``[points]``."""
    with np.errstate(all="ignore"):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            mean = np.nanmean(ys, axis=0)
            lo, hi = np.nanmin(ys, axis=0), np.nanmax(ys, axis=0)
    (line,) = ax.plot(x, mean, label=label)
    ax.fill_between(x, lo, hi, color=line.get_color(), alpha=0.2)


def new_figure(ncols: int, title: str) -> tuple[Any, Any]:
    plt = _pyplot()
    fig, axes = plt.subplots(1, ncols, figsize=(5.5 * ncols, 4), squeeze=False)
    fig.suptitle(title)
    return fig, axes[0]


def save_figure(fig: Any, path: Path) -> Path:
    plt = _pyplot()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
