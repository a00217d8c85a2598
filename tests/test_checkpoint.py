"""Checkpoint library: atomic save, strict verified load, fallback, compatibility, inspect.

References are independent of the code under test: the original tensors compared bit for bit
(``view(uint8)``), ``hashlib.sha256`` over the files, ``os.walk`` listings, ``json`` of the
manifest, and a child process killed with SIGKILL mid-save.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import pickle
import random
import re
import shutil
import signal
import time
import warnings
from pathlib import Path

import pytest
import tensordict
import torch
import torchrl
from tensordict import NonTensorData, TensorDict
from tensordict.memmap import MemoryMappedTensor

import tdppo
from tdppo import checkpoint as ck
from tdppo import manifest as mf
from tdppo.checkpoint import (
    FORMAT_VERSION,
    CheckpointCorrupt,
    CheckpointError,
    CheckpointMismatch,
    check_compatible,
    inspect,
    list_checkpoints,
    load_checkpoint,
    read_manifest,
    resolve,
    save_checkpoint,
    verify,
)

CONFIG = {"env": "Pendulum-v1", "num_envs": 4, "lr": 3e-4, "hidden": [64, 64], "seed": 0}
ALL_DTYPES = [
    torch.float16,
    torch.bfloat16,
    torch.float32,
    torch.float64,
    torch.complex64,
    torch.int8,
    torch.int16,
    torch.int32,
    torch.int64,
    torch.uint8,
    torch.bool,
]


def make_state(seed: int = 0, frames: int = 4096) -> TensorDict:
    """A synthetic training state shaped like DESIGN's layout (every dtype a run uses)."""
    g = torch.Generator().manual_seed(seed)
    E = 4

    def mlp(i: int, o: int) -> dict:
        return {
            "0": {"weight": torch.randn(8, i, generator=g), "bias": torch.randn(8, generator=g)},
            "2": {"weight": torch.randn(o, 8, generator=g), "bias": torch.randn(o, generator=g)},
        }

    policy, value = TensorDict(mlp(3, 2)), TensorDict(mlp(3, 1))
    policy["log_std"] = torch.nn.Parameter(torch.randn(1, generator=g))  # requires grad
    f64 = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)
    return TensorDict(
        {
            "policy": policy,
            "value": value,
            "optimizer": {
                "step": torch.tensor(7),
                "lr": torch.tensor(3e-4),
                "m": {"policy": policy.detach().clone() * 0.1},
                "v": {"policy": policy.detach().clone() ** 2},
            },
            "transforms": {
                "obs_norm": {"mean": f64(3), "var": f64(3).abs(), "count": f64(()).abs()},
                "reward_norm": {"acc": f64(E), "count": torch.tensor(1e-4, dtype=torch.float64)},
                "stateless": TensorDict({}),  # a transform with no buffers
            },
            "env": {
                "observation": torch.randn(E, 3, generator=g),
                "state": f64(E, 2),
                "step_count": torch.randint(0, 200, (E, 1), generator=g),
                "done": torch.tensor([[True], [False], [False], [True]]),
                "pending": torch.zeros(0, 3),  # zero elements: no file on disk
            },
            "rng": {
                "key": torch.tensor(seed + 12345),
                "torch_cpu": torch.randint(0, 256, (32,), generator=g, dtype=torch.uint8),
            },
            "counters": {
                "frames": torch.tensor(frames),
                "updates": torch.tensor(frames // 512),
                "episodes": torch.tensor(3),
            },
            "meta": {"saved_unix": torch.tensor(time.time(), dtype=torch.float64)},
        },
        batch_size=[],
    )


def leaves(td: TensorDict) -> dict[str, torch.Tensor]:
    return {
        "/".join(k) if isinstance(k, tuple) else k: v
        for k, v in td.items(include_nested=True, leaves_only=True)
    }


def bits(t: torch.Tensor) -> torch.Tensor:
    """The raw bytes of a tensor (bit-exact comparison, NaN payloads included)."""
    t = t.detach().contiguous()
    return t.view(torch.uint8) if t.dim() else t.reshape(1).view(torch.uint8)


def assert_bit_equal(a: TensorDict, b: TensorDict) -> None:
    la, lb = leaves(a), leaves(b)
    assert sorted(la) == sorted(lb)
    for k in la:
        assert la[k].dtype == lb[k].dtype, k
        assert la[k].shape == lb[k].shape, k
        assert torch.equal(bits(la[k].cpu()), bits(lb[k].cpu())), k


def file_hashes(root: Path) -> dict[str, str]:
    """Independent snapshot: relative path -> sha256 of every file under root."""
    out = {}
    for dirpath, _, names in os.walk(root):
        for n in names:
            p = Path(dirpath) / n
            out[p.relative_to(root).as_posix()] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def rewrite_manifest(ckpt: Path, edit=None) -> None:
    """Recompute every file's size and sha256 with hashlib (as an editor of the dir would)."""
    m = json.loads((ckpt / "manifest.json").read_text())
    files = {}
    for rel, h in file_hashes(ckpt).items():
        if rel != "manifest.json":
            files[rel] = {"size": (ckpt / rel).stat().st_size, "sha256": h}
    m["files"] = files
    if edit is not None:
        edit(m)
    (ckpt / "manifest.json").write_text(json.dumps(m))


@pytest.fixture(autouse=True)
def no_disk_flush(monkeypatch: pytest.MonkeyPatch) -> None:
    """fsync's effect is only observable across a power loss; on this shared disk each call
    costs milliseconds. The calls and their order are checked by
    test_durability_order_of_fsyncs_and_renames, which runs the real os.fsync."""
    monkeypatch.setattr(os, "fsync", lambda fd: None)


@pytest.fixture
def run(tmp_path: Path) -> Path:
    return tmp_path / "run"


# -- round trip ------------------------------------------------------------------------------


def test_round_trip_bit_exact_every_dtype(run: Path) -> None:
    g = torch.Generator().manual_seed(1)
    state = TensorDict(
        {
            "scalars": {str(d).removeprefix("torch."): torch.ones((), dtype=d) for d in ALL_DTYPES},
            "arrays": {
                str(d).removeprefix("torch."): (torch.randn(3, 5, generator=g) * 50).to(d)
                for d in ALL_DTYPES
            },
            "special": {
                "nan_inf": torch.tensor([float("nan"), float("inf"), -float("inf"), -0.0]),
                "f64_tiny": torch.tensor([5e-324, 1.0 + 2**-52], dtype=torch.float64),
                "i64_extremes": torch.tensor([-(2**63), 2**63 - 1]),
                "transposed": torch.arange(12.0).reshape(3, 4).t(),  # non-contiguous
                "empty": torch.zeros(0, 3, dtype=torch.int64),
            },
            "empty_tree": {"nested_empty": TensorDict({})},
            "state": make_state(),
        },
        batch_size=[],
    )
    path = save_checkpoint(run, state, frames=4096, config=CONFIG)
    loaded = load_checkpoint(path)
    assert_bit_equal(state, loaded)
    assert set(loaded.keys(include_nested=True)) == set(state.keys(include_nested=True))
    assert "nested_empty" in loaded["empty_tree"].keys()
    assert not loaded.is_locked
    assert all(t.device == torch.device("cpu") for t in leaves(loaded).values())
    # The run directory designates the same checkpoint.
    assert_bit_equal(state, load_checkpoint(run))


def test_layout_manifest_and_latest(run: Path) -> None:
    state = make_state()
    path = save_checkpoint(run, state, frames=4096, config=CONFIG)
    assert path == run / "checkpoints" / "000000004096"
    assert (run / "checkpoints" / "LATEST").read_text().strip() == "000000004096"
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["000000004096", "LATEST"]
    m = json.loads((path / "manifest.json").read_text())
    assert read_manifest(path) == m
    assert m["format_version"] == FORMAT_VERSION and m["frames"] == 4096
    assert m["config"] == CONFIG
    assert m["versions"]["torch"] == str(torch.__version__)
    assert m["versions"]["torchrl"] == torchrl.__version__
    assert m["versions"]["tensordict"] == tensordict.__version__
    assert m["versions"]["tdppo"] == tdppo.__version__
    assert {"python", "created"} <= set(m["versions"]) | set(m)
    on_disk = file_hashes(path)
    del on_disk["manifest.json"]
    assert {k: v["sha256"] for k, v in m["files"].items()} == on_disk
    assert all(m["files"][k]["size"] == (path / k).stat().st_size for k in on_disk)
    # One raw file per non-empty leaf, no pickle anywhere.
    memmaps = [k for k in on_disk if k.endswith(".memmap")]
    assert len(memmaps) == sum(t.numel() > 0 for t in leaves(state).values())
    assert not [k for k in on_disk if not k.endswith((".memmap", "meta.json"))]
    verify(path)


def test_loaded_tensors_are_not_backed_by_files(run: Path) -> None:
    state = make_state()
    path = save_checkpoint(run, state, frames=4096, config=CONFIG)
    before = file_hashes(path)
    loaded = load_checkpoint(run)
    for k, t in leaves(loaded).items():
        assert not isinstance(t, MemoryMappedTensor), k
        assert getattr(t.untyped_storage(), "filename", None) is None, k
        if t.dtype == torch.bool:
            t.logical_not_()
        else:
            t.add_(1)
    assert file_hashes(path) == before
    verify(path)
    assert_bit_equal(state, load_checkpoint(run))


def test_save_leaves_state_untouched_and_refuses_non_tensors(run: Path) -> None:
    state = make_state()
    ref = state.clone()
    save_checkpoint(run, state, frames=1, config=CONFIG)
    assert_bit_equal(state, ref)
    assert not state.is_memmap()
    bad = make_state()
    bad["meta", "note"] = NonTensorData("hello")
    with pytest.raises(TypeError, match="meta/note"):
        save_checkpoint(run, bad, frames=2, config=CONFIG)
    with pytest.raises(TypeError, match="JSON"):
        save_checkpoint(run, state, frames=2, config={"f": object()})
    with pytest.raises(ValueError):
        save_checkpoint(run, state, frames=-1, config=CONFIG)
    with pytest.raises(ValueError):
        save_checkpoint(run, state, frames=3, config=CONFIG, keep=0)
    assert [p.name for p in list_checkpoints(run)] == ["000000000001"]
    assert not [p for p in (run / "checkpoints").iterdir() if p.name.startswith(".tmp")]


def test_load_never_unpickles(run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = save_checkpoint(run, make_state(), frames=8, config=CONFIG)

    calls = []

    def forbidden(*a, **k):
        calls.append(a)
        raise AssertionError("pickle used on the load path")

    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)
    monkeypatch.setattr(pickle, "Unpickler", forbidden)
    monkeypatch.setattr(torch, "load", forbidden)
    load_checkpoint(path)
    assert calls == []
    # A planted pickled leaf (listed in a recomputed manifest) is refused, still unpickled.
    evil = TensorDict({"x": NonTensorData(object())}, batch_size=[])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        evil.memmap(path / "evil")
    sub = json.loads((path / "meta.json").read_text())
    sub["evil"] = {"type": "TensorDict"}
    (path / "meta.json").write_text(json.dumps(sub))
    rewrite_manifest(path)
    assert any("pickle" in k for k in file_hashes(path))
    with pytest.raises(CheckpointError):
        load_checkpoint(path)
    assert calls == []  # refused by policy (allow_pickle=False), not by our tripwire


# -- keep-K, LATEST, replacing -------------------------------------------------------------


def test_keep_newest_k_and_never_the_latest(run: Path) -> None:
    for f in (100, 200, 300, 400, 500):
        save_checkpoint(run, make_state(frames=f), frames=f, config=CONFIG, keep=2)
    assert [p.name for p in list_checkpoints(run)] == ["000000000400", "000000000500"]
    # Saving an older frame count (a run resumed from a fallback): LATEST names it, and it
    # survives even though keep=1 and a newer-numbered checkpoint exists.
    save_checkpoint(run, make_state(frames=50), frames=50, config=CONFIG, keep=1)
    assert (run / "checkpoints" / "LATEST").read_text().strip() == "000000000050"
    assert [p.name for p in list_checkpoints(run)] == ["000000000050", "000000000500"]
    assert int(load_checkpoint(run)["counters", "frames"]) == 50
    assert not [p for p in (run / "checkpoints").iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "move-aside"])
