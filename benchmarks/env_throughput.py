"""Random-action rollout throughput of the built-in torch envs against gymnasium and TorchRL.

``python benchmarks/env_throughput.py [--quick|--smoke] [--envs ID,ID] [--threads N] [--out DIR]``
(or ``python -m benchmarks env_throughput ...``).

Systems, each stepping ``num_envs`` envs with random actions and resetting the done ones:

- ``compiled``: the pure step ``tdppo.envs.autoreset_step`` (dynamics, time limit, branch-free
  reset from the counter RNG) plus counter-RNG actions, one ``torch.compile``d call per vector
  step (compilation excluded from the timing);
- ``eager``: the same function without compilation;
- ``torchenv``: :class:`tdppo.envs.TorchEnv` through TorchRL's ``step_and_maybe_reset``;
- ``gym_sync``: gymnasium's ``SyncVectorEnv`` of ``gymnasium.make(id)`` (the reference);
- ``torchrl_gymenv``: TorchRL's ``GymEnv`` (gymnasium ``AsyncVectorEnv``, one subprocess per
  env, autoreset disabled: what ``make_env(..., backend="gym")`` builds), run up to
  ``--gymenv-max`` envs.

Actions of the last three come from a pool of pre-drawn random actions (drawing excluded).
Rows run interleaved (A B C ... A B C ...), ``--repeats`` times (default 3); the figure is the
median, and ratios are to ``gym_sync`` at the same ``num_envs``. One thread (``--threads``).
Writes ``env_throughput{-quick,-smoke}.{md,csv}`` to ``benchmarks/results`` (or ``--out``).

Module import stays light on purpose: gymnasium's ``AsyncVectorEnv`` spawns workers that
re-import ``__main__``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SYSTEMS = ("compiled", "eager", "torchenv", "gym_sync", "torchrl_gymenv")
LABELS = {
    "compiled": "autoreset_step, torch.compile",
    "eager": "autoreset_step, eager",
    "torchenv": "TorchEnv.step_and_maybe_reset",
    "gym_sync": "gymnasium SyncVectorEnv",
    "torchrl_gymenv": "TorchRL GymEnv (async)",
}
COLUMNS = ["env", "num_envs", "system", "sps_median", "ratio_vs_gym_sync", "sps_runs", "note"]
MODES = {
    # sizes, seconds per timed repeat, repeats, compile?, default envs
    "full": ((8, 64, 1024, 16384), 1.0, 3, True, ("Pendulum-v1", "CartPole-v1")),
    "quick": ((8, 1024), 0.3, 3, True, ("Pendulum-v1",)),
    "smoke": ((8,), 0.05, 1, False, ("CartPole-v1",)),
}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="2 sizes, Pendulum only (~2 min)")
    mode.add_argument("--smoke", action="store_true", help="8 envs, no compile (seconds)")
    p.add_argument("--envs", default=None, help="comma-separated built-in ids")
    p.add_argument("--sizes", default=None, help="comma-separated num_envs values")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--gymenv-max", type=int, default=64, help="largest num_envs for GymEnv")
    p.add_argument("--out", type=Path, default=None)
    return p


# ----------------------------------------------------------------------------- systems
# Each builder returns ``step() -> None`` that advances all envs by one vector step; it does
# every one-off cost (construction, compilation, warm-up) before returning.


def _pure_step(dyn, compiled: bool):
    import torch

    from tdppo import random as trand
    from tdppo.envs import autoreset_step

    def step(key, state, count, episode, t):
        k = trand.fold_in(trand.fold_in(key, 1), t)
        n = state.shape[0]
        if dyn.discrete:
            action = trand.bits(k, (n,)) % dyn.n_actions
        else:
            u = trand.uniform(k, (n, dyn.action_dim), state.dtype)
            action = dyn.action_low + (dyn.action_high - dyn.action_low) * u
        out = autoreset_step(dyn, key, state, count, episode, action)
        return out.state, out.step_count, out.episode, out.reward

    if compiled:
        torch._dynamo.reset()  # one graph per (env, size); no recompile limit carried over
        step = torch.compile(step, dynamic=False)
    return step


def build_pure(env_id: str, n: int, compiled: bool):
    import torch

    from tdppo import random as trand
    from tdppo.envs import DYNAMICS, reset_uniforms

    dyn = DYNAMICS[env_id]
    fn = _pure_step(dyn, compiled)
    key = trand.key(0)
    episode = torch.zeros(n, dtype=torch.int64)
    carry = [
        dyn.initial_state(reset_uniforms(key, torch.arange(n), episode, dyn.state_dim)),
        torch.zeros(n, dtype=torch.int64),
        episode,
    ]
    t = [torch.zeros((), dtype=torch.int64)]

    def step() -> None:
        state, count, episode, _ = fn(key, *carry, t[0])
        carry[:] = [state, count, episode]
        t[0] = t[0] + 1

    for _ in range(3):  # compile and warm up
        step()
    return step


def _action_pool(env, size: int = 16):
    import torch

    gen = torch.Generator().manual_seed(0)
    spec = env.action_spec
    if spec.dtype == torch.int64:
        return [torch.randint(0, spec.space.n, spec.shape, generator=gen) for _ in range(size)]
    low, high = spec.space.low, spec.space.high
    return [low + (high - low) * torch.rand(spec.shape, generator=gen) for _ in range(size)]


def build_torchrl(env) -> Callable[[], None]:
    pool = _action_pool(env)
    state = {"td": env.reset(), "i": 0}

    def step() -> None:
        td = state["td"]
        td["action"] = pool[state["i"] % len(pool)]
        state["i"] += 1
        _, state["td"] = env.step_and_maybe_reset(td)

    for _ in range(3):
        step()
    return step


def build_torchenv(env_id: str, n: int):
    from tdppo.envs import DYNAMICS, TorchEnv

    return build_torchrl(TorchEnv(DYNAMICS[env_id], n, seed=0))


def build_gymenv(env_id: str, n: int):
    from tdppo.envs.make import _gym_env

    env = _gym_env(env_id, n, None)
    env.set_seed(0)
    return build_torchrl(env), env


def build_gym_sync(env_id: str, n: int):
    import gymnasium as gym

    env = gym.vector.SyncVectorEnv([lambda: gym.make(env_id)] * n)
    env.reset(seed=0)
    env.action_space.seed(0)
    pool = [env.action_space.sample() for _ in range(16)]
    i = [0]

    def step() -> None:
        env.step(pool[i[0] % len(pool)])
        i[0] += 1

    for _ in range(3):
        step()
    return step, env


# ----------------------------------------------------------------------------- measuring


def timed(step, n: int, seconds: float) -> dict:
    """Env steps per second of ``step`` over at least ``seconds`` and 3 vector steps."""
    steps, t0 = 0, time.perf_counter()
    while steps < 3 or time.perf_counter() - t0 < seconds:
        step()
        steps += 1
    wall = time.perf_counter() - t0
    return {"sps": n * steps / wall, "vector_steps": steps, "wall_s": wall}


def run_size(env_id, n, systems, seconds, repeats, gymenv_max, log):
    """All systems at one ``num_envs``, interleaved; ``{system: (runs, note)}``."""
    from benchmarks import common

    built: dict[str, object] = {}
    closers = []
    notes = {s: "" for s in systems}

    def row(system):
        def fn(_repeat: int) -> dict:
            if system not in built:
                t0 = time.perf_counter()
                if system in ("compiled", "eager"):
                    built[system] = build_pure(env_id, n, system == "compiled")
                elif system == "torchenv":
                    built[system] = build_torchenv(env_id, n)
                elif system == "gym_sync":
                    built[system], env = build_gym_sync(env_id, n)
                    closers.append(env)
                else:
                    built[system], env = build_gymenv(env_id, n)
                    closers.append(env)
                notes[system] = f"setup {time.perf_counter() - t0:.1f}s"
            return timed(built[system], n, seconds)

        return fn

    rows = {}
    for s in systems:
        if s == "torchrl_gymenv" and n > gymenv_max:
            notes[s] = f"not run: one subprocess per env (--gymenv-max {gymenv_max})"
            continue
        rows[s] = row(s)
    try:
        results = common.interleaved(rows, repeats, log=log)
    finally:
        for env in closers:
            env.close()
    out = {}
    for s in systems:
        runs = [r["sps"] for r in results.get(s, []) if not r.get("error")]
        errors = [r["error"] for r in results.get(s, []) if r.get("error")]
        out[s] = (runs, errors[0] if errors else notes[s])
    return out


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    mode = "quick" if args.quick else "smoke" if args.smoke else "full"
    sizes, seconds, repeats, do_compile, envs = MODES[mode]
    if args.sizes:
        sizes = tuple(int(s) for s in args.sizes.split(","))
    if args.envs:
        envs = tuple(args.envs.split(","))
    repeats = args.repeats or repeats
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import torch

    from benchmarks import common

    torch.set_num_threads(args.threads)
    systems = [s for s in SYSTEMS if do_compile or s != "compiled"]
    if mode == "smoke":
        systems = [s for s in systems if s != "torchrl_gymenv"]
    facts = common.machine_facts(args.threads)

    def log(msg: str) -> None:
        print(f"[env_throughput] {msg}", flush=True)

    table = []
    for env_id in envs:
        for n in sizes:
            log(f"{env_id} num_envs={n}")
            res = run_size(env_id, n, systems, seconds, repeats, args.gymenv_max, log)
            ref = common.finite_median(res["gym_sync"][0])
            for s in SYSTEMS:
                runs, note = res.get(s, ([], "not run in this mode"))
                med = common.finite_median(runs)
                table.append(
                    {
                        "env": env_id,
                        "num_envs": n,
                        "system": s,
                        "sps_median": med,
                        "ratio_vs_gym_sync": med / ref if runs else float("nan"),
                        "sps_runs": " ".join(f"{v:.0f}" for v in runs),
                        "note": note,
                    }
                )
    tag = "" if mode == "full" else f"-{mode}"
    out = args.out if args.out is not None else common.RESULTS
    csv_path = common.write_csv(out / f"env_throughput{tag}.csv", table, COLUMNS)
    md_path = common.write_markdown(
        out / f"env_throughput{tag}.md",
        "Env throughput: batched torch envs vs gymnasium and TorchRL",
        facts,
        _sections(table, envs, sizes, repeats, seconds),
    )
    print(_summary(table, envs, sizes))
    log(f"wrote {md_path} and {csv_path}")


def _cell(row: dict) -> str:
    from benchmarks import common

    if not row["sps_runs"]:
        return "-"
    return f"{common.fmt(row['sps_median'])} ({row['ratio_vs_gym_sync']:.2f}x)"


def _summary(table: list[dict], envs, sizes) -> str:
    lines = []
    for env_id in envs:
        lines.append(f"\n{env_id}: env steps/s, median (ratio to gymnasium SyncVectorEnv)")
        lines.append("| num_envs | " + " | ".join(LABELS[s] for s in SYSTEMS) + " |")
        lines.append("|---" * (len(SYSTEMS) + 1) + "|")
        for n in sizes:
            cells = {r["system"]: r for r in table if r["env"] == env_id and r["num_envs"] == n}
            lines.append(f"| {n} | " + " | ".join(_cell(cells[s]) for s in SYSTEMS) + " |")
    return "\n".join(lines)


def _sections(table, envs, sizes, repeats, seconds):
    from benchmarks import common

    method = (
        f"Random actions, done envs reset in the batch; median of {repeats} interleaved "
        f"repeats of >= {seconds:g} s each (after construction, compilation and 3 warm-up "
        "steps). Ratios are to gymnasium's SyncVectorEnv at the same num_envs. Systems: "
        + "; ".join(f"`{s}` = {LABELS[s]}" for s in SYSTEMS)
        + ". See the module docstring of benchmarks/env_throughput.py."
    )
    return [
        ("Method", method),
        ("Results", _summary(table, envs, sizes)),
        ("All rows", common.markdown_table(table, COLUMNS)),
    ]


if __name__ == "__main__":
    main()
