"""Baselines users would pick instead of tdppo, each written in its own project's style.

Every module exposes ``run(env_id, frames, seed, num_envs=8, num_steps=256, epochs=10,
minibatches=8, threads=1, log=None) -> dict`` with keys ``frames``, ``wall_s``, ``sps`` (steady
state, first iteration excluded), ``sps_total``, ``curve`` and ``eval_return``.
"""
