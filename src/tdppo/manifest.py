"""One checkpoint directory on disk: its manifest, verification, durable writes, description.

A checkpoint directory holds a memory-mapped TensorDict as tensordict writes it (a
``meta.json`` per sub-tree, one ``<key>.memmap`` file of raw bytes per non-empty tensor
leaf) plus ``manifest.json``::

    {"format": "tdppo.checkpoint", "format_version": 1, "frames": 4096,
     "created": "2025-01-01T00:00:00+00:00", "created_unix": 1735689600.0,
     "versions": {"tdppo": ..., "torch": ..., "torchrl": ..., "tensordict": ..., "python": ...},
     "config": {...},                          # the run's config, plain JSON
     "checksum": "sha256",
     "files": {"meta.json": {"size": 469, "sha256": "..."},
               "policy/weight.memmap": {"size": 768, "sha256": "..."}, ...}}

:func:`verify` accepts a directory only if the manifest parses, its format version is one
this library reads, every listed file is present with the listed size and checksum, and no
file is present that the manifest does not list. Verification never imports torch: a
damaged checkpoint is refused before tensordict reads a byte of it.

Durable writes: :func:`fsync_tree` (files, then directories bottom-up) and :func:`publish`
(rename into place; an atomic exchange when the name exists) are what
:func:`tdppo.checkpoint.save_checkpoint` builds its crash safety from.

Impure (file system) throughout; every function names the path it works on in its errors.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import json
import os
import platform
import re
import shutil
import time
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "SUPPORTED_FORMAT_VERSIONS",
    "MANIFEST_NAME",
    "CheckpointError",
    "CheckpointCorrupt",
    "CheckpointMismatch",
    "DiskFullError",
    "build_manifest",
    "write_manifest",
    "read_manifest",
    "verify",
    "fsync_path",
    "fsync_tree",
    "library_versions",
    "make_dirs",
    "remove",
    "publish",
    "describe",
]

FORMAT_NAME = "tdppo.checkpoint"
FORMAT_VERSION: int = 1
SUPPORTED_FORMAT_VERSIONS = frozenset({1})
MANIFEST_NAME = "manifest.json"
CHECKSUM = "sha256"
_CHECKPOINT_NAME = re.compile(r"^\d{12}$")
_REQUIRED = {
    "format": str,
    "format_version": int,
    "frames": int,
    "created": str,
    "versions": dict,
    "config": dict,
    "checksum": str,
    "files": dict,
}


class CheckpointError(Exception):
    """A checkpoint cannot be used. ``str(err)`` is one line naming the path and the reason.

    Attributes:
        path: the checkpoint (or run) directory concerned.
        reason: what is wrong, without the path (one line).
    """

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        super().__init__(path, reason)
        self.path = Path(path)
        self.reason = " ".join(str(reason).split())  # always one line

    def __str__(self) -> str:
        return f"checkpoint {self.path}: {self.reason}"


class CheckpointCorrupt(CheckpointError):
    """Damaged or incomplete: a file is missing, truncated, altered, extra, or unreadable."""


class CheckpointMismatch(CheckpointError):
    """The checkpoint's keys, shapes or dtypes differ from the live state's.

    Attributes:
        missing: keys of the live state the checkpoint lacks (``"a/b"`` strings).
        extra: keys in the checkpoint the live state does not own.
        mismatched: ``(key, description)`` for keys whose kind, shape or dtype differ.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        reason: str,
        missing: list[str] | None = None,
        extra: list[str] | None = None,
        mismatched: list[tuple[str, str]] | None = None,
    ) -> None:
        super().__init__(path, reason)
        self.missing = list(missing or [])
        self.extra = list(extra or [])
        self.mismatched = list(mismatched or [])