def test_saving_same_frames_twice_replaces(
    run: Path, exchange: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not exchange:
        monkeypatch.setattr(mf, "_exchange", lambda a, b: False)
    first, second = make_state(seed=1), make_state(seed=2)
    save_checkpoint(run, first, frames=100, config=CONFIG)
    path = save_checkpoint(run, second, frames=100, config={**CONFIG, "seed": 2})
    assert_bit_equal(second, load_checkpoint(run))
    assert read_manifest(path)["config"]["seed"] == 2
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["000000000100", "LATEST"]


def test_durability_order_of_fsyncs_and_renames(run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    save_checkpoint(run, make_state(frames=1), frames=1, config=CONFIG)
    monkeypatch.undo()  # the real os.fsync, not no_disk_flush's
    events: list[tuple] = []
    real_fsync, real_rename, real_replace = os.fsync, os.rename, os.replace
    fd_path = lambda fd: os.readlink(f"/proc/self/fd/{fd}")

    def fsync(fd):
        events.append(("fsync", fd_path(fd)))
        return real_fsync(fd)

    def rename(a, b):
        events.append(("rename", str(a), str(b)))
        return real_rename(a, b)

    def replace(a, b):
        events.append(("replace", str(a), str(b)))
        return real_replace(a, b)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "rename", rename)
    monkeypatch.setattr(os, "replace", replace)
    path = save_checkpoint(run, make_state(frames=2), frames=2, config=CONFIG)
    ckdir = str((run / "checkpoints").resolve())
    (pub,) = [i for i, e in enumerate(events) if e[0] == "rename" and e[2].endswith(path.name)]
    tmp = events[pub][1]
    synced_before = {e[1] for e in events[:pub] if e[0] == "fsync"}
    for dirpath, dirnames, names in os.walk(path):
        for n in [*names, *dirnames]:
            rel = (Path(dirpath) / n).relative_to(path)
            assert str(Path(tmp).resolve() / rel) in synced_before, rel
    assert str(Path(tmp).resolve()) in synced_before
    (commit,) = [i for i, e in enumerate(events) if e[0] == "replace" and e[2].endswith("LATEST")]
    assert pub < commit
    assert ("fsync", ckdir) in events[pub:commit]  # the rename is durable before LATEST moves
    assert ("fsync", str(Path(events[commit][1]).resolve())) in events[pub:commit]
    assert ("fsync", ckdir) in events[commit:]


# -- failure while saving -------------------------------------------------------------------


def _fail_memmap_midway(monkeypatch: pytest.MonkeyPatch) -> None:
    real = MemoryMappedTensor.from_tensor.__func__
    calls = {"n": 0}

    def from_tensor(cls, *a, **k):
        calls["n"] += 1
        if calls["n"] > 5:
            raise OSError(5, "Input/output error (simulated)")
        return real(cls, *a, **k)

    monkeypatch.setattr(MemoryMappedTensor, "from_tensor", classmethod(from_tensor))


def _fail_leaf_write_midway(monkeypatch: pytest.MonkeyPatch) -> None:
    real = ck._write_bytes
    calls = {"n": 0}

    def write_bytes(path, data):
        calls["n"] += 1
        if calls["n"] > 5:
            raise OSError(5, "Input/output error (simulated)")
        return real(path, data)

    monkeypatch.setattr(ck, "_write_bytes", write_bytes)


def _raise(*a, **k):
    raise OSError(5, "Input/output error (simulated)")


FAILURES = {
    "memmap-midway": _fail_memmap_midway,
    "leaf-write-midway": _fail_leaf_write_midway,
    "manifest": lambda mp: mp.setattr(ck, "write_manifest", _raise),
    "fsync": lambda mp: mp.setattr(ck, "fsync_tree", _raise),
    "publish": lambda mp: mp.setattr(ck, "publish", _raise),
}


@pytest.mark.parametrize("where", list(FAILURES))
@pytest.mark.parametrize("frames", [200, 100], ids=["new", "same-frames"])
def test_failed_save_leaves_previous_untouched(
    run: Path, where: str, frames: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = make_state(seed=1, frames=100)
    save_checkpoint(run, first, frames=100, config=CONFIG)
    before = file_hashes(run)
    FAILURES[where](monkeypatch)
    with pytest.raises(OSError, match="simulated"):
        save_checkpoint(run, make_state(seed=2, frames=frames), frames=frames, config=CONFIG)
    monkeypatch.undo()
    assert file_hashes(run) == before  # previous checkpoint and LATEST byte for byte
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["000000000100", "LATEST"]
    assert_bit_equal(first, load_checkpoint(run))


def test_files_are_byte_identical_to_tensordict_memmap(run: Path, tmp_path: Path) -> None:
    """Leaves go to disk by plain writes; the layout must stay exactly what tensordict's own
    ``memmap`` writes (so ``TensorDict.load_memmap`` reads it unchanged)."""
    state = make_state(seed=3)
    state["extra"] = {
        "t": torch.arange(12.0).reshape(3, 4).t(),
        "c": torch.randn(2, 3).to(torch.complex64),
    }
    path = save_checkpoint(run, state, frames=4096, config=CONFIG)
    state.detach().memmap(tmp_path / "reference", robust_key=True)
    ours = {k: v for k, v in file_hashes(path).items() if k != "manifest.json"}
    assert ours == file_hashes(tmp_path / "reference")


def _disk_fills_after(monkeypatch: pytest.MonkeyPatch, root: Path, budget: int) -> dict:
    """os.write into files under ``root`` fails with ENOSPC once ``budget`` bytes went in,
    as a full file system's write does (the bytes that fit are written first)."""
    real, seen = os.write, {"bytes": 0, "failed": 0}

    def write(fd: int, data) -> int:
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            target = ""
        if not target.startswith(str(root.resolve())):
            return real(fd, data)
        room = budget - seen["bytes"]
        if room <= 0:
            seen["failed"] += 1
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        n = real(fd, memoryview(data)[:room])
        seen["bytes"] += n
        return n

    monkeypatch.setattr(os, "write", write)
    return seen


@pytest.mark.parametrize("earlier", [0, 1, 2])
def test_full_disk_raises_one_line_and_keeps_latest(
    run: Path, earlier: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    states = {f: make_state(seed=f, frames=f) for f in range(100, 100 * (earlier + 1), 100)}
    for f, st in states.items():
        save_checkpoint(run, st, frames=f, config=CONFIG)
    before = file_hashes(run)
    nbytes = sum(v.numel() * v.element_size() for v in leaves(make_state()).values())
    seen = _disk_fills_after(monkeypatch, run, budget=nbytes // 2)  # full mid-checkpoint
    with pytest.raises(mf.DiskFullError) as err:
        save_checkpoint(run, make_state(seed=9, frames=900), frames=900, config=CONFIG)
    monkeypatch.undo()
    assert seen["failed"] == 1  # the first refused write ends the save
    e = err.value
    assert isinstance(e, CheckpointError) and isinstance(e, OSError)
    assert e.errno == errno.ENOSPC
    if earlier:
        want = run / "checkpoints" / f"{100 * earlier:012d}"
        tail = f"the latest intact checkpoint is {want}"
        assert e.latest == want
    else:
        tail = "no intact checkpoint exists yet"
        assert e.latest is None
    assert str(e) == (
        f"no space left on device while writing checkpoint "
        f"{run / 'checkpoints' / '000000000900'}; {tail}"
    )
    assert "\n" not in str(e)
    # Nothing of the failed save is left: no temporary, no new name, LATEST byte for byte.
    assert file_hashes(run) == before
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert names == sorted(f"{f:012d}" for f in states) + (["LATEST"] if earlier else [])
    for f, st in states.items():
        assert_bit_equal(st, load_checkpoint(run / "checkpoints" / f"{f:012d}"))
    # Space back: the next save works.
    later = make_state(seed=9, frames=900)
    save_checkpoint(run, later, frames=900, config=CONFIG)
    assert_bit_equal(later, load_checkpoint(run))


@pytest.mark.parametrize("where", ["manifest", "latest"])
def test_full_disk_outside_the_leaves_is_reported_the_same(
    run: Path, where: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = make_state(seed=1, frames=100)
    save_checkpoint(run, first, frames=100, config=CONFIG)

    def full(*a, **k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(ck, "write_manifest" if where == "manifest" else "_write_latest", full)
    with pytest.raises(mf.DiskFullError, match="latest intact checkpoint is .*000000000100$"):
        save_checkpoint(run, make_state(seed=2, frames=200), frames=200, config=CONFIG)
    monkeypatch.undo()
    assert (run / "checkpoints" / "LATEST").read_text() == "000000000100\n"
    assert not [p for p in (run / "checkpoints").iterdir() if p.name.startswith(".tmp")]
    assert_bit_equal(first, load_checkpoint(run))


def test_quota_exceeded_is_a_disk_full_error(run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def quota(*a, **k):
        raise RuntimeError("wrapped by a library") from OSError(errno.EDQUOT, "Disk quota exceeded")

    monkeypatch.setattr(ck, "fsync_tree", quota)
    with pytest.raises(mf.DiskFullError, match="^disk quota exceeded while writing checkpoint"):
        save_checkpoint(run, make_state(), frames=100, config=CONFIG)


def test_crash_between_rename_and_latest(run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = make_state(frames=100)
    save_checkpoint(run, first, frames=100, config=CONFIG)
    monkeypatch.setattr(ck, "_write_latest", _raise)
    with pytest.raises(OSError):
        save_checkpoint(run, make_state(frames=200), frames=200, config=CONFIG)
    monkeypatch.undo()
    assert (run / "checkpoints" / "LATEST").read_text().strip() == "000000000100"
    verify(run / "checkpoints" / "000000000200")  # complete, just not committed
    assert resolve(run) == (run / "checkpoints" / "000000000100", [])
    assert_bit_equal(first, load_checkpoint(run))
    later = make_state(frames=200)
    save_checkpoint(run, later, frames=200, config=CONFIG)
    assert_bit_equal(later, load_checkpoint(run))


def _saver(run: Path, write_fd: int, start: int) -> None:
    """Child process: save checkpoints forever, reporting each commit on a pipe."""
    state = make_state(frames=start)
    state["bulk"] = torch.randn(64, 1024)  # more bytes: kills land inside writes too
    for i in range(start, start + 10_000):
        state["counters", "frames"] = torch.tensor(i)
        save_checkpoint(run, state, frames=i, config=CONFIG, keep=2)
        os.write(write_fd, b".")


def test_kill9_during_saves_never_leaves_latest_incomplete(run: Path) -> None:
    rng = random.Random(0)
    save_checkpoint(run, make_state(frames=0), frames=0, config=CONFIG)
    start, dead = 1, []
    for _ in range(6):
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # child: never return into pytest
            try:
                os.close(r)
                _saver(run, w, start)
            finally:
                os._exit(0)
        os.close(w)
        deadline = time.monotonic() + 60
        got = 0
        target = rng.randint(1, 3)
        while got < target and time.monotonic() < deadline:
            got += len(os.read(r, 64))
        time.sleep(rng.uniform(0.0, 0.15))  # land anywhere inside the next save
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(r)
        assert got >= target, "child saver made no progress"
        dead.append(pid)
        # LATEST names a complete checkpoint; nothing needs skipping.
        latest = (run / "checkpoints" / "LATEST").read_text().strip()
        chosen, skipped = resolve(run)
        assert (chosen.name, skipped) == (latest, [])
        for c in list_checkpoints(run):
            verify(c)
        assert int(load_checkpoint(run)["counters", "frames"]) == int(latest)
        start = int(latest) + 1
    # The next save removes every temporary the killed children left behind.
    save_checkpoint(run, make_state(frames=start), frames=start, config=CONFIG, keep=2)
    left = [p.name for p in (run / "checkpoints").iterdir() if p.name.startswith(".")]
    assert left == []


def test_stale_temporaries_are_never_loaded_and_cleaned(run: Path) -> None:
    save_checkpoint(run, make_state(frames=100), frames=100, config=CONFIG)
    ckdir = run / "checkpoints"
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)  # now a dead pid
    # A complete-looking checkpoint under temporary names: one from a dead writer, one from
    # a live writer (our parent, the pytest runner's parent shell) that is recent, one old.
    donor = ckdir / "000000000100"
    dead_tmp = ckdir / f".tmp-000000000900-{pid}"
    live_tmp = ckdir / f".tmp-000000000901-{os.getppid()}"
    old_tmp = ckdir / f".tmp-000000000902-{os.getppid()}"
    for t in (dead_tmp, live_tmp, old_tmp):
        shutil.copytree(donor, t)
    two_hours_ago = time.time() - 7200
    os.utime(old_tmp, (two_hours_ago, two_hours_ago))
    assert [p.name for p in list_checkpoints(run)] == ["000000000100"]
    assert resolve(run) == (donor, [])
    with pytest.raises(CheckpointError, match="unfinished save"):
        load_checkpoint(dead_tmp)  # even when named explicitly
    save_checkpoint(run, make_state(frames=200), frames=200, config=CONFIG)
    names = {p.name for p in ckdir.iterdir()}
    assert dead_tmp.name not in names and old_tmp.name not in names
    assert live_tmp.name in names  # may still be writing: left alone


# -- refusing damaged checkpoints -----------------------------------------------------------


def _flip(p: Path, offset: int = 3) -> None:
    b = bytearray(p.read_bytes())
    b[offset] ^= 0x01
    p.write_bytes(bytes(b))


def _truncate(p: Path) -> None:
    p.write_bytes(p.read_bytes()[:-4])


def _set_version(path: Path) -> None:
    m = json.loads((path / "manifest.json").read_text())
    m["format_version"] = 999
    (path / "manifest.json").write_text(json.dumps(m))


DAMAGE = {
    "truncated": (lambda c: _truncate(c / "policy/0/weight.memmap"), "policy/0/weight.memmap"),
    "flipped-byte": (lambda c: _flip(c / "env/state.memmap"), "env/state.memmap"),
    "flipped-meta-json": (lambda c: _flip(c / "transforms/meta.json", 5), "transforms/meta.json"),
    "missing-leaf": (lambda c: (c / "counters/frames.memmap").unlink(), "counters/frames.memmap"),
    "extra-file": (lambda c: (c / "policy/extra.memmap").write_bytes(b"\0" * 8), "extra.memmap"),
    "no-manifest": (lambda c: (c / "manifest.json").unlink(), "manifest.json"),
    "manifest-not-json": (
        lambda c: (c / "manifest.json").write_text('{"format": "tdppo.checkpoint", '),
        "manifest.json",
    ),
    "unknown-version": (_set_version, "999"),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_checkpoint_is_refused_naming_the_file(run: Path, damage: str) -> None:
    path = save_checkpoint(run, make_state(), frames=4096, config=CONFIG)
    hurt, names = DAMAGE[damage]
    hurt(path)
    for call in (verify, load_checkpoint, resolve):
        with pytest.raises(CheckpointCorrupt) as err:
            call(path)
        msg = str(err.value)
        assert "\n" not in msg and str(path) in msg and names in msg, msg
    assert "NO" in inspect(path) and names in inspect(path)


@pytest.mark.parametrize("kind", ["missing", "file", "empty-dir", "plain-dir"])
def test_bad_paths_raise_checkpoint_error(tmp_path: Path, kind: str) -> None:
    p = tmp_path / "x"
    if kind == "file":
        p.write_text("hello")
    elif kind == "empty-dir":
        p.mkdir()
    elif kind == "plain-dir":
        (p / "sub").mkdir(parents=True)
        (p / "sub" / "data.bin").write_bytes(b"1234")
    for call in (load_checkpoint, resolve, inspect):
        with pytest.raises(CheckpointError) as err:
            call(p)
        assert str(p) in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(CheckpointError):
        verify(p)


def test_run_without_checkpoints(run: Path) -> None:
    (run / "checkpoints").mkdir(parents=True)
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_checkpoint(run)
    assert list_checkpoints(run) == []
    assert list_checkpoints(run / "nowhere") == []


# -- fallback ----------------------------------------------------------------------------------


def _three(run: Path) -> dict[int, TensorDict]:
    states = {f: make_state(seed=f, frames=f) for f in (100, 200, 300)}
    for f, s in states.items():
        save_checkpoint(run, s, frames=f, config=CONFIG)
    return states


def test_fallback_to_newest_intact_reports_each_skip(run: Path) -> None:
    states = _three(run)
    ckdir = run / "checkpoints"
    _flip(ckdir / "000000000300" / "policy/0/bias.memmap")
    (ckdir / "000000000200" / "manifest.json").unlink()
    chosen, skipped = resolve(run)
    assert chosen == ckdir / "000000000100"
    assert [s for s, _ in skipped] == [ckdir / "000000000300", ckdir / "000000000200"]
    assert "policy/0/bias.memmap" in skipped[0][1] and "manifest.json" in skipped[1][1]
    with pytest.warns(UserWarning) as record:
        loaded = load_checkpoint(run)
    text = " ".join(str(w.message) for w in record)
    assert "000000000300" in text and "policy/0/bias.memmap" in text and "000000000200" in text
    assert_bit_equal(states[100], loaded)
    assert "skipped 000000000300" in inspect(run)
    # A checkpoint directory given explicitly is never replaced by another one.
    with pytest.raises(CheckpointCorrupt):
        load_checkpoint(ckdir / "000000000300")
    # Nothing intact: one error listing every reason.
    _truncate(ckdir / "000000000100" / "env/state.memmap")
    with pytest.raises(CheckpointCorrupt) as err:
        load_checkpoint(run)
    for name in ("000000000300", "000000000200", "000000000100", "env/state.memmap"):
        assert name in str(err.value)
    assert "loadable: NO" in inspect(run)


@pytest.mark.parametrize("latest", ["missing-target", "no-latest", "garbage"])
def test_fallback_when_latest_is_unusable(run: Path, latest: str) -> None:
    states = _three(run)
    ckdir = run / "checkpoints"
    if latest == "missing-target":
        shutil.rmtree(ckdir / "000000000300")
        expect_skip, use = ckdir / "000000000300", 200
    elif latest == "no-latest":
        (ckdir / "LATEST").unlink()
        expect_skip, use = ckdir / "LATEST", 300
    else:
        (ckdir / "LATEST").write_text("../../etc\n")
        expect_skip, use = ckdir / "LATEST", 300
    chosen, skipped = resolve(run)
    assert chosen == ckdir / f"{use:012d}"
    assert [s for s, _ in skipped] == [expect_skip]
    with pytest.warns(UserWarning, match=re.escape(str(expect_skip))):
        assert_bit_equal(states[use], load_checkpoint(run))


def test_checkpoints_dir_is_accepted_as_run(run: Path) -> None:
    states = _three(run)
    assert_bit_equal(states[300], load_checkpoint(run / "checkpoints"))


# -- compatibility -------------------------------------------------------------------------


def test_check_compatible_accepts_identical_layout_and_ignores_meta(run: Path) -> None:
    path = save_checkpoint(run, make_state(seed=1), frames=1, config=CONFIG)
    loaded = load_checkpoint(path)
    live = make_state(seed=2)  # other values, same layout
    live["meta", "other"] = torch.zeros(3)  # meta differs: exempt
    del loaded["meta", "saved_unix"]
    check_compatible(live, loaded, str(path))
    del loaded["meta"]
    check_compatible(live, loaded, str(path))


def test_check_compatible_names_every_problem_and_modifies_nothing() -> None:
    live = make_state()
    loaded = make_state()
    del loaded["transforms", "obs_norm"]  # missing sub-tree and its leaves
    loaded["policy", "0", "weight"] = torch.zeros(8, 4)  # shape
    loaded["counters", "frames"] = torch.tensor(5, dtype=torch.int32)  # dtype
    loaded["env", "state"] = TensorDict({"x": torch.zeros(1)})  # kind
    loaded["rng", "cuda"] = torch.zeros(4, dtype=torch.uint8)  # extra
    live_ref, loaded_ref = live.clone(), loaded.clone()
    with pytest.raises(CheckpointMismatch) as err:
        check_compatible(live, loaded, "runs/x/checkpoints/000000004096")
    e = err.value
    msg = str(e)
    assert "\n" not in msg and "runs/x/checkpoints/000000004096" in msg
    assert sorted(e.missing) == [
        "transforms/obs_norm",
        "transforms/obs_norm/count",
        "transforms/obs_norm/mean",
        "transforms/obs_norm/var",
    ]
    assert sorted(e.extra) == ["env/state/x", "rng/cuda"]
    assert {k for k, _ in e.mismatched} == {"policy/0/weight", "counters/frames", "env/state"}
    for key in [*e.missing, *e.extra, "policy/0/weight", "counters/frames", "[8, 4]", "int32"]:
        assert key in msg, key
    assert_bit_equal(live, live_ref)
    assert_bit_equal(loaded, loaded_ref)


def test_deleted_transforms_subtree_is_named(run: Path) -> None:
    live = make_state()
    path = save_checkpoint(run, live, frames=4096, config=CONFIG)
    shutil.rmtree(path / "transforms")
    rewrite_manifest(path)  # checksums pass: only the compatibility check can catch it
    verify(path)
    loaded = load_checkpoint(run)
    assert "transforms" not in loaded.keys()
    with pytest.raises(CheckpointMismatch) as err:
        check_compatible(live, loaded, str(path))
    assert f"checkpoint {path}: lacks 'transforms', 'transforms/obs_norm'" in str(err.value)
    assert "transforms" in err.value.missing


# -- device ------------------------------------------------------------------------------------

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
def test_device_argument_and_meta_subtree(run: Path, device: str) -> None:
    state = make_state().to(device)
    path = save_checkpoint(run, state, frames=64, config=CONFIG)
    for dev in {"cpu", device}:
        loaded = load_checkpoint(path, device=dev)
        assert all(t.device.type == dev for t in leaves(loaded).values())
        assert "saved_unix" in loaded["meta"].keys()
        assert_bit_equal(state, loaded)


def test_checkpoint_saved_on_cuda_loads_on_cpu(run: Path) -> None:
    state = make_state()
    path = save_checkpoint(run, state, frames=64, config=CONFIG)
    # Rewrite the saved device as tensordict records it for a CUDA state.
    for meta in path.rglob("meta.json"):
        text = meta.read_text().replace('"device": "cpu"', '"device": "cuda:0"')
        text = text.replace('"device":"cpu"', '"device":"cuda:0"')
        meta.write_text(text)
    assert "cuda:0" in (path / "policy" / "meta.json").read_text()
    rewrite_manifest(path)
    for dev in (None, "cpu"):
        loaded = load_checkpoint(path, device=dev)
        assert all(t.device.type == "cpu" for t in leaves(loaded).values())
        assert_bit_equal(state, loaded)


# -- inspect -----------------------------------------------------------------------------------


def test_inspect_reports_tree_frames_versions_config(run: Path) -> None:
    state = make_state()
    path = save_checkpoint(run, state, frames=4096, config=CONFIG)
    for target in (path, run):
        report = inspect(target)
        assert "verifies: yes" in report and "frames: 4096" in report
        assert str(torch.__version__) in report and tensordict.__version__ in report
        assert "env='Pendulum-v1'" in report and "num_envs=4" in report
        rows = set(re.findall(r"^\s*(\S+)\s+(\w+)\s+(\[.*\])$", report, re.M))
        for key, t in leaves(state).items():
            dtype = str(t.dtype).removeprefix("torch.")
            assert (key.split("/")[-1], dtype, str(list(t.shape))) in rows, key
        assert re.search(r"^\s+obs_norm/$", report, re.M)
        assert re.search(r"^\s+mean\s+float64\s+\[3\]$", report, re.M)
        assert re.search(r"^\s+frames\s+int64\s+\[\]$", report, re.M)
        assert re.search(r"^\s+pending\s+float32\s+\[0, 3\]$", report, re.M)
        assert re.search(r"^\s+stateless/\s+\(empty\)$", report, re.M)
    assert "LATEST: 000000004096" in inspect(run)
