"""Faults a long run meets (issue 16): a full disk mid-checkpoint, a second writer on the same
run directory, SIGTERM / SIGINT preemption and a second signal during the save.

The end-to-end tests drive ``python -m tdppo train`` in subprocesses with a tiny CartPole
config; the reference for every "resume equals the uninterrupted run" check is an
uninterrupted run of the same command, compared leaf by leaf over ``EXACT_KEYS``.
"""

from __future__ import annotations

import csv
import errno
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

import tdppo
from tdppo import checkpoint as ckpt
from tdppo.runlock import LOCK_NAME, RunDirInUse, RunLock
from tdppo.signals import Preempted, StopOnSignal, stop_requested
from tdppo.state import EXACT_KEYS

SRC = str(Path(tdppo.__file__).resolve().parents[1])  # children import this same tdppo
ENV = {
    **os.environ,
    "OMP_NUM_THREADS": "1",
    "PYTHONUNBUFFERED": "1",
    "PYTHONPATH": os.pathsep.join([SRC, *filter(None, [os.environ.get("PYTHONPATH")])]),
}
ENV.pop("TDPPO_TRACEBACK", None)
TINY = [
    "--env", "CartPole-v1", "--num-envs", "4", "--num-steps", "32", "--epochs", "2",
    "--minibatches", "4", "--no-compile", "--quiet", "--eval-episodes", "0", "--threads", "1",
]  # fmt: skip
PER_UPDATE = 4 * 32
TOTAL = 32 * PER_UPDATE  # long enough that a signal sent after row k lands before the end
WAIT = 240.0  # seconds any one child may take on a loaded 2-core machine


def _default_signals() -> None:
    """In the child before exec: SIGTERM/SIGINT at their defaults even if the test runner was
    started with them ignored (a background job of a script)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def start(*args, code: str | None = None) -> subprocess.Popen:
    """``tdppo train TINY args`` in a child (``code``: run this Python first, then the CLI)."""
    argv = [*TINY, *map(str, args)]
    if code is None:
        cmd = [sys.executable, "-m", "tdppo", "train", *argv]
    else:
        runner = code + "\nfrom tdppo.cli import main\nraise SystemExit(main(sys.argv[1:]))\n"
        cmd = [sys.executable, "-c", runner, "train", *argv]
    return subprocess.Popen(
        cmd,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_default_signals,
    )


def finish(p: subprocess.Popen) -> tuple[int, str]:
    try:
        _, err = p.communicate(timeout=WAIT)
    except subprocess.TimeoutExpired:
        p.kill()
        _, err = p.communicate()
        raise AssertionError(f"child did not finish in {WAIT} s; stderr:\n{err[-3000:]}") from None
    return p.returncode, err


def train(*args) -> str:
    rc, err = finish(start(*args))
    assert rc == 0, f"tdppo train {args} exited {rc}:\n{err[-3000:]}"
    return err


def wait_for(what, p: subprocess.Popen | None = None, timeout: float = WAIT):
    """Poll ``what()`` until truthy; fail if ``p`` exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = what()
        if got:
            return got
        if p is not None and p.poll() is not None:
            _, err = p.communicate()
            raise AssertionError(f"child exited {p.returncode} first; stderr:\n{err[-3000:]}")
        time.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def metric_rows(run: Path) -> list[dict[str, str]]:
    try:
        with open(run / "metrics.csv", newline="") as f:
            return [
                r
                for r in csv.DictReader(f)
                if r.get("frames", "").strip().isdigit() and not r.get("note")
            ]
    except FileNotFoundError:
        return []


def latest(run: Path) -> str | None:
    try:
        return (run / "checkpoints" / "LATEST").read_text().strip() or None
    except FileNotFoundError:
        return None


def temporaries(run: Path) -> list[str]:
    d = run / "checkpoints"
    return sorted(p.name for p in d.iterdir() if p.name.startswith(".tmp")) if d.is_dir() else []