class DiskFullError(CheckpointError, OSError):
    """A save ran out of space (``ENOSPC``) or quota (``EDQUOT``); nothing of it was kept.

    Also an :class:`OSError` with that ``errno``. ``str(err)`` is one line, e.g. ``no space
    left on device while writing checkpoint runs/x/checkpoints/000000008192; the latest intact
    checkpoint is runs/x/checkpoints/000000004096``.

    Attributes:
        path: the checkpoint directory the save was writing.
        latest: the checkpoint a load or ``--resume`` would use now (None: there is none).
    """

    def __init__(self, path: str | os.PathLike, code: int, latest: Path | None) -> None:
        what = "disk quota exceeded" if code == errno.EDQUOT else "no space left on device"
        after = (
            f"the latest intact checkpoint is {latest}"
            if latest is not None
            else "no intact checkpoint exists yet"
        )
        super().__init__(path, f"{what} while writing checkpoint {Path(path)}; {after}")
        self.errno, self.strerror, self.filename = code, os.strerror(code), str(path)
        self.latest = latest

    def __str__(self) -> str:
        return self.reason


def library_versions() -> dict[str, str]:
    """Versions of the libraries that wrote (or read) a checkpoint."""
    import tensordict
    import torch
    import torchrl

    import tdppo

    return {
        "tdppo": tdppo.__version__,
        "torch": str(torch.__version__),
        "torchrl": str(torchrl.__version__),
        "tensordict": str(tensordict.__version__),
        "python": platform.python_version(),
    }


def _digest(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, CHECKSUM).hexdigest()


def _files_on_disk(root: Path) -> list[str]:
    """Relative POSIX paths of every regular file under ``root`` but the manifest.

    Raises CheckpointCorrupt on a symbolic link or special file (never written by a save).
    """
    found = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        here = Path(dirpath)
        for name in [*dirnames, *filenames]:
            p = here / name
            rel = p.relative_to(root).as_posix()
            if p.is_symlink():
                raise CheckpointCorrupt(root, f"unexpected symbolic link '{rel}'")
            if name in filenames:
                if not p.is_file():
                    raise CheckpointCorrupt(root, f"unexpected special file '{rel}'")
                if rel != MANIFEST_NAME:
                    found.append(rel)
    return sorted(found)


def build_manifest(root: str | os.PathLike, *, frames: int, config: dict) -> dict[str, Any]:
    """Describe the files under ``root`` (sizes and checksums) and the run that wrote them."""
    root = Path(root)
    now = time.time()
    files = {}
    for rel in _files_on_disk(root):
        p = root / rel
        files[rel] = {"size": p.stat().st_size, CHECKSUM: _digest(p)}
    return {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "frames": int(frames),
        "created": datetime.fromtimestamp(now, UTC).isoformat(timespec="seconds"),
        "created_unix": now,
        "versions": library_versions(),
        "config": config,
        "checksum": CHECKSUM,
        "files": files,
    }


def write_manifest(root: str | os.PathLike, manifest: dict[str, Any]) -> Path:
    """Write ``root/manifest.json`` and fsync it (the directory is fsynced by the caller)."""
    path = Path(root) / MANIFEST_NAME
    text = json.dumps(manifest, indent=1, sort_keys=True) + "\n"
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    return path


