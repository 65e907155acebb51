"""Progress for long stages: rich bars on a terminal, plain periodic log lines otherwise."""
from __future__ import annotations

import logging
import sys
import time

log = logging.getLogger("cvflow")


def setup_logging(verbosity: int = 0, logfile=None) -> None:
    """verbosity: -1 quiet, 0 normal, 1 verbose. Log lines carry no control characters."""
    level = {-1: logging.WARNING, 0: logging.INFO}.get(verbosity, logging.DEBUG)
    log.setLevel(logging.DEBUG)
    log.handlers.clear()
    h = logging.StreamHandler(sys.stderr)
    h.setLevel(level)
    h.setFormatter(logging.Formatter("%(asctime)s cvflow %(levelname)s %(message)s", "%H:%M:%S"))
    log.addHandler(h)
    if logfile is not None:
        fh = logging.FileHandler(logfile)
        fh.setLevel(logging.DEBUG)
        fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        log.addHandler(fh)
    log.propagate = False


def add_logfile(path) -> None:
    """Also log, with full detail, to ``path`` (appended: a resumed run adds to it)."""
    for h in log.handlers:
        if isinstance(h, logging.FileHandler) and h.baseFilename == str(path):
            return
    fh = logging.FileHandler(path, encoding="utf-8")
    fh.setLevel(logging.DEBUG)
    fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S"))
    log.addHandler(fh)


def eta_text(remaining: float, rate: float) -> str:
    """``ETA 42 s``, ``ETA 12 min``, ``ETA 3 h 05 min`` or ``ETA 1 d 20 h`` for ``remaining``
    units at ``rate`` per second (``ETA -`` before there is a rate)."""
    if not rate > 0:
        return "ETA -"
    s = round(remaining / rate)
    if s < 90:
        return f"ETA {s} s"
    m = round(s / 60)
    if m < 60:
        return f"ETA {m} min"
    if m < 24 * 60:
        return f"ETA {m // 60} h {m % 60:02d} min"
    h = round(s / 3600)
    return f"ETA {h // 24} d {h % 24} h"


class Progress:
    """Factory of progress callbacks. ``interactive`` draws rich bars; otherwise it logs
    a line about every 10% (and at most every ``min_seconds``)."""

    def __init__(self, interactive: bool | None = None, quiet: bool = False, min_seconds: float = 5.0):
        self.interactive = sys.stderr.isatty() if interactive is None else interactive
        self.quiet = quiet
        self.min_seconds = min_seconds

    def md(self, label: str, timestep_ps: float):
        """callback(step, total) for an MD segment: steps/s, ns/day, ETA."""
        t0 = time.perf_counter()
        state = {"last": t0, "first": None, "bar": None}

        def update(step, total):
            if self.quiet:
                return
            now = time.perf_counter()
            if state["first"] is None:
                state["first"] = (now, step)
            t_start, s_start = state["first"]
            rate = (step - s_start) / max(now - t_start, 1e-9)
            nsday = rate * timestep_ps * 86400 / 1000
            eta = eta_text(total - step, rate)
            if self.interactive:
                speed = f"{rate:,.0f} steps/s, {nsday:.1f} ns/day" if rate > 0 else "starting"
                self._bar(state, label, step, total, f"step {step:,}/{total:,} {speed} {eta}")
                if step >= total:  # the bar goes; one summary line stays
                    log.info(f"{label}: {total:,} steps done, {rate:,.0f} steps/s ({nsday:.1f} ns/day)")
            elif now - state["last"] >= self.min_seconds or step == total:
                state["last"] = now
                log.info(f"{label}: step {step:,}/{total:,} ({100 * step / total:.0f}%) {rate:,.0f} steps/s "
                         f"{nsday:.1f} ns/day {eta}")
        return update

    def train(self, label: str):
        """callback(epoch, max_epochs, train_loss, val_loss)."""
        state = {"last": time.perf_counter(), "bar": None}

        def update(epoch, total, train_loss, val_loss):
            if self.quiet:
                return
            now = time.perf_counter()
            msg = f"loss {train_loss:.4g} val {val_loss:.4g}"
            if epoch % 10 == 0 or epoch == 1:
                log.debug(f"{label}: epoch {epoch}/{total} {msg}")
            if self.interactive:
                self._bar(state, label, epoch, total, f"epoch {epoch}/{total} {msg}")
            elif now - state["last"] >= self.min_seconds or epoch == 1:
                state["last"] = now
                log.info(f"{label}: epoch {epoch}/{total} {msg}")
        return update

    def steps(self, label: str):
        """callback(step, total, message) for an optimisation: steps/s, ETA and the message."""
        t0 = time.perf_counter()
        state = {"last": t0, "bar": None}

        def update(step, total, msg=""):
            if self.quiet:
                return
            now = time.perf_counter()
            rate = step / max(now - t0, 1e-9)
            eta = eta_text(total - step, rate)
            if self.interactive:
                self._bar(state, label, step, total, f"step {step:,}/{total:,} {msg} {eta}")
                if step >= total:
                    log.info(f"{label}: {total:,} steps done, {msg}")
            elif now - state["last"] >= self.min_seconds or step == total:
                state["last"] = now
                log.info(f"{label}: step {step:,}/{total:,} ({100 * step / total:.0f}%) {msg} {eta}")
        return update

    def _bar(self, state, label, done, total, msg):
        from rich.progress import BarColumn, Progress as RichProgress, TextColumn
        if state["bar"] is None:
            p = RichProgress(TextColumn("{task.description}"), BarColumn(),
                             TextColumn("{task.percentage:>3.0f}%"), TextColumn("{task.fields[msg]}"),
                             transient=True)
            p.start()
            state["bar"] = (p, p.add_task(label, total=total, msg=msg))
        p, task = state["bar"]
        p.update(task, completed=done, msg=msg)
        if done >= total:
            p.stop()