def assert_same_state(a, b) -> None:
    for top in EXACT_KEYS:
        la, lb = a[top].flatten_keys("/"), b[top].flatten_keys("/")
        assert set(la.keys()) == set(lb.keys()), top
        for k in la.keys():
            assert la[k].dtype == lb[k].dtype and la[k].shape == lb[k].shape, f"{top}/{k}"
            assert torch.equal(la[k], lb[k]), f"{top}/{k} differs from the uninterrupted run"


def lock_holder(run: Path) -> int | None:
    try:
        words = (run / LOCK_NAME).read_text().split()
    except FileNotFoundError:
        return None
    return int(words[0]) if words and words[0].isdigit() else None


def one_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got:\n{err[-3000:]}"
    return lines[0]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict:
    """The uninterrupted run: final checkpoint state and metrics rows."""
    run = tmp_path_factory.mktemp("reference") / "run"
    train("--frames", TOTAL, "--run-dir", run, "--checkpoint-every", 2 * PER_UPDATE)
    return {"state": ckpt.load_checkpoint(run), "rows": metric_rows(run)}


# -- the run lock, in process ----------------------------------------------------------------


def test_run_lock_refuses_a_second_holder_naming_pid_and_host(tmp_path: Path) -> None:
    run = tmp_path / "run"
    with RunLock(run) as held:
        assert (run / LOCK_NAME).read_text() == f"{os.getpid()} {socket.gethostname()}\n"
        with pytest.raises(RunDirInUse) as e:
            RunLock(run).acquire()  # another open file description: refused even in-process
        assert isinstance(e.value, ValueError)
        assert str(e.value) == (
            f"run directory {run} is in use by pid {os.getpid()} on host "
            f"{socket.gethostname()} (another tdppo train); wait for it or pick another "
            "--run-dir"
        )
        assert (e.value.pid, e.value.host) == (held.pid, held.host)
        # readers never lock: inspect and load work while the run is held
        assert ckpt.list_checkpoints(run) == []
    assert (run / LOCK_NAME).read_text() == ""  # released cleanly: empty
    with RunLock(run):  # and free again
        pass


def _hold_in_child(run: Path) -> tuple[int, int]:
    """Fork a child that takes the lock and then sleeps; returns (pid, read end of its pipe)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            RunLock(run).acquire()
            os.write(w, b"locked")
            time.sleep(600)
        finally:
            os._exit(0)
    os.close(w)
    assert os.read(r, 16) == b"locked"
    return pid, r


def test_a_killed_holder_never_blocks_the_run(tmp_path: Path) -> None:
    run = tmp_path / "run"
    pid, r = _hold_in_child(run)
    try:
        with pytest.raises(RunDirInUse, match=f"in use by pid {pid} on host "):
            RunLock(run).acquire()
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(r)
    assert lock_holder(run) == pid  # the stale file still names it; it means nothing unlocked
    with RunLock(run):
        assert lock_holder(run) == os.getpid()


def test_children_forked_while_locked_do_not_keep_the_lock(tmp_path: Path) -> None:
    run = tmp_path / "run"
    lock = RunLock(run).acquire()
    r, w = os.pipe()
    child = os.fork()
    if child == 0:  # e.g. an env worker: it must not inherit the run
        os.write(w, b"up")  # the fork handlers have run by now
        time.sleep(600)
        os._exit(0)
    os.close(w)
    try:
        assert os.read(r, 2) == b"up"
        lock.release()
        with RunLock(run):  # the live child does not hold it
            pass
    finally:
        os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)
        os.close(r)


def test_file_system_without_flock_warns_and_goes_on(tmp_path: Path, monkeypatch, capfd) -> None:
    import fcntl

    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(fcntl, "flock", no_locks)
    with RunLock(tmp_path / "run"):
        pass
    err = capfd.readouterr().err
    assert err.startswith(f"tdppo: warning: cannot lock {tmp_path / 'run' / LOCK_NAME} (")
    assert "would not be refused" in err and len(err.splitlines()) == 1


def test_lock_file_is_invisible_to_checkpoint_listing_and_loading(tmp_path: Path) -> None:
    from tensordict import TensorDict

    run = tmp_path / "run"
    state = TensorDict({"counters": {"frames": torch.tensor(64)}}, batch_size=[])
    with RunLock(run):
        ckpt.save_checkpoint(run, state, frames=64, config={"seed": 0})
        assert [p.name for p in ckpt.list_checkpoints(run)] == ["000000000064"]
        assert ckpt.resolve(run) == (run / "checkpoints" / "000000000064", [])
        assert int(ckpt.load_checkpoint(run)["counters", "frames"]) == 64
        report = ckpt.inspect(run)
        assert "verifies: yes" in report and LOCK_NAME not in report
        from tdppo.cli import main

        assert main(["inspect", str(run)]) == 0  # inspect takes no lock (else: refused here)


# -- signals, in process ---------------------------------------------------------------------


@pytest.fixture
def python_sigint():
    """Python's own SIGINT handler on entry (whatever the runner inherited), restored after."""
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, before)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_first_signal_sets_a_flag_second_aborts(sig, python_sigint) -> None:
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    with StopOnSignal() as stop:
        assert stop.requested is None and stop_requested() is None
        os.kill(os.getpid(), sig)  # handled on return from os.kill, in this thread
        assert stop.requested == sig and stop_requested() == sig
        with pytest.raises(KeyboardInterrupt if sig == signal.SIGINT else SystemExit) as e:
            os.kill(os.getpid(), sig)
        if sig == signal.SIGTERM:
            assert e.value.code == 143
    assert {s: signal.getsignal(s) for s in before} == before  # handlers restored
    assert stop_requested() is None