def read_manifest(checkpoint_dir: str | os.PathLike) -> dict[str, Any]:
    """Parse and check the structure of ``checkpoint_dir/manifest.json`` (not the files).

    Raises:
        CheckpointError: ``checkpoint_dir`` does not exist or is not a directory.
        CheckpointCorrupt: the manifest is missing, not JSON, malformed, of another format,
            or of a format version this library does not read.
    """
    root = Path(checkpoint_dir)
    if not root.exists():
        raise CheckpointError(root, "does not exist")
    if not root.is_dir():
        raise CheckpointError(root, "is not a directory")
    path = root / MANIFEST_NAME
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise CheckpointCorrupt(root, f"{MANIFEST_NAME} is missing (incomplete save?)") from None
    except OSError as e:
        raise CheckpointCorrupt(root, f"{MANIFEST_NAME} unreadable: {e.strerror}") from None
    try:
        manifest = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointCorrupt(root, f"{MANIFEST_NAME} is not valid JSON ({e})") from None
    if not isinstance(manifest, dict):
        raise CheckpointCorrupt(root, f"{MANIFEST_NAME} is not a JSON object")
    if manifest.get("format") != FORMAT_NAME:
        raise CheckpointCorrupt(
            root, f"{MANIFEST_NAME} format is {manifest.get('format')!r}, not {FORMAT_NAME!r}"
        )
    version = manifest.get("format_version")
    if version not in SUPPORTED_FORMAT_VERSIONS or isinstance(version, bool):
        raise CheckpointCorrupt(
            root,
            f"{MANIFEST_NAME} format version {version!r} is not supported "
            f"(this tdppo reads {sorted(SUPPORTED_FORMAT_VERSIONS)})",
        )
    for field, kind in _REQUIRED.items():
        value = manifest.get(field)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise CheckpointCorrupt(
                root, f"{MANIFEST_NAME} field {field!r} is missing or not a {kind.__name__}"
            )
    if manifest["checksum"] != CHECKSUM:
        raise CheckpointCorrupt(
            root, f"{MANIFEST_NAME} checksum {manifest['checksum']!r} is not {CHECKSUM!r}"
        )
    for rel, entry in manifest["files"].items():
        parts = PurePosixPath(rel).parts
        if (
            not rel
            or "\\" in rel
            or PurePosixPath(rel).is_absolute()
            or any(p in ("", ".", "..") for p in parts)
            or rel != PurePosixPath(*parts).as_posix()
            or rel == MANIFEST_NAME
        ):
            raise CheckpointCorrupt(root, f"{MANIFEST_NAME} lists an invalid file path {rel!r}")
        if (
            not isinstance(entry, dict)
            or not isinstance(entry.get("size"), int)
            or isinstance(entry.get("size"), bool)
            or not isinstance(entry.get(CHECKSUM), str)
        ):
            raise CheckpointCorrupt(root, f"{MANIFEST_NAME} entry for '{rel}' is malformed")
    if "meta.json" not in manifest["files"]:
        raise CheckpointCorrupt(root, f"{MANIFEST_NAME} does not list the root 'meta.json'")
    if _CHECKPOINT_NAME.match(root.name) and int(root.name) != manifest["frames"]:
        raise CheckpointCorrupt(
            root, f"{MANIFEST_NAME} says frames={manifest['frames']}, the directory name differs"
        )
    return manifest


def verify(checkpoint_dir: str | os.PathLike) -> None:
    """Check every byte of a checkpoint against its manifest; return None if intact.

    Raises:
        CheckpointError: the directory does not exist or is not a directory.
        CheckpointCorrupt: naming the bad file: manifest problems (see :func:`read_manifest`),
            a listed file missing, of the wrong size (truncated) or checksum (altered), or a
            file present that the manifest does not list.
    """
    root = Path(checkpoint_dir)
    manifest = read_manifest(root)
    listed = manifest["files"]
    on_disk = _files_on_disk(root)
    extra = [rel for rel in on_disk if rel not in listed]
    if extra:
        raise CheckpointCorrupt(
            root, "files not listed in the manifest: " + ", ".join(f"'{r}'" for r in extra)
        )
    present = set(on_disk)
    for rel, entry in sorted(listed.items()):
        p = root / rel
        if rel not in present:
            raise CheckpointCorrupt(root, f"file '{rel}' listed in the manifest is missing")
        size = p.stat().st_size
        if size != entry["size"]:
            raise CheckpointCorrupt(
                root, f"file '{rel}' has {size} bytes, the manifest says {entry['size']}"
            )
        try:
            digest = _digest(p)
        except OSError as e:
            raise CheckpointCorrupt(root, f"file '{rel}' unreadable: {e.strerror}") from None
        if digest != entry[CHECKSUM]:
            raise CheckpointCorrupt(
                root, f"file '{rel}' fails its {CHECKSUM} checksum (altered or damaged)"
            )


def fsync_path(path: str | os.PathLike) -> None:
    """fsync one file or directory (a directory's fsync makes its entries durable)."""
    flags = os.O_RDONLY | (os.O_DIRECTORY if Path(path).is_dir() else 0)
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: str | os.PathLike) -> None:
    """fsync every file under ``root``, then every directory bottom-up, ``root`` last."""
    dirs = []
    for dirpath, _, filenames in os.walk(root, topdown=False):
        for name in filenames:
            fsync_path(Path(dirpath) / name)
        dirs.append(Path(dirpath))
    for d in dirs:
        fsync_path(d)


