"""The training loop: collect -> GAE -> update, over one TrainState TensorDict.

Impure by nature (env stepping, files, logging); everything it calls is a pure function of
the state. Read top to bottom::

    SETUP     config, threads, device, env pipeline, networks, the TrainState
    RESUME    strict load of the latest intact checkpoint into the live state
    LOOP      COLLECT (T x num_envs steps) -> VALUES -> GAE -> UPDATE -> LOG -> CHECKPOINT
    FINISH    final checkpoint, evaluation with frozen statistics
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from pathlib import Path

import torch
from tensordict import TensorDict

from tdppo import checkpoint as ckpt
from tdppo import nets, ppo
from tdppo import random as trand
from tdppo.config import Config, config_diff
from tdppo.envs import make_env
from tdppo.metrics import MetricsLog, Progress
from tdppo.optim import adam_init
from tdppo.rollout import FusedCollector, make_collector
from tdppo.state import STREAMS, build_state, env_carry, write_back

__all__ = ["train", "resolve_device", "set_threads", "build_components"]


def resolve_device(spec: str) -> torch.device:
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(spec)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"--device {spec}: CUDA is not available on this machine (use cpu or auto)"
        )
    return dev


def set_threads(threads: int | None, device: torch.device) -> None:
    if threads is not None:
        torch.set_num_threads(threads)
    elif device.type == "cpu":
        torch.set_num_threads(1)


def default_run_dir(cfg: Config) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{cfg.env}-s{cfg.seed}-{stamp}"


def build_components(cfg: Config, device: torch.device):
    """Env pipeline, actor, critic (initialised from ``cfg.seed``), exactly as ``train`` does."""
    env = make_env(
        cfg.env,
        cfg.num_envs,
        device=device,
        backend=cfg.backend,
        normalize_obs=cfg.normalize_obs,
        normalize_reward=cfg.normalize_reward,
        gamma=cfg.gamma,
        seed=cfg.seed,
        obs_clip=cfg.obs_clip,
        reward_clip=cfg.reward_clip,
    )
    obs_dim = env.observation_spec["observation"].shape[-1]
    action_spec = env.action_spec
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        actor = nets.make_actor(
            obs_dim,
            action_spec,
            hidden=cfg.hidden,
            activation=cfg.activation,
            init_log_std=cfg.init_log_std,
            device=device,
        )
        critic = nets.make_critic(
            obs_dim, hidden=cfg.hidden, activation=cfg.activation, device=device
        )
    return env, actor, critic


def _hp(cfg: Config, device: torch.device) -> TensorDict:
    f = lambda x: torch.tensor(float(x), dtype=torch.float32, device=device)
    return TensorDict(
        {
            "lr": f(cfg.lr),
            "clip_eps": f(cfg.clip_eps),
            "vf_coef": f(cfg.vf_coef),
            "ent_coef": f(cfg.ent_coef),
            "max_grad_norm": f(cfg.max_grad_norm),
        },
        batch_size=[],
    )


def carry_keys(collector) -> list | None:
    if isinstance(collector, FusedCollector):
        keys = ["observation", "state", "step_count", "episode"]
        if any(kind == "sum" for _, kind, _ in collector.plan):
            keys.append("episode_reward")
        return keys
    return None


def _say(cfg: Config, msg: str) -> None:
    if not cfg.quiet:
        print(msg, file=sys.stderr, flush=True)


def train(config: Config | None = None, **overrides) -> TensorDict:
    """Train PPO as ``config`` says; returns the final TrainState TensorDict.

    Writes ``run_dir/metrics.csv`` and checkpoints ``run_dir/checkpoints/<frames>/``. With
    ``config.resume`` it continues ``run_dir`` from its latest intact checkpoint; on CPU the
    result is bit-for-bit the run that was never interrupted.
    """
    # -- SETUP -----------------------------------------------------------------------------------
    cfg = dataclasses.replace(config or Config(), **overrides).validate()
    device = resolve_device(cfg.device)
    if cfg.cudagraphs and (device.type != "cuda" or not cfg.compile):
        raise ValueError("--cudagraphs needs a CUDA device and --compile")
    set_threads(cfg.threads, device)
    if cfg.resume and not cfg.run_dir:
        raise ValueError("--resume needs --run-dir (the run to continue)")
    run_dir = Path(cfg.run_dir) if cfg.run_dir else default_run_dir(cfg)
    if not cfg.resume and (run_dir / "checkpoints").exists() and ckpt.list_checkpoints(run_dir):
        raise ValueError(
            f"{run_dir} already holds checkpoints: pass --resume to continue it, or choose "
            "another --run-dir (nothing was overwritten)"
        )
    saved = None
    if cfg.resume:
        # Read and verify before building anything: a config mismatch or a damaged run is
        # reported before any file is touched.
        path, skipped = ckpt.resolve(run_dir)
        for bad, why in skipped:  # said even with --quiet: the user must know
            print(f"tdppo: skipping damaged checkpoint {bad}: {why}", file=sys.stderr, flush=True)
        saved = ckpt.load_checkpoint(path, device=device)
        diff = config_diff(ckpt.read_manifest(path)["config"], cfg)
        if diff:
            raise ValueError(
                f"cannot resume {run_dir} with a different config; fields that cannot change "
                f"mid-run differ: {', '.join(diff)}"
            )
    env, actor, critic = build_components(cfg, device)
    collector = make_collector(
        env, actor, trand.fold_in(trand.key(cfg.seed, device), STREAMS["policy"]), cfg.compile
    )
    carry = env.reset()
    keys = carry_keys(collector)
    carry = carry.select(*keys) if keys else carry.exclude("action", "sample_log_prob")
    params0 = TensorDict(
        {
            "policy": TensorDict.from_module(actor).data,
            "value": TensorDict.from_module(critic).data,
        },
        batch_size=[],
    )
    opt_state = adam_init(params0.clone())
    state = build_state(
        actor=actor,
        critic=critic,
        env=env,
        carry=carry,
        opt_state=opt_state,
        seed=cfg.seed,
        config=cfg.to_dict(),
        device=device,
    )
    update = ppo.make_update(
        actor,
        critic,
        epochs=cfg.epochs,
        minibatches=cfg.minibatches,
        clip_vloss=cfg.clip_vloss,
        norm_adv=cfg.norm_adv,
        compile=cfg.compile,
        mode="reduce-overhead" if cfg.cudagraphs else None,
    )
    hp = _hp(cfg, device)
    perm_key = trand.fold_in(state["rng", "key"], STREAMS["minibatch"])

    # -- RESUME ----------------------------------------------------------------------------------
    log = MetricsLog(
        run_dir / "metrics.csv", tensorboard_dir=run_dir / "tb" if cfg.tensorboard else None
    )
    if saved is not None:
        ckpt.check_compatible(state, saved, source=str(path))
        write_back(state.exclude("meta"), saved.exclude("meta"))
        state["meta"] = saved["meta"]
        frames_at = int(state["counters", "frames"])
        if not isinstance(collector, FusedCollector):
            _restart_episodes(env, state, cfg, frames_at)
        log.truncate_after(frames_at)
        if skipped:
            log.note(
                f"resumed from {path.name} after skipping damaged: {[p.name for p, _ in skipped]}"
            )
        _say(cfg, f"tdppo: resumed {run_dir} at {frames_at} frames")
    elif not cfg.quiet:
        _say(cfg, f"tdppo: training {cfg.env} for {cfg.frames} frames in {run_dir}")

    # -- LOOP ------------------------------------------------------------------------------------
    per_iter = cfg.batch_size
    total_iters = math.ceil(cfg.frames / per_iter)
    ckpt_iters = max(1, round(cfg.checkpoint_every / per_iter)) if cfg.checkpoint_every else 0
    progress = Progress(total_iters * per_iter, quiet=cfg.quiet)
    t_start = time.perf_counter()
    frames_start = int(state["counters", "frames"])
    last_saved = frames_start if saved is not None else -1
    it = int(state["counters", "updates"])
    nonfinite0 = _nonfinite(state)
    while it < total_iters:
        c = state["counters"]
        # COLLECT: T vector steps, no host sync
        with torch.no_grad():
            env_td = env_carry(state, env.batch_size)
            new_carry, new_t, batch = collector.collect(
                env_td,
                state["transforms"],
                state["policy"],
                c["steps"],
                cfg.num_steps,
            )
            write_back(env_td, new_carry.select(*env_td.keys()))
            write_back(state["transforms"], new_t)
            # VALUES and GAE (value of the final, pre-reset observation bootstraps truncation)
            value = nets.value(critic, state["value"], batch["observation"])
            next_value = nets.value(critic, state["value"], batch["next", "observation"])
            adv, target = ppo.gae(
                batch["next", "reward"],
                value,
                next_value,
                batch["next", "terminated"],
                batch["next", "done"],
                cfg.gamma,
                cfg.gae_lambda,
            )
        batch["state_value"] = value
        batch["advantage"] = adv
        batch["value_target"] = target
        flat = batch.reshape(-1)
        # UPDATE: epochs x minibatches of the compiled pure update
        if cfg.anneal_frames:
            frac = 1.0 - float(c["frames"]) / cfg.anneal_frames
            hp["lr"].fill_(cfg.lr * max(frac, 0.0))
        params = state.select("policy", "value")
        new_params, new_opt, metrics = update(
            params, state["optimizer"], flat, trand.fold_in(perm_key, c["updates"]), hp
        )
        _check_finite(state, batch, new_params, nonfinite0)  # one host sync per update
        write_back(params, new_params)
        write_back(state["optimizer"], new_opt)
        done = batch["next", "done"]
        n_done = done.sum()
        c["frames"] += per_iter
        c["steps"] += cfg.num_steps
        c["updates"] += 1
        c["episodes"] += n_done
        it += 1
        # LOG (one host sync per logged update)
        if it % cfg.log_every == 0 or it == total_iters:
            frames = int(c["frames"])
            elapsed = time.perf_counter() - t_start
            ep_ret = (batch["next", "episode_reward"] * done).sum() / n_done.clamp(min=1)
            row = {
                "frames": frames,
                "updates": it,
                "time_s": elapsed,
                "sps": (frames - frames_start) / max(elapsed, 1e-9),
                "episode_return_mean": float(ep_ret) if int(n_done) else float("nan"),
                "episodes": int(c["episodes"]),
                "lr": float(hp["lr"]),
                **{k: float(v) for k, v in metrics.items()},
            }
            log.write(row)
            progress.update(frames, row)
        # CHECKPOINT at rollout boundaries
        if ckpt_iters and it % ckpt_iters == 0 and it < total_iters:
            _save(state, run_dir, cfg)
            last_saved = int(c["frames"])

    # -- FINISH ----------------------------------------------------------------------------------
    progress.close()
    if last_saved != int(state["counters", "frames"]):
        path = _save(state, run_dir, cfg)
    else:
        path = run_dir / "checkpoints"
    log.close()
    _say(cfg, f"tdppo: run in {run_dir}, checkpoint {path}")
    if cfg.eval_episodes and not cfg.quiet:
        from tdppo.evaluation import evaluate

        res = evaluate(run_dir, episodes=cfg.eval_episodes, seed=cfg.seed + 10_000)
        _say(
            cfg,
            f"tdppo: eval mean return over {res['episodes']} episodes: {res['mean_return']:.1f}",
        )
    return state


def _restart_episodes(env, state: TensorDict, cfg: Config, frames: int) -> None:
    """Gym backend: the simulator's internal state is not in the checkpoint, so a resumed run
    starts new episodes (statistics frozen during that reset: they stay the checkpoint's).
    Said on stderr and recorded in ``meta`` (``resume_reset_episodes``): not bit-exact."""
    print(
        f"tdppo: warning: backend 'gym' does not capture the simulator's state; the resumed "
        f"run starts new episodes at {frames} frames (exact resume needs a built-in env)",
        file=sys.stderr,
        flush=True,
    )
    norms = [
        t for t in getattr(env.transform, "transforms", [env.transform]) if hasattr(t, "freeze")
    ]
    was = [bool(t.frozen) for t in norms]
    for t in norms:
        t.freeze()
    carry = env.reset()
    for t, f in zip(norms, was):
        if not f:
            t.unfreeze()
    env_td = env_carry(state, env.batch_size)
    write_back(env_td, carry.select(*env_td.keys()))
    prev = state["meta"].get("resume_reset_episodes", torch.zeros((), dtype=torch.int64))
    state["meta", "resume_reset_episodes"] = prev + 1


def _nonfinite(state: TensorDict) -> torch.Tensor:
    """Batches the normalizers skipped because they held NaN/inf (their ``nonfinite`` buffers)."""
    leaves = state["transforms"].flatten_keys("/")
    counts = [v.sum() for k, v in leaves.items() if k.endswith("nonfinite")]
    return torch.stack(counts).sum() if counts else torch.zeros((), dtype=torch.int64)


def _check_finite(
    state: TensorDict, batch: TensorDict, new_params: TensorDict, before: torch.Tensor
) -> None:
    """Stop before a non-finite rollout or a diverged update is written back or saved.

    The fused collector cannot raise inside compiled code: its normalizers skip a non-finite
    batch (statistics untouched) and count it; this is where that count is read, together
    with the rollout's and the new parameters' finiteness, in one host sync.
    """
    rollout_ok = (
        torch.isfinite(batch["next", "reward"]).all()
        & torch.isfinite(batch["next", "observation"]).all()
        & (_nonfinite(state) == before)
    )
    params_ok = torch.stack([torch.isfinite(v).all() for v in new_params.values(True, True)]).all()
    rollout_ok, params_ok = torch.stack([rollout_ok, params_ok]).tolist()
    frames = int(state["counters", "frames"])
    if not rollout_ok:
        raise ValueError(
            f"non-finite observation or reward in the rollout after {frames} frames; the "
            "normalizer statistics were left untouched and no checkpoint was written"
        )
    if not params_ok:
        raise ValueError(
            f"the update produced non-finite parameters after {frames} frames (diverged); "
            "the last checkpoint is intact and nothing was saved"
        )


def _save(state: TensorDict, run_dir: Path, cfg: Config) -> Path:
    state["meta", "saved_unix"] = torch.tensor(time.time(), dtype=torch.float64)
    return ckpt.save_checkpoint(
        run_dir,
        state,
        frames=int(state["counters", "frames"]),
        config=cfg.to_dict(),
        keep=cfg.keep,
    )
