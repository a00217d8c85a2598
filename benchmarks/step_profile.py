"""Where a training iteration's microseconds go: each compiled part of tdppo's train step alone.

``python -m benchmarks step_profile [--quick|--smoke] [--threads N] [--out DIR]``

Builds the issue's Pendulum-v1 setup (8 envs x 256 steps, 10 epochs x 8 minibatches of 256,
64-64 tanh) through ``tdppo.setup`` and times, each as the median of many calls after a first
call (whose time, tracing and compilation or loading included, is reported too):

- the collector's compiled env step (policy, dynamics, normalizers, autoreset) per vector step,
  called on dicts with its input layout checked, then trusted (``tdppo.jit.guards_checked``
  ``(False)``, as the driver calls it past its first iteration);
- the same step as the collector runs it, 256 steps folded leaf to leaf (``Aot.fold``), per step;
- the compiled package's C++ runner alone on the flat inputs (the floor of a call);
- one compiled minibatch step (grad of the loss, clip, Adam) on dicts, and its runner alone;
- values + GAE over the rollout (eager);
- a whole steady iteration (``step(state)``, layout trusted), per frame: the parts above plus
  the eager glue (permutations, gathers, stacking, counters, metrics).

With ``$TDPPO_COMPILER=dynamo`` the runner rows are absent (torch.compile has no runner).
Per-frame figures divide by the frames each call serves (8 per env step; 256 per minibatch
step, 10 epochs over each frame: x 10 / 256 per frame; 2048 per values + GAE and iteration).
Writes ``step_profile[-quick|-smoke].md`` and ``.csv``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from benchmarks import common


def _median_us(fn, n: int) -> float:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    times.sort()
    return times[len(times) // 2] * 1e6


def _first_s(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def measure(compile: bool = True, calls: int = 200) -> list[dict]:
    import torch

    import tdppo
    from benchmarks.baselines.tdppo_ppo import config_kwargs
    from tdppo import jit, ppo, setup
    from tdppo.learner import make_train_step

    torch.set_num_threads(1)
    cfg = tdppo.Config(
        **config_kwargs("Pendulum-v1", 2048, 0, 8, 256, 10, 8, 1, "torch", compile),
        run_dir=tempfile.mkdtemp(prefix="tdppo-profile-"),
    )
    state, parts = setup.init_state(cfg, torch.device("cpu"))
    rows: list[dict] = []

    def row(part: str, us: float, per_frame: float, first: float = float("nan"), note=""):
        rows.append(
            {
                "part": part,
                "us_per_call": us,
                "us_per_frame": us * per_frame,
                "first_call_s": first,
                "note": note,
            }  # fmt: skip
        )

    # -- collection: one vector step
    plain = ppo._plain
    env = state["env"]
    keys = [k for k in env.keys() if k != "module"]
    carry, ts, p = plain(env.select(*keys)), plain(state["transforms"]), plain(state["policy"])
    key, ek = torch.tensor(5), env.get(("module", "rng_key"))
    env_step = parts.collector.env_step
    aot = isinstance(env_step, jit.Aot)
    with torch.no_grad():
        first = _first_s(lambda: env_step(carry, ts, p, key, ek))
        row("env step (8 envs), layout checked", _median_us(
            lambda: env_step(carry, ts, p, key, ek), calls), 1 / 8, first)  # fmt: skip
        with jit.guards_checked(False):
            us = _median_us(lambda: env_step(carry, ts, p, key, ek), calls)
        row("env step, layout trusted", us, 1 / 8)
        if aot:
            keys_t = torch.arange(256)
            with jit.guards_checked(False):
                us = (
                    _median_us(
                        lambda: env_step.fold(
                            (carry, ts, p, None, ek), (0, 1), 3, keys_t.unbind(0), 2
                        ),
                        5,
                    )
                    / 256
                )
            row("env step, folded over 256 steps (as collected)", us, 1 / 8)
            v, leaves = env_step.variant((carry, ts, p, key, ek))
            row("env step, package runner alone", _median_us(lambda: v.run(leaves), calls), 1 / 8)

    # -- one iteration, to get a real batch; then values + GAE and the minibatch step alone
    step = make_train_step(cfg, parts)
    first_iter = _first_s(lambda: state.update_(step(state)[0]))
    row("whole first iteration (traces, compiles or loads)", float("nan"), float("nan"), first_iter)
    vg = step.values_and_gae
    b = torch.randn(8, 256, 3)
    done = torch.zeros(8, 256, 1, dtype=torch.bool)
    r = torch.randn(8, 256, 1)
    hp = state["hp"]
    args = (state["value"].to_dict(), b, b, r, done, done, hp["gamma"], hp["gae_lambda"])
    with torch.no_grad():
        row("values + GAE (2048 frames)", _median_us(lambda: vg(*args), 20), 1 / 2048,
            note="eager (never compiled)")  # fmt: skip

    mb_step = step.compiled_parts["minibatch_step"]
    params = plain(state.select("policy", "value"))
    opt = plain(state["optimizer"])
    h = {k: hp[k].to(torch.float32) for k in ppo.UPDATE_HP}
    g = torch.Generator().manual_seed(0)
    obs = torch.randn(256, 3, generator=g)
    mb = {
        "observation": obs,
        "action": torch.randn(256, 1, generator=g),
        "sample_log_prob": torch.randn(256, generator=g),
        "advantage": torch.randn(256, 1, generator=g),
        "value_target": torch.randn(256, 1, generator=g),
        "state_value": torch.randn(256, 1, generator=g),
    }
    with jit.guards_checked(False):
        row("minibatch step (256 samples), layout trusted", _median_us(
            lambda: mb_step(params, opt, mb, h), calls), 10 / 256)  # fmt: skip
    if isinstance(mb_step, jit.Aot):
        v, leaves = mb_step.variant((params, opt, mb, h))
        row("minibatch step, package runner alone", _median_us(lambda: v.run(leaves), calls),
            10 / 256)  # fmt: skip

    # -- whole steady iterations (the driver's loop without logging or checkpoints)
    n_iter = 3 if calls <= 10 else 10
    with jit.guards_checked(not compile):
        us = _median_us(lambda: state.update_(step(state)[0]), n_iter)
    row("whole iteration, steady (2048 frames)", us, 1 / 2048,
        note=f"{2048 / us * 1e6:,.0f} SPS")  # fmt: skip
    return rows


COLS = ["part", "us_per_call", "us_per_frame", "first_call_s", "note"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks step_profile")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true")
    mode.add_argument("--smoke", action="store_true", help="eager, few calls (tests)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=common.RESULTS)
    args = p.parse_args(argv)
    calls = 10 if args.smoke else 100 if args.quick else 300
    facts = common.machine_facts(args.threads)
    rows = measure(compile=not args.smoke, calls=calls)
    tag = "-smoke" if args.smoke else "-quick" if args.quick else ""
    args.out.mkdir(parents=True, exist_ok=True)
    common.write_csv(args.out / f"step_profile{tag}.csv", rows, COLS)
    md = common.write_markdown(
        args.out / f"step_profile{tag}.md",
        "Where the microseconds go (tdppo, Pendulum-v1, 8 envs x 256 steps, 10 x 8 minibatches)",
        facts,
        [("Parts", __doc__.split("\n\n", 2)[2] + "\n\n" + common.markdown_table(rows, COLS))],
    )
    for r in rows:
        per_call, per_frame = common.fmt(r["us_per_call"]), common.fmt(r["us_per_frame"])
        first = common.fmt(r["first_call_s"])
        print(f"{r['part']:42s} {per_call:>10s} us/call {per_frame:>8s} us/frame  first {first} s")
    print(f"wrote {md}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
