"""Stopping on a signal: SIGTERM (SLURM before a time limit) or Ctrl-C asks every stage to
stop at its next safe point (MD: a checkpoint; training: the epoch; the bootstrap: the
network), and a second one exits at once."""
from __future__ import annotations

import os
import signal
import sys


class StopRequested(Exception):
    """SIGTERM/SIGINT arrived; what was computed is kept (a checkpoint, or finished stages)."""


_STOP = {"flag": False, "signal": None}


def install_signal_handlers() -> None:
    def handler(signum, frame):
        if _STOP["flag"]:
            sys.stderr.write("\ncvflow: second interrupt: exiting now (the last checkpoint is kept)\n")
            sys.stderr.flush()
            os._exit(128 + signum)
        _STOP["flag"] = True
        _STOP["signal"] = signal.Signals(signum).name
        sys.stderr.write(f"\ncvflow: {_STOP['signal']}: stopping at the next safe point "
                         f"(send it again to exit at once)\n")
        sys.stderr.flush()
    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def stop_requested() -> bool:
    return _STOP["flag"]


def check_stop(where: str) -> None:
    """Raise :class:`StopRequested` naming ``where`` when a stop was asked for."""
    if _STOP["flag"]:
        raise StopRequested(f"{where}: stopped on {_STOP['signal'] or 'request'}")


def reset() -> None:
    _STOP["flag"] = False
    _STOP["signal"] = None
