"""Helper processes die with the daemon, even when the daemon is killed with SIGKILL.

The decode pool's forkserver preloads this module, and every decode worker calls
``die_with_parent`` when it starts: the kernel then sends SIGKILL to each of them
as soon as its parent goes away, so ``kill -9`` of the daemon leaves nothing behind.
Linux only (prctl); elsewhere a no-op.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """Ask the kernel to SIGKILL this process when its parent exits. Never raises."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        return
    # The parent may already be gone, before prctl took effect: then nobody will signal.
    if os.getppid() == 1:
        os._exit(0)


# Imported by the forkserver at its start (multiprocessing's forkserver preload).
if __name__ != "__main__" and os.environ.get("TRAILKEEPER_FORKSERVER") == "1":
    die_with_parent()
