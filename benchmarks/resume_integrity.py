"""The seed ticket as a benchmark: resume with and without the normalizer statistics.

Three continuations of one training run from its checkpoint at N frames, to N + M frames:

(a) tdppo resume: the checkpoint restores everything (``tdppo train --resume``);
(b) the seed-ticket bug: the same checkpoint with the transform statistics reset to fresh
    (mean 0, var 1, count 1e-4, return accumulators 0), which is what a save path that forgot
    the normalizer amounts to;
(c) the uninterrupted run.

Writes ``resume_integrity[_quick].{csv,md,png}``: episode return over frames for the three,
the mean training return in the first updates after N, the final deterministic evaluation,
and whether (a) ends bit-identical to (c).

    python -m benchmarks resume_integrity [--quick | --smoke] [--threads 1] [--out DIR]
"""

from __future__ import annotations

import argparse
import csv
import math
import tempfile
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results"
EXACT = ("policy", "value", "optimizer", "transforms", "env", "rng", "counters")


def _fresh_statistics(transforms):
    """The transform stack's state as a run that never saved it would rebuild it."""
    from tdppo.stats import INITIAL_COUNT

    out = transforms.clone()
    for key, value in out.flatten_keys("/").items():
        leaf = key.rsplit("/", 1)[-1]
        fresh = {"mean": 0.0, "var": 1.0, "count": INITIAL_COUNT, "acc": 0.0}.get(leaf)
        if fresh is not None:
            out.set(tuple(key.split("/")), torch.full_like(value, fresh))
    # ObservationNorm's derived loc/scale follow mean/var on the next step
    return out


def _curve(run_dir: Path) -> list[tuple[int, float]]:
    with open(run_dir / "metrics.csv", newline="") as f:
        return [
            (int(float(r["frames"])), float(r["episode_return_mean"]))
            for r in csv.DictReader(f)
            if r.get("frames") and r.get("episode_return_mean") not in (None, "", "nan")
        ]


def _identical(a, b) -> bool:
    for top in EXACT:
        la, lb = a[top].flatten_keys("/"), b[top].flatten_keys("/")
        if set(la.keys()) != set(lb.keys()):
            return False
        if not all(torch.equal(la[k], lb[k]) for k in la.keys()):
            return False
    return True


