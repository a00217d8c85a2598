"""Run logging: ``metrics.csv`` (always), TensorBoard (optional), progress on the terminal."""

from __future__ import annotations

import csv
import math
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["MetricsLog", "Progress"]


class MetricsLog:
    """Append-only CSV of training metrics, one row per logged update (per member, in a
    population; TensorBoard tags then carry a ``member<i>/`` prefix).

    On resume, rows past the checkpoint's frame count (written by the interrupted run after
    its last checkpoint) are dropped, so the file reads as the uninterrupted run. A ``note``
    column carries events such as a fallback to an older checkpoint. ``path=None`` logs
    nothing (the processes of a data-parallel run other than rank 0).
    """

    def __init__(self, path: Path | None, tensorboard_dir: Path | None = None):
        self._tb = None
        self.enabled = path is not None
        if not self.enabled:
            return
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fields: list[str] | None = None
        if self.path.exists() and self.path.stat().st_size:
            with open(self.path, newline="") as f:
                self._fields = next(csv.reader(f), None)
        if tensorboard_dir is not None:
            from torchrl.record.loggers import TensorboardLogger

            self._tb = TensorboardLogger(exp_name="tdppo", log_dir=str(tensorboard_dir))

    def truncate_after(self, frames: int) -> None:
        if not self.enabled or not self.path.exists() or not self._fields:
            return
        with open(self.path, newline="") as f:
            rows = [r for r in csv.DictReader(f) if _frames(r) <= frames]
        tmp = self.path.with_suffix(".csv.tmp")
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=self._fields)
            w.writeheader()
            w.writerows(rows)
        tmp.replace(self.path)

    def write(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        if self._fields is None:
            self._fields = [*row.keys(), "note"]
            with open(self.path, "w", newline="") as f:
                csv.DictWriter(f, fieldnames=self._fields).writeheader()
        with open(self.path, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=self._fields, extrasaction="ignore")
            w.writerow(row)
        if self._tb is not None:
            step = int(row.get("frames", 0))
            prefix = f"member{row['member']}/" if "member" in row else ""
            for k, v in row.items():
                skip = k in ("frames", "member") or not isinstance(v, int | float)
                if not skip and math.isfinite(v):
                    self._tb.log_scalar(prefix + k, v, step=step)

    def note(self, message: str, frames: int | None = None) -> None:
        if not self.enabled:
            return
        row = {"note": message}
        if frames is not None:
            row["frames"] = frames
        if self._fields is None:
            self._fields = ["frames", "note"]
            with open(self.path, "w", newline="") as f:
                csv.DictWriter(f, fieldnames=self._fields).writeheader()
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, fieldnames=self._fields, extrasaction="ignore").writerow(row)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.experiment.flush()


def _frames(row: dict[str, str]) -> float:
    try:
        return float(row.get("frames") or 0)
    except ValueError:
        return 0.0


class Progress:
    """A tqdm bar on a terminal; plain periodic lines (every ~10 s) otherwise."""

    def __init__(self, total: int, quiet: bool = False):
        self.quiet = quiet
        self.bar = None
        self._last = 0.0
        if not quiet and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="frames", dynamic_ncols=True)
        self._n = 0

    def update(self, frames: int, row: dict[str, Any]) -> None:
        if self.quiet:
            return
        ret = row.get("episode_return_mean", float("nan"))
        if self.bar is not None:
            self.bar.update(frames - self._n)
            self.bar.set_postfix(sps=f"{row['sps']:.0f}", ret=f"{ret:.1f}")
        else:
            now = time.monotonic()
            if now - self._last >= 10.0:
                self._last = now
                print(
                    f"frames {frames}  sps {row['sps']:.0f}  return {ret:.1f}",
                    file=sys.stderr,
                    flush=True,
                )
        self._n = frames

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
