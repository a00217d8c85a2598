"""Speed of one PPO update (``tdppo.ppo.make_update``): eager vs ``torch.compile``.

``python -m benchmarks update_speed [--quick|--smoke] [--threads N] [--out DIR] [--no-compile]``

Default workload: the CleanRL / benchmark-harness shape, B=2048 samples (8 envs x 256 steps),
10 epochs x 8 minibatches of 256, 64-64 tanh MLPs, Pendulum sizes (obs 3, action 1), 1 thread.
Reported: the time of one full update (median of repeats, after a warm-up call that for the
compiled path includes compilation, reported separately), the time per minibatch step, and two
floors for one minibatch step:

* FLOP floor: the forward + backward matmul FLOPs of actor and critic at the minibatch size,
  divided by this machine's measured single-matmul throughput (a 512^3 ``torch.mm``);
* autograd floor: plain ``nn.Sequential`` forward + ``backward`` of both MLPs on the minibatch
  (no PPO loss, no optimizer): what any PyTorch implementation pays per step.

Side effects: writes ``update_speed[_quick|_smoke].md`` under ``--out`` (default
``benchmarks/results``); the last stdout line is the JSON of the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch
from tensordict import TensorDict
from torch import nn
from torchrl.data import Bounded

from tdppo import nets, optim, ppo
from tdppo import random as tr


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks update_speed", description=__doc__)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="2 repeats (compile still included)")
    mode.add_argument("--smoke", action="store_true", help="tiny eager-only pipeline check")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    p.add_argument("--out", type=Path, default=None, help="results directory")
    p.add_argument("--no-compile", action="store_true", help="eager only")
    p.add_argument("--batch", type=int, default=2048)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--minibatches", type=int, default=8)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--obs-dim", type=int, default=3)
    p.add_argument("--act-dim", type=int, default=1)
    return p


def _workload(batch: int, obs_dim: int, act_dim: int):
    """Modules, params, optimizer state, a random rollout batch and CleanRL hyperparameters."""
    torch.manual_seed(0)
    actor = nets.make_actor(obs_dim, Bounded(-1.0, 1.0, shape=(act_dim,)))
    critic = nets.make_critic(obs_dim)
    params = (
        TensorDict(policy=TensorDict.from_module(actor), value=TensorDict.from_module(critic))
        .detach()
        .clone()
    )
    g = torch.Generator().manual_seed(0)
    obs = torch.randn(batch, obs_dim, generator=g)
    with torch.no_grad():
        data = actor(TensorDict(observation=obs, batch_size=[batch]))
    data = data.select("observation", "action", nets.LOG_PROB_KEY)
    data["advantage"] = torch.randn(batch, 1, generator=g)
    data["value_target"] = torch.randn(batch, 1, generator=g)
    data["state_value"] = torch.randn(batch, 1, generator=g)
    hp = TensorDict(
        clip_eps=torch.tensor(0.2),
        vf_coef=torch.tensor(0.5),
        ent_coef=torch.tensor(0.0),
        lr=torch.tensor(3e-4),
        max_grad_norm=torch.tensor(0.5),
        adam_eps=torch.tensor(1e-5),
    )
    return actor, critic, params, optim.adam_init(params), data, hp


def _time_update(update, params, opt_state, data, hp, repeats: int) -> tuple[float, list[float]]:
    """(first call seconds, steady-state seconds per call)."""
    t0 = time.perf_counter()
    update(params, opt_state, data, tr.key(0), hp)
    first = time.perf_counter() - t0
    times = []
    for i in range(repeats):
        t0 = time.perf_counter()
        update(params, opt_state, data, tr.key(i + 1), hp)
        times.append(time.perf_counter() - t0)
    return first, times


def _matmul_flops(net: nn.Module, rows: int) -> int:
    """Forward + backward matmul FLOPs of the Linear layers of ``net`` for ``rows`` inputs:
    2 r i o forward, 2 r i o for the weight gradient, 2 r i o for the input gradient (not for
    the first layer, whose input needs none)."""
    linears = [m for m in net.modules() if isinstance(m, nn.Linear)]
    total = 0
    for k, m in enumerate(linears):
        per = 2 * rows * m.in_features * m.out_features
        total += per * (2 if k == 0 else 3)
    return total


def _peak_flops(repeats: int = 10) -> float:
    a, b = torch.randn(512, 512), torch.randn(512, 512)
    for _ in range(3):
        a @ b
    t0 = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * 512**3 * repeats / (time.perf_counter() - t0)


def _autograd_floor(actor, critic, rows: int, obs_dim: int, repeats: int = 50) -> float:
    """Seconds for plain forward + backward of both networks on ``rows`` observations."""
    actor_net, critic_net = actor.module[0].module, critic.module
    x = torch.randn(rows, obs_dim)

    def once():
        loc, scale = actor_net(x)
        (loc.sum() + scale.sum() + critic_net(x).sum()).backward()

    for _ in range(5):
        once()
    t0 = time.perf_counter()
    for _ in range(repeats):
        once()
    return (time.perf_counter() - t0) / repeats


def main(argv: list[str] | None = None) -> None:
    args, _unknown = _parser().parse_known_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    torch.set_num_threads(args.threads)
    suffix = ""
    if args.quick:
        args.repeats, suffix = 2, "_quick"
    if args.smoke:
        args.batch, args.epochs, args.minibatches, args.repeats = 256, 2, 2, 1
        args.no_compile, suffix = True, "_smoke"

    actor, critic, params, opt_state, data, hp = _workload(args.batch, args.obs_dim, args.act_dim)
    steps = args.epochs * args.minibatches
    mb = args.batch // args.minibatches
    kwargs = dict(epochs=args.epochs, minibatches=args.minibatches)
    result: dict[str, float | int | str] = {
        "batch": args.batch,
        "epochs": args.epochs,
        "minibatches": args.minibatches,
        "minibatch_size": mb,
        "threads": args.threads,
    }
    rows = []
    modes = ["eager"] if args.no_compile else ["eager", "compiled"]
    for mode in modes:
        update = ppo.make_update(actor, critic, compile=mode == "compiled", **kwargs)
        first, times = _time_update(update, params, opt_state, data, hp, args.repeats)
        median = statistics.median(times)
        result[f"{mode}_update_s"] = median
        result[f"{mode}_minibatch_ms"] = 1e3 * median / steps
        result[f"{mode}_first_call_s"] = first
        rows.append(
            {
                "path": mode,
                "update (s)": median,
                "per minibatch (ms)": 1e3 * median / steps,
                "first call (s)": first,
                "repeats": args.repeats,
            }
        )
        print(f"{mode:9s} update {median:.3f} s  ({1e3 * median / steps:.2f} ms/minibatch), "
              f"first call {first:.1f} s", flush=True)  # fmt: skip

    flops = _matmul_flops(actor, mb) + _matmul_flops(critic, mb)
    peak = _peak_flops()
    result["minibatch_matmul_flops"] = flops
    result["machine_matmul_gflops"] = peak / 1e9
    result["flop_floor_minibatch_ms"] = 1e3 * flops / peak
    result["autograd_floor_minibatch_ms"] = 1e3 * _autograd_floor(actor, critic, mb, args.obs_dim)
    print(
        f"floor per minibatch: {result['flop_floor_minibatch_ms']:.3f} ms of matmul FLOPs "
        f"({flops / 1e6:.1f} MFLOP at {peak / 1e9:.1f} GFLOP/s); plain autograd fwd+bwd "
        f"{result['autograd_floor_minibatch_ms']:.2f} ms",
        flush=True,
    )
    if "compiled_update_s" in result:
        result["speedup"] = result["eager_update_s"] / result["compiled_update_s"]

    from benchmarks import common

    out = args.out if args.out is not None else common.RESULTS
    floors = (
        f"Per minibatch of {mb}: matmul FLOP floor {result['flop_floor_minibatch_ms']:.3f} ms "
        f"({flops / 1e6:.1f} MFLOP at a measured {peak / 1e9:.1f} GFLOP/s); plain autograd "
        f"forward + backward of both MLPs {result['autograd_floor_minibatch_ms']:.2f} ms."
    )
    columns = ["path", "update (s)", "per minibatch (ms)", "first call (s)", "repeats"]
    common.write_markdown(
        out / f"update_speed{suffix}.md",
        f"PPO update speed: B={args.batch}, {args.epochs} epochs x {args.minibatches} minibatches",
        common.machine_facts(args.threads),
        [("eager vs compiled", common.markdown_table(rows, columns)), ("floors", floors)],
    )
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
