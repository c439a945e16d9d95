"""Runs one server for :mod:`federator.embedded` and dies with the thread that started it.

``python -I -S _childguard.py PARENT_PID FOLDER ARGV...`` (Linux): asks for SIGTERM when the
starting thread ends (PR_SET_PDEATHSIG), starts ARGV (which gets SIGKILL if this guard dies),
passes SIGTERM/SIGINT on to it, and once it has exited after a stop or the parent's death
removes FOLDER, which nobody else is left to remove. A server that exits by itself leaves
FOLDER (its log) to the parent. Stdlib only: it runs without site-packages.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import subprocess
import sys

PR_SET_PDEATHSIG = 1


def main(argv: list[str]) -> int:
    parent, folder, command = int(argv[0]), argv[1], argv[2:]
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    stopping = False
    child: subprocess.Popen[bytes] | None = None

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True
        if child is not None:
            child.terminate()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    if os.getppid() != parent:  # the parent died before PR_SET_PDEATHSIG took effect
        stopping = True
    else:
        child = subprocess.Popen(
            command, preexec_fn=lambda: libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        )
        if stopping:  # a stop that came while it started
            child.terminate()
    code = child.wait() if child is not None else 1
    if stopping or os.getppid() != parent:
        shutil.rmtree(folder, ignore_errors=True)
    return code if code >= 0 else 128 - code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
