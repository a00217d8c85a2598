"""TorchRL-style PPO, built the way TorchRL's ``sota-implementations/ppo`` scripts build it.

A ``Collector`` over a ``SerialEnv`` of ``GymEnv`` (one process, as the thread budget demands),
``VecNorm(new_api=True)`` (``VecNormV2``) and a +-10 ``ClipTransform`` on observations,
``RewardSum`` for raw episode returns; 64-64 tanh ``MLP`` actor (``TanhNormal`` with a
state-independent scale, or ``OneHotCategorical``) and critic; ``GAE`` recomputed each epoch;
minibatches drawn by a ``ReplayBuffer`` with ``SamplerWithoutReplacement``; ``ClipPPOLoss``.

One row differs from the others, as TorchRL's own scripts do: **rewards are not normalised**.
``VecNormV2`` on ``"reward"`` would standardise each reward (subtract its running mean), which
changes the task (CartPole's constant +1 would become 0); TorchRL ships no scale-by-return
normaliser like gymnasium's ``NormalizeReward`` or SB3's ``VecNormalize(norm_reward=True)``.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable

import numpy as np
import torch
from tensordict import TensorDict
from tensordict.nn import AddStateIndependentNormalScale, TensorDictModule
from torchrl.collectors import Collector
from torchrl.data import LazyTensorStorage, OneHot, ReplayBuffer
from torchrl.data.replay_buffers.samplers import SamplerWithoutReplacement
from torchrl.envs import (
    ClipTransform,
    ExplorationType,
    RewardSum,
    SerialEnv,
    StepCounter,
    TransformedEnv,
    VecNorm,
    set_exploration_type,
)
from torchrl.envs.libs.gym import GymEnv
from torchrl.modules import MLP, OneHotCategorical, ProbabilisticActor, TanhNormal, ValueOperator
from torchrl.objectives import ClipPPOLoss
from torchrl.objectives.value import GAE

from benchmarks.common import HYPER, evaluate_raw, steady_sps

# ====================================================================
# Environment utils
# --------------------------------------------------------------------


def make_env(env_id: str, num_envs: int) -> TransformedEnv:
    """``SerialEnv`` of ``num_envs`` ``GymEnv``; batch-size ``[num_envs]``."""
    env = TransformedEnv(SerialEnv(num_envs, lambda: GymEnv(env_id)))
    env.append_transform(RewardSum())
    env.append_transform(StepCounter())
    env.append_transform(
        VecNorm(
            in_keys=["observation"], new_api=True, decay=0.99999, eps=1e-2, reduce_batch_dims=True
        )
    )
    env.append_transform(ClipTransform(in_keys=["observation"], low=-10, high=10))
    return env


# ====================================================================
# Model utils
# --------------------------------------------------------------------


def make_models(env: TransformedEnv) -> tuple[ProbabilisticActor, ValueOperator]:
    obs_dim = env.observation_spec["observation"].shape[-1]
    action_spec = env.full_action_spec_unbatched
    act = env.action_spec_unbatched
    continuous = not isinstance(act, OneHot)

    policy_mlp = MLP(
        in_features=obs_dim,
        activation_class=torch.nn.Tanh,
        out_features=act.shape[-1],
        num_cells=[64, 64],
    )
    for layer in policy_mlp.modules():
        if isinstance(layer, torch.nn.Linear):
            torch.nn.init.orthogonal_(layer.weight, 1.0)
            layer.bias.data.zero_()

    if continuous:
        policy_mlp = torch.nn.Sequential(
            policy_mlp, AddStateIndependentNormalScale(act.shape[-1], scale_lb=1e-8)
        )
        module = TensorDictModule(policy_mlp, in_keys=["observation"], out_keys=["loc", "scale"])
        dist_keys, dist_class = ["loc", "scale"], TanhNormal
        dist_kwargs = {"low": act.space.low, "high": act.space.high, "tanh_loc": False}
    else:
        module = TensorDictModule(policy_mlp, in_keys=["observation"], out_keys=["logits"])
        dist_keys, dist_class, dist_kwargs = ["logits"], OneHotCategorical, {}

    actor = ProbabilisticActor(
        module,
        in_keys=dist_keys,
        spec=action_spec,
        distribution_class=dist_class,
        distribution_kwargs=dist_kwargs,
        return_log_prob=True,
        default_interaction_type=ExplorationType.RANDOM,
    )

    value_mlp = MLP(
        in_features=obs_dim, activation_class=torch.nn.Tanh, out_features=1, num_cells=[64, 64]
    )
    for layer in value_mlp.modules():
        if isinstance(layer, torch.nn.Linear):
            torch.nn.init.orthogonal_(layer.weight, 0.01)
            layer.bias.data.zero_()
    critic = ValueOperator(value_mlp, in_keys=["observation"])
    return actor, critic


# ====================================================================
# Training
# --------------------------------------------------------------------


def make_loss(actor: ProbabilisticActor, critic: ValueOperator):
    """``(GAE, ClipPPOLoss, Adam)`` with the shared hyperparameters."""
    adv_module = GAE(
        gamma=HYPER["gamma"],
        lmbda=HYPER["gae_lambda"],
        value_network=critic,
        average_gae=False,
    )
    loss_module = ClipPPOLoss(
        actor_network=actor,
        critic_network=critic,
        clip_epsilon=HYPER["clip_coef"],
        loss_critic_type="l2",
        entropy_bonus=False,
        critic_coeff=HYPER["vf_coef"],
        normalize_advantage=True,
    )
    optim = torch.optim.Adam(loss_module.parameters(), lr=HYPER["lr"], eps=HYPER["adam_eps"])
    return adv_module, loss_module, optim


def update(data, adv_module, loss_module, optim, data_buffer, epochs: int) -> None:
    """``epochs`` passes over one collected batch ``[num_envs, num_steps]``, GAE each epoch."""
    for _ in range(epochs):
        with torch.no_grad():
            data = adv_module(data)
        data_buffer.extend(data.reshape(-1))
        for batch in data_buffer:
            loss = loss_module(batch)
            loss_sum = loss["loss_objective"] + loss["loss_critic"]
            optim.zero_grad()
            loss_sum.backward()
            torch.nn.utils.clip_grad_norm_(loss_module.parameters(), HYPER["max_grad_norm"])
            optim.step()


def run(
    env_id: str,
    frames: int,
    seed: int,
    num_envs: int = 8,
    num_steps: int = 256,
    epochs: int = 10,
    minibatches: int = 8,
    threads: int = 1,
    log: Callable[[str], None] | None = None,
    eval_episodes: int = 10,
) -> dict:
    """Train for ``frames`` env steps; return frames, wall_s, sps, curve, eval_return."""
    with warnings.catch_warnings():
        # VecNormV2 warns that batched (SerialEnv) support is experimental; we rely on it.
        warnings.filterwarnings("ignore", message="Support of VecNormV2")
        return _run(
            env_id,
            frames,
            seed,
            num_envs,
            num_steps,
            epochs,
            minibatches,
            threads,
            log,
            eval_episodes,
        )


def _run(
    env_id, frames, seed, num_envs, num_steps, epochs, minibatches, threads, log, eval_episodes
) -> dict:
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    frames_per_batch = num_envs * num_steps
    total_frames = max(1, frames // frames_per_batch) * frames_per_batch
    mini_batch_size = frames_per_batch // minibatches

    env = make_env(env_id, num_envs)
    env.set_seed(seed)
    actor, critic = make_models(env)

    collector = Collector(
        env,
        policy=actor,
        frames_per_batch=frames_per_batch,
        total_frames=total_frames,
        device="cpu",
        auto_register_policy_transforms=False,
    )
    data_buffer = ReplayBuffer(
        storage=LazyTensorStorage(frames_per_batch),
        sampler=SamplerWithoutReplacement(),
        batch_size=mini_batch_size,
    )
    adv_module, loss_module, optim = make_loss(actor, critic)

    collected = 0
    curve: list[tuple[int, float, float]] = []
    start = time.perf_counter()
    for data in collector:
        collected += data.numel()
        finished = data["next", "episode_reward"][data["next", "done"]]

        update(data, adv_module, loss_module, optim, data_buffer, epochs)
        collector.update_policy_weights_()

        wall = time.perf_counter() - start
        ret = float(finished.mean()) if finished.numel() else float("nan")
        curve.append((collected, wall, ret))
        if log is not None:
            log(f"torchrl {env_id} seed={seed} frames={collected} sps={collected / wall:.0f}")
    wall_s = time.perf_counter() - start
    collector.shutdown()

    # EVALUATE: raw gymnasium env, VecNorm frozen, deterministic actions
    vecnorm = env.transform[2]
    loc, scale = vecnorm.loc["observation"].clone(), vecnorm.scale["observation"].clone()
    continuous = not isinstance(env.action_spec_unbatched, OneHot)

    def act(obs: np.ndarray) -> np.ndarray:
        td = TensorDict(observation=torch.as_tensor(obs, dtype=torch.float32))
        td["observation"] = ((td["observation"] - loc) / scale).clamp(-10, 10)
        with torch.no_grad(), set_exploration_type(ExplorationType.DETERMINISTIC):
            action = actor(td)["action"]
        return action.numpy() if continuous else action.argmax(-1).numpy()

    eval_return = evaluate_raw(env_id, act, episodes=eval_episodes) if eval_episodes else None
    return {
        "frames": collected,
        "wall_s": wall_s,
        "sps": steady_sps(curve),
        "sps_total": collected / wall_s,
        "curve": curve,
        "eval_return": float("nan") if eval_return is None else eval_return,
    }


# ====================================================================
# Ceilings
# --------------------------------------------------------------------


def env_only(env_id: str, frames: int, num_envs: int = 8, threads: int = 1) -> dict:
    """Env-only ceiling: the same ``Collector`` over the same env, random policy."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Support of VecNormV2")
        torch.set_num_threads(threads)
        env = make_env(env_id, num_envs)
        env.set_seed(0)
        batch = num_envs * max(2, frames // num_envs)
        collector = Collector(
            env, policy=None, frames_per_batch=batch, total_frames=2 * batch, device="cpu"
        )
        it = iter(collector)
        next(it)  # warm-up batch
        t0 = time.perf_counter()
        next(it)
        wall = time.perf_counter() - t0
        collector.shutdown()
    return {"sps": batch / wall, "frames": batch, "wall_s": wall}


def update_only(
    env_id: str,
    num_envs: int = 8,
    num_steps: int = 256,
    epochs: int = 10,
    minibatches: int = 8,
    threads: int = 1,
    iters: int = 2,
) -> dict:
    """Update-only ceiling: :func:`update` on one collected batch, timed alone."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Support of VecNormV2")
        torch.set_num_threads(threads)
        torch.manual_seed(0)
        env = make_env(env_id, num_envs)
        env.set_seed(0)
        actor, critic = make_models(env)
        n = num_envs * num_steps
        collector = Collector(
            env,
            policy=actor,
            frames_per_batch=n,
            total_frames=n,
            device="cpu",
            auto_register_policy_transforms=False,
        )
        data = next(iter(collector))
        collector.shutdown()
        buffer = ReplayBuffer(
            storage=LazyTensorStorage(n),
            sampler=SamplerWithoutReplacement(),
            batch_size=n // minibatches,
        )
        adv_module, loss_module, optim = make_loss(actor, critic)
        update(data, adv_module, loss_module, optim, buffer, epochs)  # warm-up
        t0 = time.perf_counter()
        for _ in range(iters):
            update(data, adv_module, loss_module, optim, buffer, epochs)
        wall = time.perf_counter() - t0
    return {"fps": n * iters / wall, "frames": n * iters, "wall_s": wall}
