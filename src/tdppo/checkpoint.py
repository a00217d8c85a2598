"""Checkpoints: the training-state TensorDict memory-mapped, saved atomically, loaded strictly.

A run directory holds::

    RUN/checkpoints/000000004096/     one checkpoint: state.memmap() layout + manifest.json
    RUN/checkpoints/000000008192/
    RUN/checkpoints/LATEST            "000000008192\\n": the newest complete checkpoint

**Save** (:func:`save_checkpoint`) writes into a temporary sibling ``.tmp-<frames>-<pid>``,
fsyncs every file and directory, renames it into place (an atomic exchange when the name
already exists), fsyncs the parent, and only then replaces ``LATEST`` atomically. A crash at
any instant therefore leaves ``LATEST`` naming a complete checkpoint; half-written
temporaries never carry a checkpoint's name and are removed by a later save.

**Full disk.** The layout is tensordict's memory-map layout (``TensorDict.load_memmap``
reads it), but the leaf bytes are written with ordinary ``write`` calls, never through a
memory map: a mapped write on a full disk is a SIGBUS that kills the process, an ordinary
write raises ``ENOSPC``. The save then removes its temporary, leaves ``LATEST`` alone and
raises :class:`DiskFullError` naming the latest intact checkpoint.

**Load** (:func:`load_checkpoint`) verifies the manifest (format version, every file's size
and sha256, no unlisted file), reads the tensors with ``TensorDict.load_memmap`` without
pickle, and *clones* them: the memory-mapped tensors are write-through views of the files,
and training must never write into a checkpoint. :func:`check_compatible` then compares the
loaded tree with the live one before anything is restored.

Every function here is impure (file system) and none is on a hot path.

>>> import tempfile, torch
>>> from tensordict import TensorDict
>>> run = tempfile.mkdtemp()
>>> state = TensorDict({"counters": {"frames": torch.tensor(64)}}, batch_size=[])
>>> save_checkpoint(run, state, frames=64, config={"seed": 0}).name
'000000000064'
>>> int(load_checkpoint(run)["counters", "frames"])
64
"""

from __future__ import annotations

import errno
import json
import os
import re
import time
import warnings
from pathlib import Path

import torch
from tensordict import TensorDict, TensorDictBase, is_tensor_collection

from tdppo.manifest import (
    FORMAT_VERSION,
    CheckpointCorrupt,
    CheckpointError,
    CheckpointMismatch,
    DiskFullError,
    build_manifest,
    describe,
    fsync_path,
    fsync_tree,
    make_dirs,
    publish,
    read_manifest,
    remove,
    verify,
    write_manifest,
)

__all__ = [
    "FORMAT_VERSION",
    "CheckpointError",
    "CheckpointCorrupt",
    "CheckpointMismatch",
    "DiskFullError",
    "save_checkpoint",
    "load_checkpoint",
    "resolve",
    "verify",
    "check_compatible",
    "read_manifest",
    "inspect",
    "list_checkpoints",
]

LATEST = "LATEST"
EXEMPT = "meta"  # top-level key check_compatible ignores (config, versions, wall-clock)
STALE_TMP_SECONDS = 3600.0  # a temporary older than this is stale even if its pid is alive
_NAME = re.compile(r"^\d{12}$")
_TMP = re.compile(r"^\.tmp-[^-]+-(?P<pid>\d+)(\..*)?$")


# -- saving ----------------------------------------------------------------------------------


