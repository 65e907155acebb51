"""cvflow: learn collective variables while sampling (autoencoders + eABF on OpenMM)."""
import hashlib as _hashlib
import os as _os
from pathlib import Path as _Path

__version__ = "0.1.0"


def _numba_cache_dir() -> str:
    """Numba's on-disk cache, keyed by a hash of cvflow's sources.

    Numba invalidates a cached function only when its own file changes, not when a
    function it calls from another module does (fastcv.py calls into arena.py, cvs.py into
    fastcv.py). A stale cache then runs old machine code (an earlier symptom: "NRT_adapt_
    ndarray_to_python descr is NULL"). One cache per version of the sources makes the
    machine code follow the code.
    """
    h = _hashlib.sha256()
    for p in sorted(_Path(__file__).parent.rglob("*.py")):
        h.update(p.name.encode())
        h.update(p.read_bytes())
    base = _os.environ.get("XDG_CACHE_HOME") or _os.path.join(_os.path.expanduser("~"), ".cache")
    return _os.path.join(base, "cvflow", "numba", h.hexdigest()[:16])


def _use_keyed_numba_cache() -> None:
    """Point numba at the keyed cache unless the user set ``NUMBA_CACHE_DIR``. Numba reads
    its configuration when ``numba.core.config`` is first imported; where that happened
    before cvflow (pytest loads it at start-up), the configuration is read again."""
    import sys
    if "NUMBA_CACHE_DIR" in _os.environ:
        return
    _os.environ["NUMBA_CACHE_DIR"] = _numba_cache_dir()
    config = sys.modules.get("numba.core.config")
    if config is not None:
        config.reload_config()


_use_keyed_numba_cache()