def run(pre: int, post: int, threads: int, compile: bool, seed: int, work: Path, env: str) -> dict:
    import tdppo
    from tdppo import checkpoint as ckpt

    common = dict(threads=threads, compile=compile, quiet=True, eval_episodes=0, seed=seed)
    cfg = tdppo.Config.for_env(env, **common)
    per = cfg.batch_size
    pre = math.ceil(pre / per) * per
    total = pre + math.ceil(post / per) * per
    c_dir, a_dir, b_dir = work / "uninterrupted", work / "resumed", work / "fresh_stats"
    # (c) uninterrupted, keeping its checkpoint at N as the fork point
    tdppo.train(cfg, frames=total, run_dir=str(c_dir), checkpoint_every=pre, keep=100)
    fork = ckpt.load_checkpoint(c_dir / "checkpoints" / f"{pre:012d}")
    manifest_cfg = ckpt.read_manifest(c_dir / "checkpoints" / f"{pre:012d}")["config"]
    for d, state in ((a_dir, fork), (b_dir, fork.clone())):
        if d is b_dir:
            state["transforms"] = _fresh_statistics(state["transforms"])
        ckpt.save_checkpoint(d, state, frames=pre, config={**manifest_cfg, "run_dir": str(d)})
        # metrics up to N, as the interrupted run would have them
        rows = (c_dir / "metrics.csv").read_text().splitlines()
        head = [rows[0]] + [r for r in rows[1:] if r and int(float(r.split(",")[0])) <= pre]
        (d / "metrics.csv").write_text("\n".join(head) + "\n")
    final = {}
    for name, d in (("a", a_dir), ("b", b_dir)):
        final[name] = tdppo.train(cfg, frames=total, run_dir=str(d), resume=True)
    final["c"] = ckpt.load_checkpoint(c_dir)
    evals = {
        name: tdppo.evaluate(d, episodes=10, seed=seed + 1000)["mean_return"]
        for name, d in (("a", a_dir), ("b", b_dir), ("c", c_dir))
    }
    curves = {"a": _curve(a_dir), "b": _curve(b_dir), "c": _curve(c_dir)}
    window = 5 * per  # the first five updates after the fork

    def after(name):
        vals = [r for f, r in curves[name] if pre < f <= pre + window]
        return sum(vals) / len(vals) if vals else float("nan")

    before = [r for f, r in curves["c"] if pre - window < f <= pre]
    return {
        "env": env,
        "fork_frames": pre,
        "total_frames": total,
        "return_before_fork": sum(before) / max(len(before), 1),
        "after_a": after("a"),
        "after_b": after("b"),
        "after_c": after("c"),
        "eval_a": evals["a"],
        "eval_b": evals["b"],
        "eval_c": evals["c"],
        "a_identical_to_c": _identical(final["a"], final["c"]),
        "curves": curves,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks resume_integrity")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true")
    mode.add_argument("--smoke", action="store_true")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--env", default="Pendulum-v1")
    p.add_argument("--seed", type=int, default=0)
    a, _ = p.parse_known_args(argv)
    torch.set_num_threads(a.threads)
    if a.smoke:
        pre, post, compile, suffix = 2048, 2048, False, "_smoke"
    elif a.quick:
        pre, post, compile, suffix = 49_152, 16_384, False, "_quick"
    else:
        pre, post, compile, suffix = 196_608, 65_536, True, ""
    with tempfile.TemporaryDirectory() as tmp:
        res = run(pre, post, a.threads, compile, a.seed, Path(tmp), a.env)
    a.out.mkdir(parents=True, exist_ok=True)
    base = a.out / f"resume_integrity{suffix}"
    with open(base.with_suffix(".csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["run", "frames", "episode_return_mean"])
        for name, curve in res["curves"].items():
            for fr, r in curve:
                w.writerow([name, fr, r])
    rows = [
        ("(a) tdppo resume", res["after_a"], res["eval_a"]),
        ("(b) resume, normalizer reset (seed-ticket bug)", res["after_b"], res["eval_b"]),
        ("(c) uninterrupted", res["after_c"], res["eval_c"]),
    ]
    md = [
        f"# resume_integrity{suffix}: {res['env']}, fork at {res['fork_frames']} frames, "
        f"end at {res['total_frames']}",
        "",
        f"Training return over the 5 updates before the fork: {res['return_before_fork']:.1f}",
        "",
        "| continuation | train return, 5 updates after fork | final eval (10 ep.) |",
        "|---|---|---|",
        *[f"| {n} | {x:.1f} | {e:.1f} |" for n, x, e in rows],
        "",
        f"(a) bit-identical to (c) in policy, value, optimizer, transforms, env, rng, counters: "
        f"**{res['a_identical_to_c']}**",
    ]
    base.with_suffix(".md").write_text("\n".join(md) + "\n")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(8, 4.5))
        styles = {"c": ("uninterrupted", "-", 3.0), "a": ("tdppo resume", "--", 1.5)}
        styles["b"] = ("resume, normalizer reset", "-", 1.5)
        for name in ("c", "a", "b"):
            label, ls, lw = styles[name]
            xs = [f for f, _ in res["curves"][name]]
            ys = [r for _, r in res["curves"][name]]
            ax.plot(xs, ys, ls, lw=lw, label=label)
        ax.axvline(res["fork_frames"], color="grey", lw=0.8)
        ax.set_xlabel("frames")
        ax.set_ylabel("training episode return")
        ax.set_title(f"{res['env']}: resume at {res['fork_frames']} frames")
        ax.legend()
        fig.tight_layout()
        fig.savefig(base.with_suffix(".png"), dpi=110)
    except ImportError:
        pass
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
