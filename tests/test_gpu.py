"""CUDA checks, run by benchmarks/device_check.sh on a machine with a GPU.

Skipped (conditionally) where CUDA is absent; CI machines have none, device checks do.
"""

import pytest
import torch

from tdppo import Config, train
from tdppo.checkpoint import load_checkpoint

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]

SMALL = dict(num_envs=64, num_steps=32, epochs=2, minibatches=4, quiet=True, eval_episodes=0)


def test_training_state_lives_on_cuda_and_loads_on_cpu(tmp_path):
    s = train(Config(env="Pendulum-v1", frames=4096, device="cuda", run_dir=str(tmp_path), **SMALL))
    for key, leaf in s.exclude("meta").flatten_keys("/").items():
        assert leaf.device.type == "cuda", key
    cpu = load_checkpoint(tmp_path, device="cpu")
    assert all(v.device.type == "cpu" for v in cpu.values(True, True))
    for key, leaf in s.exclude("meta").flatten_keys("/").items():
        assert torch.equal(leaf.cpu(), cpu.flatten_keys("/")[key]), key


def test_cuda_resume_is_exact(tmp_path):
    kw = dict(env="CartPole-v1", device="cuda", compile=True, **SMALL)
    a = train(Config(frames=2 * 2048, run_dir=str(tmp_path / "a"), **kw))
    train(Config(frames=2048, run_dir=str(tmp_path / "b"), **kw))
    b = train(Config(frames=2 * 2048, run_dir=str(tmp_path / "b"), resume=True, **kw))
    for top in ("policy", "value", "optimizer", "transforms", "env", "counters"):
        fa, fb = a[top].flatten_keys("/"), b[top].flatten_keys("/")
        for k in fa.keys():
            torch.testing.assert_close(fa[k], fb[k], rtol=0, atol=0, msg=f"{top}/{k}")


def test_cudagraphs_update_runs(tmp_path):
    s = train(
        Config(env="Pendulum-v1", frames=4096, device="cuda", cudagraphs=True,
               run_dir=str(tmp_path), **SMALL)
    )  # fmt: skip
    assert int(s["counters", "frames"]) >= 4096
