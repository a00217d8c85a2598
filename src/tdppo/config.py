"""Every hyperparameter of a tdppo run: one frozen dataclass, a docstring per field.

The CLI (``tdppo train``) is generated from this class by tyro, so each field is a flag
(``num_envs`` -> ``--num-envs``). Per-environment presets (:data:`PRESETS`) replace the
defaults of the fields they name; flags given on the command line override both.

>>> from tdppo import Config
>>> cfg = Config.for_env("CartPole-v1", seed=3)
>>> cfg.env, cfg.seed, cfg.ent_coef
('CartPole-v1', 3, 0.01)
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["Config", "PRESETS", "RESUME_FIXED", "RESUME_MUTABLE", "config_diff"]


@dataclass(frozen=True)
class Config:
    """PPO hyperparameters, environment and run settings (defaults learn Pendulum-v1)."""

    # --- environment -------------------------------------------------------------------------
    env: str = "Pendulum-v1"
    """Gymnasium id. Built-in torch envs: Pendulum-v1, CartPole-v1, Acrobot-v1,
    MountainCarContinuous-v0; any other id runs through TorchRL's GymEnv."""
    backend: Literal["auto", "torch", "gym"] = "auto"
    """'torch' = tdppo's batched torch envs, 'gym' = TorchRL GymEnv over gymnasium,
    'auto' = torch when the id is built in."""
    num_envs: int = 8
    """Environments stepped in parallel (one batch, all processes together)."""
    shards: int = 1
    """Data-parallel shards of the env batch (divides num_envs): each shard's normalizer
    moments are merged in shard order and each shard is shuffled alone, so a run depends on
    shards, not on how many processes run them (torchrun --nproc_per_node=N, N dividing shards)."""
    normalize_obs: bool = True
    """Running observation normalization (gymnasium NormalizeObservation semantics)."""
    normalize_reward: bool = True
    """Reward scaling by the running std of the discounted return (NormalizeReward)."""
    obs_clip: float = 10.0
    """Clip normalized observations to [-obs_clip, obs_clip]."""
    reward_clip: float = 10.0
    """Clip normalized rewards to [-reward_clip, reward_clip]."""

    # --- run ------------------------------------------------------------------------------------
    frames: int = 200_000
    """Total environment frames (all envs together) to train for; rounded up to whole
    rollouts of num_envs x num_steps."""
    seed: int = 0
    """Seed of every random draw (network init, actions, env resets, minibatches)."""
    device: str = "auto"
    """'auto' (CUDA when present), 'cpu', 'cuda' or 'cuda:N'."""
    threads: int | None = None
    """torch intra-op threads; None = 1 on CPU (measured faster than 2 for these small
    networks on a 2-core machine), untouched on CUDA."""
    run_dir: str | None = None
    """Run directory (checkpoints/, metrics.csv); default runs/<env>-s<seed>-<time>."""
    checkpoint_every: int = 50_000
    """Save a checkpoint every this many frames (rounded to rollouts; 0 = only at the end)."""
    keep: int = 3
    """Keep the newest K checkpoints (the one LATEST names is never deleted)."""
    resume: bool = False
    """Continue the run in --run-dir from its latest intact checkpoint up to --frames."""
    compile: bool = True
    """Compile the rollout step and the PPO minibatch update (on the CPU ahead of time into
    cached AOTInductor packages, on CUDA with torch.compile)."""
    cudagraphs: bool = False
    """On CUDA, also capture the compiled update in CUDA graphs (mode='reduce-overhead')."""
    log_every: int = 1
    """Write a metrics.csv row every this many updates."""
    quiet: bool = False
    """No progress output on stdout/stderr (metrics.csv is still written)."""
    tensorboard: bool = False
    """Also log to TensorBoard through TorchRL's TensorboardLogger (needs `tensorboard`)."""

    # --- PPO --------------------------------------------------------------------------------------
    num_steps: int = 256
    """Rollout length T per env per update (batch = num_envs x num_steps)."""
    epochs: int = 10
    """Passes over each rollout batch."""
    minibatches: int = 8
    """Minibatches per epoch (batch must divide evenly)."""
    lr: float = 3e-4
    """Adam learning rate."""
    anneal_frames: int = 0
    """Anneal lr linearly to 0 over this many frames (0 = constant lr). A fixed horizon
    rather than --frames, so extending a run on resume does not change the schedule."""
    adam_eps: float = 1e-5
    """Adam epsilon (CleanRL's 1e-5)."""
    gamma: float = 0.99
    """Discount factor (also used by the reward normalizer's return)."""
    gae_lambda: float = 0.95
    """GAE lambda."""
    clip_eps: float = 0.2
    """PPO ratio clip epsilon."""
    clip_vloss: bool = True
    """Clip the value loss around the old value prediction (CleanRL)."""
    norm_adv: bool = True
    """Normalize advantages per minibatch."""
    ent_coef: float = 0.0
    """Entropy bonus coefficient."""
    vf_coef: float = 0.5
    """Value loss coefficient."""
    max_grad_norm: float = 0.5
    """Global gradient-norm clip."""

    # --- networks -------------------------------------------------------------------------------
    hidden: tuple[int, ...] = (64, 64)
    """Hidden layer sizes of both actor and critic MLPs."""
    activation: Literal["tanh", "relu", "elu"] = "tanh"
    """Hidden activation."""
    init_log_std: float = 0.0
    """Initial log standard deviation of the Gaussian policy (Box actions)."""

    # --- evaluation -----------------------------------------------------------------------------
    eval_episodes: int = 10
    """Deterministic episodes evaluated (and printed) at the end of training (0 or --quiet:
    none; `tdppo eval RUN` evaluates any time)."""

    @property
    def batch_size(self) -> int:
        return self.num_envs * self.num_steps

    @property
    def minibatch_size(self) -> int:
        return self.batch_size // self.minibatches

    def validate(self) -> Config:
        """Raise ``ValueError`` with a one-line message for an inconsistent config."""
        problems = []
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, float) and not math.isfinite(v):
                problems.append(f"{f.name} must be a finite number (got {v})")
        if problems:  # the comparisons below are meaningless for NaN
            raise ValueError("invalid config: " + "; ".join(problems))
        for name in ("num_envs", "num_steps", "epochs", "minibatches", "frames"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1 (got {getattr(self, name)})")
        if self.minibatches >= 1 and self.batch_size % self.minibatches:
            problems.append(
                f"num_envs x num_steps = {self.batch_size} is not divisible by "
                f"minibatches = {self.minibatches}"
            )
        elif self.norm_adv and self.minibatches >= 1 and self.batch_size // self.minibatches < 2:
            problems.append(
                f"minibatches of {self.batch_size // self.minibatches} sample "
                f"({self.batch_size} / {self.minibatches}): advantage normalization needs >= 2; "
                "lower --minibatches or pass --no-norm-adv"
            )
        if self.shards < 1 or self.num_envs % self.shards:
            problems.append(f"shards = {self.shards} must be >= 1 and divide num_envs")
        elif self.minibatches >= 1 and (self.batch_size // self.shards) % self.minibatches:
            problems.append(
                f"each shard's {self.batch_size // self.shards} samples are not divisible by "
                f"minibatches = {self.minibatches}"
            )
        if not 0.0 < self.gamma <= 1.0:
            problems.append(f"gamma must be in (0, 1] (got {self.gamma})")
        if not 0.0 <= self.gae_lambda <= 1.0:
            problems.append(f"gae_lambda must be in [0, 1] (got {self.gae_lambda})")
        if self.lr <= 0:
            problems.append(f"lr must be > 0 (got {self.lr})")
        if self.checkpoint_every < 0 or self.keep < 1:
            problems.append("checkpoint_every must be >= 0 and keep >= 1")
        if not self.hidden or min(self.hidden) < 1:
            problems.append(f"hidden sizes must be positive (got {self.hidden})")
        if problems:
            raise ValueError("invalid config: " + "; ".join(problems))
        return self

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["hidden"] = list(self.hidden)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Config:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown config fields {unknown}")
        d = dict(d)
        if "hidden" in d:
            d["hidden"] = tuple(d["hidden"])
        return cls(**d)

    @classmethod
    def for_env(cls, env: str, **overrides: Any) -> Config:
        """The defaults, then the preset of ``env`` (if any), then ``overrides``."""
        return cls(**{**PRESETS.get(env, {}), "env": env, **overrides})


PRESETS: dict[str, dict[str, Any]] = {
    # Measured here (README "Learning"): Pendulum follows SB3-zoo's choices (short horizon,
    # larger lr, many small minibatches) plus a linear lr anneal; CartPole is CleanRL's.
    "Pendulum-v1": dict(
        num_envs=8,
        num_steps=256,
        gamma=0.9,
        lr=1e-3,
        minibatches=32,
        epochs=10,
        ent_coef=0.0,
        anneal_frames=200_000,  # lr is 0 from 200k frames on: --anneal-frames 0 to train longer
    ),
    "CartPole-v1": dict(
        num_envs=8,
        num_steps=128,
        gamma=0.99,
        lr=2.5e-4,
        minibatches=4,
        epochs=4,
        ent_coef=0.01,
        frames=100_000,
    ),
    "Acrobot-v1": dict(
        num_envs=8, num_steps=256, gamma=0.99, lr=3e-4, minibatches=8, epochs=4, ent_coef=0.0
    ),
    "MountainCarContinuous-v0": dict(num_envs=8, num_steps=256, gamma=0.99, ent_coef=0.0),
    "HalfCheetah-v5": dict(
        num_envs=8,
        num_steps=256,
        gamma=0.99,
        lr=3e-4,
        minibatches=32,
        epochs=10,
        frames=1_000_000,
        anneal_frames=1_000_000,  # CleanRL anneals to 0 by the end; constant lr collapsed here
        backend="gym",
    ),
}

# Fields a resumed run must share with the checkpoint (the state's shapes or the meaning of
# its contents depend on them), and fields that may change between invocations.
RESUME_FIXED = (
    "env", "backend", "num_envs", "normalize_obs", "normalize_reward", "obs_clip",
    "reward_clip", "seed", "num_steps", "epochs", "minibatches", "lr", "anneal_frames",
    "adam_eps", "gamma", "gae_lambda", "clip_eps", "clip_vloss", "norm_adv", "ent_coef",
    "vf_coef", "max_grad_norm", "hidden", "activation", "init_log_std", "shards",
)  # fmt: skip
RESUME_MUTABLE = tuple(f.name for f in dataclasses.fields(Config) if f.name not in RESUME_FIXED)


def config_diff(saved: dict[str, Any], new: Config) -> list[str]:
    """Fields in :data:`RESUME_FIXED` whose value differs, as ``"name: saved -> new"``."""
    out = []
    cur = new.to_dict()
    for name in RESUME_FIXED:
        a, b = saved.get(name, "<absent>"), cur[name]
        if isinstance(a, list | tuple):
            a = list(a)
        if a != b:
            out.append(f"{name}: {a!r} -> {b!r}")
    return out
