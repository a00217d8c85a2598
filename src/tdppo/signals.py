"""Preemption: SIGTERM / SIGINT stop a training run at the next update boundary, saved.

SLURM, Kubernetes and spot instances send SIGTERM some seconds before they kill; a user
presses Ctrl-C (SIGINT). Inside ``with StopOnSignal() as stop:``

- the **first** signal only sets ``stop.requested`` (the ``signal.Signals`` received) and
  says so on stderr; the driver finishes the current update, writes a checkpoint and raises
  :class:`Preempted`, which the CLI turns into its message and exit status;
- a **second** signal aborts at once: ``SystemExit(128 + signum)`` for SIGTERM,
  ``KeyboardInterrupt`` for SIGINT, raised from the handler wherever the main thread is. A
  checkpoint save it interrupts is abandoned (its temporary is removed on the way out) and
  the previously published checkpoint, which ``LATEST`` still names, is intact: the save is
  atomic.

Exit statuses (the shell's convention, 128 + signal number): **143** after SIGTERM,
**130** after SIGINT, whether stopped cleanly or aborted.

>>> import os, signal
>>> with StopOnSignal() as stop:
...     os.kill(os.getpid(), signal.SIGTERM)
...     stop.requested.name
'SIGTERM'

Handlers can only be installed from the main thread; elsewhere the context manager installs
nothing and ``requested`` stays None. A signal ignored (``SIG_IGN``) on entry stays ignored,
as Python itself leaves an ignored SIGINT alone (a background job of a script). The previous
handlers are restored on exit.
"""

from __future__ import annotations

import os
import shlex
import signal
import threading
from pathlib import Path

__all__ = ["STOP_SIGNALS", "StopOnSignal", "Preempted", "stop_requested", "exit_status"]

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
_ACTIVE: list[StopOnSignal] = []


def exit_status(signum: int) -> int:
    """The documented exit status after a signal: 128 + its number (143 SIGTERM, 130 SIGINT)."""
    return 128 + int(signum)


class Preempted(Exception):
    """Training stopped on a signal after saving a checkpoint. ``str(err)`` is the one line
    to print, e.g. ``tdppo: stopped by SIGTERM at 4096 frames; checkpoint
    runs/x/checkpoints/000000004096; continue with: tdppo train --resume --run-dir runs/x``.

    Attributes:
        signal: the ``signal.Signals`` that stopped it.
        exit_status: 128 + its number (143 SIGTERM, 130 SIGINT).
        frames: frames reached (and saved).
        checkpoint: the checkpoint directory written.
        run_dir: the run directory to resume.
    """

    def __init__(
        self,
        signum: int,
        *,
        frames: int,
        checkpoint: str | os.PathLike,
        run_dir: str | os.PathLike,
    ) -> None:
        self.signal = signal.Signals(signum)
        self.exit_status = exit_status(signum)
        self.frames = int(frames)
        self.checkpoint = Path(checkpoint)
        self.run_dir = Path(run_dir)
        super().__init__(
            f"tdppo: stopped by {self.signal.name} at {self.frames} frames; checkpoint "
            f"{self.checkpoint}; continue with: tdppo train --resume --run-dir "
            f"{shlex.quote(str(self.run_dir))}"
        )


def _say(line: str) -> None:
    """Write a line to stderr from a signal handler (os.write: no buffered-IO reentrancy)."""
    try:
        os.write(2, (line + "\n").encode())
    except OSError:
        pass


class StopOnSignal:
    """``with StopOnSignal() as stop:`` poll ``stop.requested`` at safe points (see module doc).

    Attributes:
        requested: None, or the first ``signal.Signals`` received.
        count: signals received so far.
    """

    def __init__(self, signals: tuple[int, ...] = STOP_SIGNALS) -> None:
        self.signals = tuple(signal.Signals(s) for s in signals)
        self.requested: signal.Signals | None = None
        self.count = 0
        self._previous: dict[signal.Signals, object] = {}

    def __enter__(self) -> StopOnSignal:
        if threading.current_thread() is threading.main_thread():
            for s in self.signals:
                if signal.getsignal(s) is signal.SIG_IGN:
                    continue
                self._previous[s] = signal.signal(s, self._handle)
        _ACTIVE.append(self)
        return self

    def __exit__(self, *exc) -> None:
        previous, self._previous = self._previous, {}
        for s, handler in previous.items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)
        if self in _ACTIVE:
            _ACTIVE.remove(self)

    def _handle(self, signum: int, frame) -> None:
        sig = signal.Signals(signum)
        self.count += 1
        if self.requested is None:
            self.requested = sig
            _say(
                f"tdppo: {sig.name} received: finishing the current update and saving a "
                f"checkpoint (send it again to abort at once)"
            )
            return
        _say(
            f"tdppo: second signal ({sig.name}): aborting at once; a checkpoint save in "
            "progress is abandoned and the previously published checkpoint stays intact"
        )
        if sig == signal.SIGINT:
            raise KeyboardInterrupt
        raise SystemExit(exit_status(sig))


def stop_requested() -> signal.Signals | None:
    """The signal the innermost active :class:`StopOnSignal` received, or None."""
    return _ACTIVE[-1].requested if _ACTIVE else None