def test_stop_on_signal_off_the_main_thread_installs_nothing() -> None:
    seen = {}

    def body():
        with StopOnSignal() as stop:
            seen["handler"] = signal.getsignal(signal.SIGTERM)
            seen["requested"] = stop.requested

    t = threading.Thread(target=body)
    t.start()
    t.join()
    assert seen == {"handler": signal.getsignal(signal.SIGTERM), "requested": None}


@pytest.mark.parametrize("sig,status", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_preempted_message_and_exit_status(sig, status, tmp_path: Path) -> None:
    run = tmp_path / "my run"
    e = Preempted(sig, frames=4096, checkpoint=run / "checkpoints" / "000000004096", run_dir=run)
    assert e.exit_status == status
    assert str(e) == (
        f"tdppo: stopped by {sig.name} at 4096 frames; checkpoint {run}/checkpoints/"
        f"000000004096; continue with: tdppo train --resume --run-dir '{run}'"
    )


# -- end to end: preemption ------------------------------------------------------------------

STOPPED = re.compile(
    r"^tdppo: stopped by (SIG\w+) at (\d+) frames; checkpoint (.+); "
    r"continue with: tdppo train --resume --run-dir (.+)$"
)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_stops_saved_and_resume_is_bit_exact(sig, reference, tmp_path: Path) -> None:
    run = tmp_path / "run"
    rows_before_signal = random.Random(f"issue16-{sig.name}").randint(2, 8)  # seeded moment
    p = start("--frames", TOTAL, "--run-dir", run, "--checkpoint-every", 0, "--log-every", 1)
    wait_for(lambda: len(metric_rows(run)) >= rows_before_signal, p)
    p.send_signal(sig)
    rc, err = finish(p)
    assert rc == 128 + sig, f"exit {rc}, expected {128 + sig}; stderr:\n{err[-3000:]}"
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert any(ln.startswith(f"tdppo: {sig.name} received: finishing") for ln in lines), err
    m = STOPPED.match(lines[-1])
    assert m, f"last stderr line is not the stop message:\n{err[-3000:]}"
    frames = int(m[2])
    assert (m[1], m[4]) == (sig.name, str(run))
    assert rows_before_signal * PER_UPDATE <= frames < TOTAL and frames % PER_UPDATE == 0
    assert m[3] == str(run / "checkpoints" / f"{frames:012d}")
    assert latest(run) == f"{frames:012d}" and temporaries(run) == []
    assert int(ckpt.load_checkpoint(run)["counters", "frames"]) == frames
    # continue as told: ends bit for bit where the uninterrupted run ends
    train("--frames", TOTAL, "--run-dir", run, "--resume")
    assert_same_state(reference["state"], ckpt.load_checkpoint(run))
    assert [r["frames"] for r in metric_rows(run)] == [r["frames"] for r in reference["rows"]]


SECOND_SIGNAL_IN_SAVE = """
import os, signal, sys
from tdppo import checkpoint, signals
real_fsync_tree = checkpoint.fsync_tree
def fsync_tree(root):
    # a save that starts after the first signal: the second one lands inside it, after its
    # files are written and before it is published
    if signals.stop_requested() is not None:
        print("tdppo-test: second SIGTERM inside the save of", root, file=sys.stderr)
        os.kill(os.getpid(), signal.SIGTERM)
    return real_fsync_tree(root)
checkpoint.fsync_tree = fsync_tree
"""


@pytest.mark.slow
def test_second_signal_during_the_save_aborts_and_keeps_the_previous(
    reference, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    rows_before_signal = random.Random("issue16-double").randint(3, 8)
    p = start(
        "--frames", TOTAL, "--run-dir", run, "--checkpoint-every", 2 * PER_UPDATE,
        code=SECOND_SIGNAL_IN_SAVE,
    )  # fmt: skip
    wait_for(lambda: len(metric_rows(run)) >= rows_before_signal and latest(run), p)
    p.send_signal(signal.SIGTERM)
    rc, err = finish(p)
    assert rc == 143, f"exit {rc}; stderr:\n{err[-3000:]}"
    assert "tdppo-test: second SIGTERM inside the save" in err, err  # it did land in a save
    assert "second signal (SIGTERM): aborting at once" in err, err
    assert not STOPPED.search(err.splitlines()[-1])  # aborted, not stopped cleanly
    # LATEST names an intact checkpoint from before the signal; nothing half-written remains
    named = latest(run)
    rows = metric_rows(run)
    assert named is not None and int(named) < int(rows[-1]["frames"])
    ckpt.verify(run / "checkpoints" / named)
    assert ckpt.resolve(run) == (run / "checkpoints" / named, [])
    assert [c.name for c in ckpt.list_checkpoints(run)][-1] == named
    assert temporaries(run) == []
    train("--frames", TOTAL, "--run-dir", run, "--resume")
    assert_same_state(reference["state"], ckpt.load_checkpoint(run))


# -- end to end: one writer per run directory ------------------------------------------------


@pytest.mark.slow
def test_two_trainers_on_one_run_exactly_one_runs(tmp_path: Path) -> None:
    run = tmp_path / "run"
    train("--frames", 2 * PER_UPDATE, "--run-dir", run)
    both = [start("--frames", 8 * PER_UPDATE, "--run-dir", run, "--resume") for _ in range(2)]
    by_pid = {p.pid: p for p in both}
    try:
        # whichever takes the lock first is frozen (SIGSTOP keeps its lock) until the other
        # has been refused: the race is real, the outcome cannot depend on timing
        winner = by_pid[wait_for(lambda: lock_holder(run) in by_pid and lock_holder(run))]
        winner.send_signal(signal.SIGSTOP)
        (loser,) = [p for p in both if p is not winner]
        rc, err = finish(loser)
        winner.send_signal(signal.SIGCONT)
        assert rc == 2, f"second trainer exited {rc}:\n{err[-3000:]}"
        assert one_line(err) == (
            f"tdppo train: error: run directory {run} is in use by pid {winner.pid} on host "
            f"{socket.gethostname()} (another tdppo train); wait for it or pick another "
            "--run-dir"
        )
        rc, err = finish(winner)
        assert rc == 0, err[-3000:]
    finally:
        for p in both:
            if p.poll() is None:
                p.send_signal(signal.SIGCONT)
                p.kill()
                p.wait()
    frames = [int(r["frames"]) for r in metric_rows(run)]
    assert frames == list(range(PER_UPDATE, 8 * PER_UPDATE + 1, PER_UPDATE))  # one writer's rows
    assert int(ckpt.load_checkpoint(run)["counters", "frames"]) == 8 * PER_UPDATE


@pytest.mark.slow
def test_sigkilled_run_does_not_block_its_own_resume(tmp_path: Path) -> None:
    run = tmp_path / "run"
    p = start("--frames", TOTAL, "--run-dir", run, "--checkpoint-every", 2 * PER_UPDATE)
    wait_for(lambda: latest(run) and lock_holder(run) == p.pid, p)
    p.kill()
    p.wait()
    assert lock_holder(run) == p.pid  # the dead holder's file remains, unlocked
    at = int(latest(run))
    train("--frames", at + 2 * PER_UPDATE, "--run-dir", run, "--resume")
    assert latest(run) == f"{at + 2 * PER_UPDATE:012d}"
    assert lock_holder(run) is None  # released cleanly this time


# -- end to end: full disk -------------------------------------------------------------------

FILL_AFTER = """
import errno, os, sys
budget = {budget}
root = {root!r}
real_write = os.write
def write(fd, data):
    # an injected full disk: writes into files under root fail with ENOSPC once budget bytes
    # went in (the bytes that fit are written first), as a full file system's writes do
    try:
        target = os.readlink(f"/proc/self/fd/{{fd}}")
    except OSError:
        target = ""
    global budget
    if not target.startswith(root):
        return real_write(fd, data)
    if budget <= 0:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    n = real_write(fd, memoryview(data)[:budget])
    budget -= n
    return n
os.write = write
"""


def _mount_tmpfs(where: Path) -> bool:
    """A real small file system, if this process may mount one (root, not in a locked-down
    container) and the test is not told to use the injected full disk instead."""
    if os.environ.get("TDPPO_TEST_INJECT_ENOSPC") or os.geteuid() != 0:
        return False
    where.mkdir()
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=8m,mode=0755", "tmpfs", str(where)],
        capture_output=True,
    )
    return r.returncode == 0


def _usage(path: Path) -> int:
    return sum(p.lstat().st_blocks * 512 for p in [path, *path.rglob("*")])


@pytest.mark.slow
def test_full_disk_mid_checkpoint_is_one_line_and_keeps_latest(tmp_path: Path) -> None:
    fs = tmp_path / "fs"
    real = _mount_tmpfs(fs)
    try:
        run = fs / "run"
        train("--frames", 2 * PER_UPDATE, "--run-dir", run, "--checkpoint-every", 2 * PER_UPDATE)
        first = run / "checkpoints" / f"{2 * PER_UPDATE:012d}"
        before = ckpt.load_checkpoint(run)
        if real:
            # shrink the file system to what it holds plus half a checkpoint and a few pages
            # for metrics.csv: the next checkpoint fills it midway
            st = os.statvfs(fs)
            used = (st.f_blocks - st.f_bfree) * st.f_frsize
            size = used + _usage(first) // 2 + 4 * 4096
            subprocess.run(["mount", "-o", f"remount,size={size // 1024}k", str(fs)], check=True)
            code = None
        else:
            payload = sum(p.stat().st_size for p in first.rglob("*.memmap"))
            code = FILL_AFTER.format(budget=payload // 2, root=str((run / "checkpoints").resolve()))
        p = start(
            "--frames", 6 * PER_UPDATE, "--run-dir", run, "--resume",
            "--checkpoint-every", 2 * PER_UPDATE, code=code,
        )  # fmt: skip
        rc, err = finish(p)
        assert rc == 2, f"exit {rc} (135 is SIGBUS); stderr:\n{err[-3000:]}"
        second = run / "checkpoints" / f"{4 * PER_UPDATE:012d}"
        assert one_line(err) == (
            f"tdppo train: error: no space left on device while writing checkpoint {second}; "
            f"the latest intact checkpoint is {first}"
        )
        assert temporaries(run) == []
        assert latest(run) == first.name
        assert ckpt.list_checkpoints(run) == [first]
        ckpt.verify(first)
        assert_same_state(before, ckpt.load_checkpoint(run))
    finally:
        if real:
            subprocess.run(["umount", "-l", str(fs)], check=False)


def _train_state_like(seed: int):
    """Many one-page leaves and a few multi-page ones, like a TrainState with 64-wide nets."""
    from tensordict import TensorDict

    g = torch.Generator().manual_seed(seed)
    big = {f"w{i}": torch.randn(64, 64 * (1 + i % 3), generator=g) for i in range(6)}
    small = {f"s{i}": {"b": torch.randn(64, generator=g), "n": torch.tensor(i)} for i in range(30)}
    return TensorDict({"policy": big, "transforms": small}, batch_size=[])


def test_full_disk_at_any_point_of_a_save_on_a_real_file_system(tmp_path: Path) -> None:
    """In process, on a real tmpfs shrunk to leave room for a fraction of the next checkpoint:
    wherever the disk fills (a meta.json, torch extending a file, a leaf's bytes), the save
    raises DiskFullError, not SIGBUS, and leaves the previous checkpoint as it was."""
    fs = tmp_path / "fs"
    real = _mount_tmpfs(fs)
    causes = set()
    try:
        run = (fs if real else tmp_path) / "run"
        first = _train_state_like(0)
        path = ckpt.save_checkpoint(run, first, frames=100, config={"seed": 0})
        payload = sum(p.stat().st_size for p in path.rglob("*.memmap"))
        for frac in (0.02, 0.1, 0.25, 0.5, 0.75, 0.9):
            with pytest.MonkeyPatch.context() as mp:
                if real:
                    st = os.statvfs(fs)
                    used = (st.f_blocks - st.f_bfree) * st.f_frsize
                    size = used + int(_usage(path) * frac)
                    remount = ["mount", "-o", f"remount,size={size // 1024}k", str(fs)]
                    subprocess.run(remount, check=True)
                else:
                    _fill_after(mp, (run / "checkpoints").resolve(), int(payload * frac))
                with pytest.raises(ckpt.DiskFullError) as e:
                    ckpt.save_checkpoint(run, _train_state_like(1), frames=200, config={})
            causes.add(type(e.value.__cause__).__name__)
            assert str(e.value) == (
                "no space left on device while writing checkpoint "
                f"{run / 'checkpoints' / '000000000200'}; the latest intact checkpoint is {path}"
            )
            assert temporaries(run) == [] and latest(run) == path.name
            assert ckpt.list_checkpoints(run) == [path]
            assert_same_leaves(first, ckpt.load_checkpoint(run))
        if real:
            assert causes == {"OSError", "RuntimeError"}  # both ways a full disk shows up
    finally:
        if real:
            subprocess.run(["umount", "-l", str(fs)], check=False)


def _fill_after(mp: pytest.MonkeyPatch, root: Path, budget: int) -> None:
    real_write, left = os.write, [budget]

    def write(fd: int, data) -> int:
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            target = ""
        if not target.startswith(str(root)):
            return real_write(fd, data)
        if left[0] <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        n = real_write(fd, memoryview(data)[: left[0]])
        left[0] -= n
        return n

    mp.setattr(os, "write", write)


def assert_same_leaves(a, b) -> None:
    la, lb = a.flatten_keys("/"), b.flatten_keys("/")
    assert set(la.keys()) == set(lb.keys())
    for k in la.keys():
        assert torch.equal(la[k], lb[k]), k


def test_disk_full_error_is_an_oserror_with_enospc(tmp_path: Path) -> None:
    e = ckpt.DiskFullError(tmp_path / "checkpoints" / "000000000512", errno.ENOSPC, None)
    assert isinstance(e, OSError) and isinstance(e, ckpt.CheckpointError)
    assert e.errno == errno.ENOSPC
    assert str(e).endswith("; no intact checkpoint exists yet")
