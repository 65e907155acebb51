"""Run-directory paths, atomic writes and the manifest of finished stages.

Every file is written to a temporary name in the same directory and renamed, so a
reader sees either the old file or the whole new one. A stage is finished only when the
manifest says so, and the manifest entry is written after everything the stage produced.
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path next to ``path``; rename it onto ``path`` on success.

    The file gets the permissions a plainly created file would (0666 less the umask), not
    mkstemp's 0600, so that a group sharing a project directory can read the results."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_text(path, text: str) -> None:
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text)


def write_bytes(path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        Path(tmp).write_bytes(data)


def write_json(path, obj: Any) -> None:
    """Strict JSON: a value that is not finite (an undefined free energy, NaN) is written as
    null, which every JSON reader accepts (NaN is not JSON: jq, JavaScript and strict parsers
    refuse it)."""
    write_text(path, json.dumps(_finite_or_null(obj), indent=2, default=_json_default, allow_nan=False) + "\n")


def _finite_or_null(o: Any) -> Any:
    if isinstance(o, dict):
        return {k: _finite_or_null(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_finite_or_null(v) for v in o]
    if isinstance(o, np.ndarray):
        return _finite_or_null(o.tolist())
    if isinstance(o, (float, np.floating)):
        return float(o) if np.isfinite(o) else None
    return o


def read_json(path) -> Any:
    return json.loads(Path(path).read_text())


def write_npy(path, arr: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, arr)


def write_npz(path, **arrays) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)


def write_csv(path, header: list[str], rows: np.ndarray, comments: list[str] = (), fmt="%.10g") -> None:
    """CSV with ``# comment`` lines (units, provenance) and a header row."""
    with atomic_path(path) as tmp:
        with open(tmp, "w") as fh:
            for c in comments:
                fh.write(f"# {c}\n")
            fh.write(",".join(header) + "\n")
            np.savetxt(fh, np.asarray(rows, dtype=float).reshape(len(rows), len(header)), delimiter=",", fmt=fmt)


def read_csv(path) -> tuple[list[str], np.ndarray]:
    lines = [ln for ln in Path(path).read_text().splitlines() if ln and not ln.startswith("#")]
    header = lines[0].split(",")
    data = np.array([[float(v) for v in ln.split(",")] for ln in lines[1:]]).reshape(-1, len(header))
    return header, data


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o)}")


class Manifest:
    """``manifest.json`` in a run directory: finished stages and their results."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / "manifest.json"
        self.data = read_json(self.path) if self.path.exists() else {"stages": {}}

    def done(self, stage: str) -> bool:
        return stage in self.data["stages"]

    def get(self, stage: str) -> dict:
        return self.data["stages"][stage]

    def mark(self, stage: str, info: dict | None = None) -> None:
        self.data["stages"][stage] = info or {}
        write_json(self.path, self.data)

    def current(self, stage: str | None) -> None:
        self.data["current"] = stage
        write_json(self.path, self.data)


class Heartbeat:
    """``heartbeat.json`` in a run directory while a process works on it: host, pid and the
    time, rewritten every ``interval`` seconds by a daemon thread and removed on a clean
    exit. ``cvflow status`` tells a live run from a dead one by it (a killed job leaves a
    stale one)."""

    def __init__(self, run_dir: Path, interval: float = 30.0):
        self.path = Path(run_dir) / "heartbeat.json"
        self.interval = interval
        self._stop = None

    def _beat(self) -> None:
        import socket
        import time
        write_json(self.path, {"host": socket.gethostname(), "pid": os.getpid(), "time": time.time(),
                               "interval_seconds": self.interval})

    def __enter__(self):
        import threading
        self._stop = threading.Event()
        self._beat()

        def loop():
            while not self._stop.wait(self.interval):
                try:
                    self._beat()
                except OSError:
                    pass
        threading.Thread(target=loop, daemon=True, name="cvflow-heartbeat").start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        try:
            self.path.unlink()
        except OSError:
            pass
        return False


def is_live(run_dir: Path) -> bool:
    """Whether a process (here, or on another host with a fresh heartbeat) works on the run."""
    text = liveness(run_dir)
    return bool(text and text.startswith("running"))


def liveness(run_dir: Path) -> str | None:
    """``None`` when no process works on the run; else a phrase such as ``running (pid 12,
    this host)`` or ``stopped or killed (last heartbeat 2 h ago on node7)``."""
    import socket
    import time
    path = Path(run_dir) / "heartbeat.json"
    if not path.exists():
        return None
    try:
        hb = read_json(path)
    except (OSError, ValueError):
        return None
    age = time.time() - float(hb.get("time", 0))
    ago = f"{age:.0f} s" if age < 120 else (f"{age / 60:.0f} min" if age < 7200 else f"{age / 3600:.1f} h")
    if hb.get("host") == socket.gethostname():
        try:
            os.kill(int(hb["pid"]), 0)
            alive = True
        except ProcessLookupError:
            alive = False
        except (PermissionError, KeyError, ValueError, TypeError):
            alive = age < 3 * float(hb.get("interval_seconds", 30))
        return (f"running (pid {hb['pid']}, last heartbeat {ago} ago)" if alive
                else f"killed (pid {hb.get('pid')} is gone; last heartbeat {ago} ago)")
    if age < 3 * float(hb.get("interval_seconds", 30)):
        return f"running on {hb.get('host')} (pid {hb.get('pid')}, last heartbeat {ago} ago)"
    return f"stopped or killed on {hb.get('host')} (last heartbeat {ago} ago)"