def save_checkpoint(
    run_dir: str | os.PathLike,
    state: TensorDict,
    *,
    frames: int,
    config: dict,
    keep: int = 3,
) -> Path:
    """Save ``state`` as ``run_dir/checkpoints/<frames:012d>/`` and point LATEST at it.

    Args:
        run_dir: the run directory (created if needed).
        state: a TensorDict tree whose leaves are all tensors (any dtype, any device, 0-d and
            empty allowed; empty sub-TensorDicts are kept). Not modified.
        frames: environment frames reached; names the directory (0 <= frames < 10**12).
        config: the run's configuration, stored in the manifest; must be JSON-serializable.
        keep: how many checkpoints to keep (newest by frames); the one LATEST names is never
            deleted. Saving frames that already exist replaces that checkpoint atomically.

    Returns:
        The checkpoint directory.

    Raises:
        TypeError: a leaf is not a plain tensor (non-tensor data would need pickle), a node is
            not a plain ``TensorDict``, or ``config`` is not JSON-serializable.
        ValueError: ``frames`` or ``keep`` out of range.
        DiskFullError: no space (or quota) left; the temporary is removed, earlier
            checkpoints and LATEST are untouched. Also an ``OSError`` (``errno`` ENOSPC).
        OSError: the file system failed otherwise; earlier checkpoints and LATEST are untouched.
    """
    if not 0 <= int(frames) < 10**12:
        raise ValueError(f"frames must be in [0, 10**12), got {frames}")
    if int(keep) < 1:
        raise ValueError(f"keep must be >= 1, got {keep}")
    _check_savable(state)
    _check_json(config)
    name = f"{int(frames):012d}"
    ckpt_dir = Path(run_dir) / "checkpoints"
    final = ckpt_dir / name
    try:
        make_dirs(ckpt_dir)
        _clean_stale(ckpt_dir)
        tmp = ckpt_dir / f".tmp-{name}-{os.getpid()}"
        remove(tmp)
        try:
            # WRITE: one file per leaf, manifest last, every file and directory fsynced.
            _write_tree(state.detach(), tmp)
            write_manifest(tmp, build_manifest(tmp, frames=int(frames), config=config))
            fsync_tree(tmp)
            # PUBLISH: the complete directory takes its name in one step.
            publish(tmp, final)
            fsync_path(ckpt_dir)
        finally:
            remove(tmp)  # the half-written temporary, or the replaced old checkpoint
        # COMMIT: only now may LATEST name it.
        _write_latest(ckpt_dir, name)
    except Exception as e:
        code = _disk_full(e)
        if code is None:
            raise
        raise DiskFullError(final, code, _latest_intact(run_dir)) from e
    _rotate(ckpt_dir, keep)
    return final


def _write_tree(state: TensorDict, root: Path) -> None:
    """Write ``state`` in tensordict's memmap layout, the leaf bytes by ordinary writes.

    ``memmap_like`` writes every ``meta.json`` and creates each ``<key>.memmap`` file at its
    size without touching its pages (a sparse file); the bytes then go in with ``os.write``,
    which raises ENOSPC on a full disk where a write through the mapping would be a SIGBUS.
    The result is byte for byte what ``state.memmap(root)`` writes.
    """
    mapped = state.memmap_like(root, robust_key=True)
    try:
        for key, file_tensor in mapped.items(include_nested=True, leaves_only=True):
            value = state.get(key)
            if value.numel() == 0:
                continue  # tensordict writes no file for an empty tensor
            _write_bytes(Path(file_tensor.filename), _raw_bytes(value))
    finally:
        del mapped  # unmap before anything else touches the files


def _raw_bytes(value: torch.Tensor) -> memoryview:
    """The bytes of a tensor in C order, as the memmap file holds them (any dtype)."""
    flat = value.detach().to("cpu").contiguous().reshape(-1)
    return memoryview(flat.view(torch.uint8).numpy()).cast("B")


def _write_bytes(path: Path, data: memoryview) -> None:
    fd = os.open(path, os.O_WRONLY | getattr(os, "O_CLOEXEC", 0))
    try:
        done = 0
        while done < len(data):
            done += os.write(fd, data[done:])
    finally:
        os.close(fd)


_DISK_FULL = {errno.ENOSPC, errno.EDQUOT}
# torch.from_file (under memmap_like) extends each new file with a one-byte write and reports
# its failure as RuntimeError("unable to write to file <...>: No space left on device (28)").
_TORCH_ERRNO = re.compile(r"unable to (?:write to|resize|stretch) file <.*>: (.*) \((\d+)\)$", re.M)


