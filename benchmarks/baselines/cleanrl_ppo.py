"""CleanRL-style PPO: one readable loop over a gymnasium ``SyncVectorEnv``, continuous and discrete.

Written for the benchmark in CleanRL's manner (``ppo_continuous_action.py`` / ``ppo.py``): plain
tensors of shape ``[num_steps, num_envs, ...]``, GAE by a backwards Python loop, the clipped
surrogate over shuffled minibatches. Normalisation is gymnasium's own *vector* wrappers
(``NormalizeObservation`` / ``NormalizeReward``: one set of statistics for the whole batch, the
semantics tdppo matches), with ``ClipAction`` and a +-10 clip of observation and reward for
continuous actions, as CleanRL does.

gymnasium 1.x vector wrappers need next-step autoreset: the step after an episode ends ignores
the action, returns the first observation of the next episode and a reward of 0. Those steps
carry no learning signal, so they are masked out of the loss (``valid``); they still count as
frames, because the env was stepped.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import gymnasium as gym
import numpy as np
import torch
import torch.nn as nn
from torch.distributions import Categorical, Normal

from benchmarks.common import HYPER, evaluate_raw, steady_sps


def layer_init(layer: nn.Linear, std: float = np.sqrt(2), bias_const: float = 0.0) -> nn.Linear:
    torch.nn.init.orthogonal_(layer.weight, std)
    torch.nn.init.constant_(layer.bias, bias_const)
    return layer


class Agent(nn.Module):
    """64-64 tanh actor and critic; Gaussian with a state-independent log-std or a categorical."""

    def __init__(self, obs_dim: int, act_dim: int, continuous: bool):
        super().__init__()
        self.continuous = continuous
        self.critic = nn.Sequential(
            layer_init(nn.Linear(obs_dim, 64)),
            nn.Tanh(),
            layer_init(nn.Linear(64, 64)),
            nn.Tanh(),
            layer_init(nn.Linear(64, 1), std=1.0),
        )
        self.actor_mean = nn.Sequential(
            layer_init(nn.Linear(obs_dim, 64)),
            nn.Tanh(),
            layer_init(nn.Linear(64, 64)),
            nn.Tanh(),
            layer_init(nn.Linear(64, act_dim), std=0.01),
        )
        if continuous:
            self.actor_logstd = nn.Parameter(torch.zeros(1, act_dim))

    def get_value(self, x: torch.Tensor) -> torch.Tensor:
        return self.critic(x)

    def dist(self, x: torch.Tensor) -> torch.distributions.Distribution:
        out = self.actor_mean(x)
        if self.continuous:
            return Normal(out, self.actor_logstd.expand_as(out).exp())
        return Categorical(logits=out)

    def get_action_and_value(self, x: torch.Tensor, action: torch.Tensor | None = None):
        probs = self.dist(x)
        if action is None:
            action = probs.sample()
        logprob, entropy = probs.log_prob(action), probs.entropy()
        if self.continuous:
            logprob, entropy = logprob.sum(1), entropy.sum(1)
        return action, logprob, entropy, self.critic(x)

    def act_deterministic(self, x: torch.Tensor) -> torch.Tensor:
        out = self.actor_mean(x)
        return out if self.continuous else out.argmax(-1)


def make_envs(env_id: str, num_envs: int, gamma: float) -> gym.vector.VectorEnv:
    """``SyncVectorEnv`` of raw envs + episode statistics (raw returns) + the normalisers."""
    envs = gym.vector.SyncVectorEnv([lambda: gym.make(env_id) for _ in range(num_envs)])
    envs = gym.wrappers.vector.RecordEpisodeStatistics(envs)
    continuous = isinstance(envs.single_action_space, gym.spaces.Box)
    if continuous:
        envs = gym.wrappers.vector.ClipAction(envs)
    envs = gym.wrappers.vector.NormalizeObservation(envs)
    if continuous:
        envs = gym.wrappers.vector.TransformObservation(envs, lambda obs: np.clip(obs, -10, 10))
    envs = gym.wrappers.vector.NormalizeReward(envs, gamma=gamma)
    if continuous:
        envs = gym.wrappers.vector.TransformReward(envs, lambda r: np.clip(r, -10, 10))
    return envs


def find_wrapper(envs: gym.vector.VectorEnv, kind: type) -> gym.vector.VectorEnv:
    while not isinstance(envs, kind):
        envs = envs.env
    return envs


def update(
    agent: Agent,
    optimizer: torch.optim.Optimizer,
    b_obs: torch.Tensor,
    b_actions: torch.Tensor,
    b_logprobs: torch.Tensor,
    b_advantages: torch.Tensor,
    b_returns: torch.Tensor,
    b_valid: torch.Tensor,
    epochs: int,
    minibatch_size: int,
) -> None:
    """``epochs`` passes of shuffled minibatches over a flat batch ``[B, ...]``; in place."""
    h = HYPER
    batch_size = b_obs.shape[0]
    b_inds = np.arange(batch_size)
    for _epoch in range(epochs):
        np.random.shuffle(b_inds)
        for begin in range(0, batch_size, minibatch_size):
            mb_inds = b_inds[begin : begin + minibatch_size]
            mb_valid = b_valid[mb_inds]
            n_valid = mb_valid.sum().clamp_min(1.0)
            _, newlogprob, entropy, newvalue = agent.get_action_and_value(
                b_obs[mb_inds], b_actions[mb_inds]
            )
            logratio = newlogprob - b_logprobs[mb_inds]
            ratio = logratio.exp()

            mb_advantages = b_advantages[mb_inds]
            adv_mean = (mb_advantages * mb_valid).sum() / n_valid
            adv_std = (((mb_advantages - adv_mean) ** 2 * mb_valid).sum() / n_valid).sqrt()
            mb_advantages = (mb_advantages - adv_mean) / (adv_std + 1e-8)

            # Policy loss
            pg_loss1 = -mb_advantages * ratio
            pg_loss2 = -mb_advantages * torch.clamp(ratio, 1 - h["clip_coef"], 1 + h["clip_coef"])
            pg_loss = (torch.max(pg_loss1, pg_loss2) * mb_valid).sum() / n_valid

            # Value loss (no value clipping, as in the shared hyperparameters)
            v_loss = 0.5 * (((newvalue.view(-1) - b_returns[mb_inds]) ** 2) * mb_valid).sum()
            v_loss = v_loss / n_valid

            entropy_loss = (entropy * mb_valid).sum() / n_valid
            loss = pg_loss - h["ent_coef"] * entropy_loss + v_loss * h["vf_coef"]

            optimizer.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(agent.parameters(), h["max_grad_norm"])
            optimizer.step()


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
    torch.set_num_threads(threads)
    h = HYPER
    batch_size = num_envs * num_steps
    minibatch_size = batch_size // minibatches
    num_iterations = max(1, frames // batch_size)

    # SEEDING
    np.random.seed(seed)
    torch.manual_seed(seed)

    # ENV SETUP
    envs = make_envs(env_id, num_envs, h["gamma"])
    continuous = isinstance(envs.single_action_space, gym.spaces.Box)
    obs_dim = int(np.prod(envs.single_observation_space.shape))
    act_dim = (
        int(np.prod(envs.single_action_space.shape)) if continuous else envs.single_action_space.n
    )
    agent = Agent(obs_dim, act_dim, continuous)
    optimizer = torch.optim.Adam(agent.parameters(), lr=h["lr"], eps=h["adam_eps"])

    # STORAGE: [num_steps, num_envs, ...]
    obs = torch.zeros((num_steps, num_envs, obs_dim))
    actions = torch.zeros((num_steps, num_envs) + envs.single_action_space.shape)
    logprobs = torch.zeros((num_steps, num_envs))
    rewards = torch.zeros((num_steps, num_envs))
    dones = torch.zeros((num_steps, num_envs))
    values = torch.zeros((num_steps, num_envs))

    # START THE GAME
    global_step = 0
    start = time.perf_counter()
    curve: list[tuple[int, float, float]] = []
    next_obs_np, _ = envs.reset(seed=seed)
    next_obs = torch.as_tensor(next_obs_np, dtype=torch.float32)
    next_done = torch.zeros(num_envs)

    for _iteration in range(num_iterations):
        finished: list[float] = []

        # COLLECT TRAJECTORIES
        for step in range(num_steps):
            global_step += num_envs
            obs[step], dones[step] = next_obs, next_done
            with torch.no_grad():
                action, logprob, _, value = agent.get_action_and_value(next_obs)
                values[step] = value.flatten()
            actions[step], logprobs[step] = action, logprob

            next_obs_np, reward, terminations, truncations, infos = envs.step(action.numpy())
            done = np.logical_or(terminations, truncations)
            rewards[step] = torch.as_tensor(reward, dtype=torch.float32)
            next_obs = torch.as_tensor(next_obs_np, dtype=torch.float32)
            next_done = torch.as_tensor(done, dtype=torch.float32)
            if "_episode" in infos:
                finished.extend(infos["episode"]["r"][infos["_episode"]].tolist())

        # BOOTSTRAP VALUE AND GAE. dones[t] = 1: the previous step ended an episode, so step t
        # was a next-step autoreset (action ignored, reward 0) and obs[t] is a final observation.
        with torch.no_grad():
            next_value = agent.get_value(next_obs).reshape(1, -1)
            advantages = torch.zeros_like(rewards)
            lastgaelam = 0
            for t in reversed(range(num_steps)):
                if t == num_steps - 1:
                    nextnonterminal = 1.0 - next_done
                    nextvalues = next_value
                else:
                    nextnonterminal = 1.0 - dones[t + 1]
                    nextvalues = values[t + 1]
                delta = rewards[t] + h["gamma"] * nextvalues * nextnonterminal - values[t]
                lastgaelam = delta + h["gamma"] * h["gae_lambda"] * nextnonterminal * lastgaelam
                advantages[t] = lastgaelam
            returns = advantages + values

        # FLATTEN THE BATCH
        b_obs = obs.reshape((-1, obs_dim))
        b_logprobs = logprobs.reshape(-1)
        b_actions = actions.reshape((-1,) + envs.single_action_space.shape)
        b_advantages = advantages.reshape(-1)
        b_returns = returns.reshape(-1)
        b_valid = 1.0 - dones.reshape(-1)  # mask out the autoreset no-op steps

        # OPTIMIZE THE POLICY AND VALUE NETWORK
        update(
            agent,
            optimizer,
            b_obs,
            b_actions,
            b_logprobs,
            b_advantages,
            b_returns,
            b_valid,
            epochs,
            minibatch_size,
        )

        wall = time.perf_counter() - start
        ret = float(np.mean(finished)) if finished else float("nan")
        curve.append((global_step, wall, ret))
        if log is not None:
            log(f"cleanrl {env_id} seed={seed} frames={global_step} sps={global_step / wall:.0f}")

    wall_s = time.perf_counter() - start

    # EVALUATE: raw gymnasium env, observation normaliser frozen, deterministic actions
    obs_rms = find_wrapper(envs, gym.wrappers.vector.NormalizeObservation).obs_rms
    mean = torch.as_tensor(obs_rms.mean, dtype=torch.float32)
    std = torch.as_tensor(np.sqrt(obs_rms.var + 1e-8), dtype=torch.float32)
    envs.close()

    def act(o: np.ndarray) -> np.ndarray:
        x = (torch.as_tensor(o, dtype=torch.float32) - mean) / std
        if continuous:
            x = x.clamp(-10, 10)
        with torch.no_grad():
            return agent.act_deterministic(x.unsqueeze(0))[0].numpy()

    eval_return = evaluate_raw(env_id, act, episodes=eval_episodes) if eval_episodes else None
    return {
        "frames": global_step,
        "wall_s": wall_s,
        "sps": steady_sps(curve),
        "sps_total": global_step / wall_s,
        "curve": curve,
        "eval_return": float("nan") if eval_return is None else eval_return,
    }


# ----------------------------------------------------------------------------- ceilings


def env_only(env_id: str, frames: int, num_envs: int = 8, threads: int = 1) -> dict:
    """Env-only ceiling: the same wrapped ``SyncVectorEnv`` stepped with random actions."""
    torch.set_num_threads(threads)
    envs = make_envs(env_id, num_envs, HYPER["gamma"])
    envs.reset(seed=0)
    envs.action_space.seed(0)
    steps = max(2, frames // num_envs)
    t0 = time.perf_counter()
    for _ in range(steps):
        envs.step(envs.action_space.sample())
    wall = time.perf_counter() - t0
    envs.close()
    return {"sps": steps * num_envs / wall, "frames": steps * num_envs, "wall_s": wall}


def update_only(
    env_id: str,
    num_envs: int = 8,
    num_steps: int = 256,
    epochs: int = 10,
    minibatches: int = 8,
    threads: int = 1,
    iters: int = 2,
) -> dict:
    """Update-only ceiling: :func:`update` on a synthetic batch; ``fps`` = batch frames / s."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    envs = gym.vector.SyncVectorEnv([lambda: gym.make(env_id)])
    continuous = isinstance(envs.single_action_space, gym.spaces.Box)
    obs_dim = int(np.prod(envs.single_observation_space.shape))
    act_dim = (
        int(np.prod(envs.single_action_space.shape)) if continuous else envs.single_action_space.n
    )
    envs.close()
    agent = Agent(obs_dim, act_dim, continuous)
    optimizer = torch.optim.Adam(agent.parameters(), lr=HYPER["lr"], eps=HYPER["adam_eps"])
    n = num_envs * num_steps
    b_obs = torch.randn(n, obs_dim)
    with torch.no_grad():
        b_actions, b_logprobs, _, _ = agent.get_action_and_value(b_obs)
    b_adv, b_ret, b_valid = torch.randn(n), torch.randn(n), torch.ones(n)
    args = (b_obs, b_actions, b_logprobs, b_adv, b_ret, b_valid, epochs, n // minibatches)
    update(agent, optimizer, *args)  # warm-up
    t0 = time.perf_counter()
    for _ in range(iters):
        update(agent, optimizer, *args)
    wall = time.perf_counter() - t0
    return {"fps": n * iters / wall, "frames": n * iters, "wall_s": wall}