def make_dirs(path: Path) -> Path:
    """mkdir -p, fsyncing the parent of every directory it creates."""
    missing = []
    p = path
    while not p.exists():
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        d.mkdir(exist_ok=True)
        fsync_path(d.parent)
    if not path.is_dir():
        raise NotADirectoryError(f"{path} exists and is not a directory")
    return path


def remove(p: Path) -> None:
    """Delete a file or directory tree if present (best effort, never follows a link)."""
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        try:
            p.unlink()
        except FileNotFoundError:
            pass


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2 RENAME_EXCHANGE); False if unsupported."""
    fn = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if fn is None:
        return False
    rc = fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if rc != 0:
        err = ctypes.get_errno()
        if err in (22, 38, 95):  # EINVAL, ENOSYS, EOPNOTSUPP: this file system cannot
            return False
        raise OSError(err, os.strerror(err), str(a), None, str(b))
    return True


def publish(tmp: Path, final: Path) -> None:
    """Give ``tmp`` the name ``final``; an existing ``final`` ends up at ``tmp`` (removed later).

    With RENAME_EXCHANGE no instant exists where ``final`` is missing. Without it, the old
    checkpoint is moved aside first: a crash in between leaves LATEST naming a missing
    directory, and resolve() falls back to the newest intact one.
    """
    if not final.exists():
        os.rename(tmp, final)
        return
    if _exchange(tmp, final):
        return
    aside = tmp.with_name(tmp.name + ".old")
    os.rename(final, aside)
    try:
        os.rename(tmp, final)
    except BaseException:
        os.rename(aside, final)
        raise
    os.rename(aside, tmp)


# -- reporting --------------------------------------------------------------------------------


def _tree_lines(td: Any, indent: str = "  ") -> list[str]:
    from tensordict import is_tensor_collection

    lines = []
    rows = []
    for key in sorted(td.keys()):
        value = td.get(key)
        if is_tensor_collection(value):
            sub = _tree_lines(value, indent + "  ")
            lines.append((f"{indent}{key}/", sub))
        else:
            rows.append(
                (f"{indent}{key}", str(value.dtype).removeprefix("torch."), list(value.shape))
            )
    width = max((len(r[0]) for r in rows), default=0)
    out = [f"{n.ljust(width)}  {d:<9} {s}" for n, d, s in rows]
    for head, sub in lines:
        out.append(head + ("" if sub else "  (empty)"))
        out += sub
    return out


def _summary(config: dict, limit: int = 12) -> str:
    items = [
        f"{k}={v!r}" if not isinstance(v, dict | list) else f"{k}=<{type(v).__name__}>"
        for k, v in config.items()
    ]
    more = f", ... ({len(items) - limit} more)" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more if items else "(empty)"


def describe(ckpt: Path) -> list[str]:
    """Report lines for one checkpoint directory: verification, manifest fields, key tree.

    Damage is reported in the lines, never raised.
    """
    lines = [f"checkpoint {ckpt}"]
    try:
        verify(ckpt)
        lines.append("verifies: yes")
    except CheckpointError as e:
        lines.append(f"verifies: NO - {e.reason}")
    try:
        m = read_manifest(ckpt)
    except CheckpointError as e:
        lines.append(f"manifest: unreadable - {e.reason}")
        return lines
    n = len(m["files"])
    size = sum(e["size"] for e in m["files"].values())
    v = m["versions"]
    lines += [
        f"frames: {m['frames']}",
        f"created: {m['created']}",
        f"format: {m['format']} v{m['format_version']}; {n} files, {size} bytes, {m['checksum']}",
        "versions: " + ", ".join(f"{k} {v[k]}" for k in sorted(v)),
        f"config: {_summary(m['config'])}",
    ]
    from tensordict import TensorDict

    try:
        tree = TensorDict.load_memmap(ckpt, device="meta", allow_pickle=False)
    except Exception as e:  # a damaged meta.json: report, do not raise
        lines.append(f"tree: unreadable ({type(e).__name__}: {e})")
        return lines
    lines.append("tree:")
    lines += _tree_lines(tree)
    return lines