def _disk_full(e: BaseException | None) -> int | None:
    """ENOSPC/EDQUOT if ``e`` is, or was raised while handling or because of, such an OSError
    (or torch's RuntimeError for one); else None."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in _DISK_FULL:
            return e.errno
        if isinstance(e, RuntimeError):
            m = _TORCH_ERRNO.search(str(e))
            if m and int(m[2]) in _DISK_FULL and m[1] == os.strerror(int(m[2])):
                return int(m[2])
        e = e.__cause__ or e.__context__
    return None


def _latest_intact(run_dir: str | os.PathLike) -> Path | None:
    """The checkpoint a load would use now, or None (never raises)."""
    try:
        return resolve(run_dir)[0]
    except CheckpointError:
        return None
    except OSError:
        return None


def _check_savable(state: TensorDictBase) -> None:
    if type(state) is not TensorDict:
        raise TypeError(f"state must be a TensorDict, got {type(state).__name__}")
    for key, value in state.items(include_nested=True, leaves_only=False):
        where = _key_str(key)
        if is_tensor_collection(value):
            if type(value) is not TensorDict:
                raise TypeError(
                    f"state key '{where}' is a {type(value).__name__}: checkpoints hold plain "
                    "TensorDicts of tensors only (non-tensor data would need pickle; put "
                    "configuration in save_checkpoint(config=...) or encode it as a uint8 "
                    "tensor; convert other collections with .to_tensordict())"
                )
        elif not isinstance(value, torch.Tensor):
            raise TypeError(f"state key '{where}' holds a {type(value).__name__}, not a tensor")
        elif value.layout is not torch.strided or value.is_nested:
            raise TypeError(f"state key '{where}' is a sparse or nested tensor; save it dense")


def _check_json(config: dict) -> None:
    if not isinstance(config, dict):
        raise TypeError(f"config must be a dict, got {type(config).__name__}")
    try:
        json.dumps(config)
    except (TypeError, ValueError) as e:
        raise TypeError(f"config must be JSON-serializable: {e}") from None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _clean_stale(ckpt_dir: Path) -> None:
    """Remove temporaries of saves that cannot still be running.

    Stale: the writing pid is dead, or is this process (saves here are sequential, and a
    reused pid in a restarted container must not protect a crashed run's leftovers), or the
    temporary is older than STALE_TMP_SECONDS.
    """
    now = time.time()
    for p in ckpt_dir.iterdir():
        m = _TMP.match(p.name)
        if not m:
            continue
        pid = int(m["pid"])
        try:
            age = now - p.lstat().st_mtime
        except FileNotFoundError:
            continue
        if pid == os.getpid() or not _pid_alive(pid) or age > STALE_TMP_SECONDS:
            remove(p)


def _write_latest(ckpt_dir: Path, name: str) -> None:
    """Replace ``ckpt_dir/LATEST`` atomically: write a temporary, fsync, os.replace, fsync dir."""
    tmp = ckpt_dir / f".tmp-LATEST-{os.getpid()}"
    try:
        with open(tmp, "w", encoding="ascii") as f:
            f.write(name + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, ckpt_dir / LATEST)
    finally:
        remove(tmp)
    fsync_path(ckpt_dir)


def _read_latest(ckpt_dir: Path) -> tuple[str | None, str]:
    """(checkpoint name LATEST holds, or None with the reason)."""
    try:
        text = (ckpt_dir / LATEST).read_text(encoding="ascii").strip()
    except FileNotFoundError:
        return None, "LATEST is missing"
    except (OSError, UnicodeDecodeError) as e:
        return None, f"LATEST is unreadable ({e})"
    if not _NAME.match(text):
        return None, f"LATEST holds {text[:40]!r}, not a checkpoint name"
    return text, ""


def _rotate(ckpt_dir: Path, keep: int) -> None:
    """Delete all but the newest ``keep`` checkpoints, never the one LATEST names.

    A doomed checkpoint is first renamed to a temporary name, so a crash mid-delete never
    leaves a half-deleted directory under a checkpoint's name.
    """
    latest, _ = _read_latest(ckpt_dir)
    names = sorted(p.name for p in ckpt_dir.iterdir() if _NAME.match(p.name) and p.is_dir())
    for name in names[:-keep]:
        if name == latest:
            continue
        doomed = ckpt_dir / f".tmp-{name}-{os.getpid()}.del"
        try:
            os.rename(ckpt_dir / name, doomed)
        except OSError as e:
            warnings.warn(f"could not remove old checkpoint {ckpt_dir / name}: {e}", stacklevel=3)
            continue
        remove(doomed)
    fsync_path(ckpt_dir)


# -- finding and loading ---------------------------------------------------------------------


def list_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """Checkpoint directories of a run (named by 12 digits), oldest first; [] if none.

    Temporaries (``.tmp-*``) are never listed. Listed directories are not verified.
    """
    ckpt_dir = Path(run_dir) / "checkpoints"
    if not ckpt_dir.is_dir():
        return []
    return sorted(p for p in ckpt_dir.iterdir() if _NAME.match(p.name) and p.is_dir())


def _is_checkpoint_dir(p: Path) -> bool:
    return (p / "manifest.json").exists() or bool(_NAME.match(p.name))


def resolve(path: str | os.PathLike) -> tuple[Path, list[tuple[Path, str]]]:
    """The checkpoint directory ``path`` designates, verified, and what was skipped on the way.

    ``path`` is a checkpoint directory (used as is: no fallback), a run directory, or a run's
    ``checkpoints`` directory. For a run, the checkpoint LATEST names is tried first, then
    the others from the newest down; each one that fails :func:`verify` is skipped.

    Returns:
        ``(checkpoint_dir, [(skipped_dir, reason), ...])``. A missing or unreadable LATEST
        appears in the list as ``(checkpoints/LATEST, reason)``.

    Raises:
        CheckpointError: ``path`` does not exist, is neither kind of directory, or the run has
            no checkpoint.
        CheckpointCorrupt: a checkpoint directory does not verify, or no checkpoint of the run
            does (the message lists each reason).
    """
    p = Path(path)
    if not p.exists():
        raise CheckpointError(p, "does not exist")
    if not p.is_dir():
        raise CheckpointError(p, "is not a directory")
    if _TMP.match(p.name):
        raise CheckpointError(p, "is the temporary of an unfinished save; never loaded")
    if _is_checkpoint_dir(p):
        verify(p)
        return p, []
    if p.name == "checkpoints" and not (p / "checkpoints").is_dir():
        p = p.parent
    ckpt_dir = p / "checkpoints"
    if not ckpt_dir.is_dir():
        raise CheckpointError(
            p,
            "is neither a checkpoint directory (no manifest.json) nor a run directory "
            "(no checkpoints/)",
        )
    candidates = list(reversed(list_checkpoints(p)))
    skipped: list[tuple[Path, str]] = []
    latest, why = _read_latest(ckpt_dir)
    if latest is None:
        if candidates or (ckpt_dir / LATEST).exists():
            skipped.append((ckpt_dir / LATEST, why))
    elif (ckpt_dir / latest).is_dir():
        candidates.remove(ckpt_dir / latest)
        candidates.insert(0, ckpt_dir / latest)
    else:
        skipped.append((ckpt_dir / latest, "named by LATEST but missing"))
    for c in candidates:
        try:
            verify(c)
        except CheckpointError as e:
            skipped.append((c, e.reason))
            continue
        return c, skipped
    if not skipped:
        raise CheckpointError(p, "the run has no checkpoint")
    raise CheckpointCorrupt(
        p, "no intact checkpoint: " + "; ".join(f"{s.name}: {r}" for s, r in skipped)
    )


def load_checkpoint(
    path: str | os.PathLike, device: torch.device | str | None = None
) -> TensorDict:
    """Verify and load a checkpoint into ordinary (not file-backed) tensors.

    Args:
        path: a run directory (its LATEST, else the newest intact checkpoint; each skipped
            one is reported with ``warnings.warn``) or a checkpoint directory.
        device: where the tensors go; None keeps them on CPU. The device the state was saved
            from does not matter (a CUDA-saved checkpoint loads on a CPU-only machine).

    Returns:
        The saved TensorDict: same keys, shapes, dtypes and bytes; unlocked, owning its memory.

    Raises:
        CheckpointError / CheckpointCorrupt: see :func:`resolve`; never an exception from
            inside torch or tensordict for a damaged checkpoint.
    """
    ckpt, skipped = resolve(path)
    for bad, why in skipped:
        warnings.warn(f"tdppo: skipped checkpoint {bad}: {why}; using {ckpt}", stacklevel=2)
    return _load_verified(ckpt, device)


def _load_verified(ckpt: Path, device: torch.device | str | None) -> TensorDict:
    try:
        mapped = TensorDict.load_memmap(ckpt, device="cpu", allow_pickle=False)
        # The trap: `mapped` holds write-through views of the files. Clone into owned memory.
        state = mapped.clone()
        del mapped
    except Exception as e:  # tensordict's errors on a bad layout are not ours to leak
        raise CheckpointCorrupt(ckpt, f"tensordict cannot read it ({type(e).__name__}: {e})") from e
    if device is not None:
        state = state.to(device)
    return state


# -- comparing ---------------------------------------------------------------------------------


def _key_str(key: str | tuple[str, ...]) -> str:
    return "/".join(key) if isinstance(key, tuple) else key


def _entries(td: TensorDictBase) -> dict[str, tuple]:
    """key -> ("tree",) or ("tensor", shape, dtype), for every node outside ``meta``."""
    out = {}
    for key, value in td.items(include_nested=True, leaves_only=False):
        key = key if isinstance(key, tuple) else (key,)
        if key[0] == EXEMPT:
            continue
        if is_tensor_collection(value):
            out[_key_str(key)] = ("tree",)
        else:
            out[_key_str(key)] = ("tensor", tuple(value.shape), value.dtype)
    return out


def check_compatible(live: TensorDict, loaded: TensorDict, source: str) -> None:
    """Check that ``loaded`` holds exactly the state ``live`` owns, with equal shapes and dtypes.

    Pure: nothing is modified. Keys under ``meta`` are exempt; devices are not compared.

    Raises:
        CheckpointMismatch: one error listing every key missing from ``loaded`` (sub-trees and
            their leaves), every extra key, and every kind/shape/dtype difference, e.g.
            ``checkpoint runs/x/checkpoints/000000004096: lacks 'transforms',
            'transforms/obs_norm/mean'``.
    """
    want, have = _entries(live), _entries(loaded)
    missing = [k for k in want if k not in have]
    extra = [k for k in have if k not in want]
    mismatched = []
    for k in want.keys() & have.keys():
        w, h = want[k], have[k]
        if w[0] != h[0]:
            kinds = {"tree": "a sub-tree", "tensor": "a tensor"}
            mismatched.append((k, f"is {kinds[h[0]]} in the checkpoint, {kinds[w[0]]} live"))
        elif w[0] == "tensor":
            if w[1] != h[1]:
                mismatched.append(
                    (k, f"has shape {list(h[1])} in the checkpoint, {list(w[1])} live")
                )
            if w[2] != h[2]:
                mismatched.append((k, f"has dtype {h[2]} in the checkpoint, {w[2]} live"))
    if not (missing or extra or mismatched):
        return
    missing, extra, mismatched = sorted(missing), sorted(extra), sorted(mismatched)
    quote = lambda keys: ", ".join(f"'{k}'" for k in keys)
    parts = []
    if missing:
        parts.append(f"lacks {quote(missing)}")
    if extra:
        parts.append(f"has keys the live state does not own: {quote(extra)}")
    parts += [f"'{k}' {what}" for k, what in mismatched]
    raise CheckpointMismatch(source, "; ".join(parts), missing, extra, mismatched)


# -- reporting ---------------------------------------------------------------------------------


def inspect(path: str | os.PathLike) -> str:
    """A human-readable report of a checkpoint or run: verification, frames, versions, config,
    and the tree of keys with dtypes and shapes.

    For a run directory it also lists every checkpoint, which one LATEST names, and which
    a load would use (skipping damaged ones). Damage is reported, not raised.

    Raises:
        CheckpointError: ``path`` does not exist or is neither a checkpoint nor a run directory.
    """
    p = Path(path)
    if not p.exists():
        raise CheckpointError(p, "does not exist")
    if p.is_dir() and _is_checkpoint_dir(p):
        return "\n".join(describe(p))
    run = p.parent if p.name == "checkpoints" and not (p / "checkpoints").is_dir() else p
    if not (run / "checkpoints").is_dir():
        raise CheckpointError(
            p,
            "is neither a checkpoint directory (no manifest.json) nor a run directory "
            "(no checkpoints/)",
        )
    latest, why = _read_latest(run / "checkpoints")
    all_ckpts = list_checkpoints(run)
    lines = [f"run {run}", f"LATEST: {latest if latest else why}"]
    lines.append("checkpoints: " + (", ".join(c.name for c in all_ckpts) or "(none)"))
    try:
        chosen, skipped = resolve(run)
    except CheckpointError as e:
        lines.append(f"loadable: NO - {e.reason}")
        target = (
            (run / "checkpoints" / latest) if latest else (all_ckpts[-1] if all_ckpts else None)
        )
        if target is not None and target.is_dir():
            lines += ["", *describe(target)]
        return "\n".join(lines)
    lines += [f"skipped {s.name}: {r}" for s, r in skipped]
    lines += ["", *describe(chosen)]
    return "\n".join(lines)
