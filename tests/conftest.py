"""Test-wide settings: one intra-op thread (2-core CI box), deterministic algorithms on CPU."""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

torch.set_num_threads(1)
