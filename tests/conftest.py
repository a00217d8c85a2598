"""Test-wide settings: one intra-op thread (2-core CI box), deterministic algorithms on CPU."""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

torch.set_num_threads(1)

# Imported here so that a test calling tdppo.cli.main() in this process finds dynamo imported
# and leaves the suite's imports alone (tdppo.lazy_dynamo; its tests run the CLI in subprocesses).
import torch._dynamo  # noqa: E402, F401
