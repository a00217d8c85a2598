"""Run the tdppo CLI and SIGKILL itself at a chosen moment (fault injection for tests).

usage: python tests/_crash_runner.py MODE N -- <tdppo args>
  MODE=frames: die right after the metrics row for >= N frames is written (mid-run)
  MODE=fsync:  die at the N-th os.fsync call (inside a checkpoint write)
  MODE=none:   run normally
"""

import os
import signal
import sys


def _die():
    os.kill(os.getpid(), signal.SIGKILL)


def main():
    mode, n = sys.argv[1], int(sys.argv[2])
    argv = sys.argv[sys.argv.index("--") + 1 :]
    if mode == "fsync":
        real = os.fsync
        count = [0]

        def fsync(fd):
            count[0] += 1
            if count[0] == n:
                _die()
            return real(fd)

        os.fsync = fsync
    elif mode == "frames":
        from tdppo import metrics

        real_write = metrics.MetricsLog.write

        def write(self, row):
            real_write(self, row)
            if int(row.get("frames", 0)) >= n:
                _die()

        metrics.MetricsLog.write = write
    from tdppo.cli import main as cli_main

    sys.exit(cli_main(argv))


if __name__ == "__main__":
    main()
