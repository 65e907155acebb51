"""Transition-state frames for the training loss (``model.transition_states``).

The reconstruction loss is dominated by the metastable states, so the decoded curve can
cut corners and miss a saddle. Frames near the transition states, added to the loss with
their own weight, pull it through (Lelièvre, Pigeon, Stoltz & Zhang). They come from a
file, or from the iteration's own biased frames whose previous CV lies near the top of a
barrier of the CZAR free energy along it.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .config import ConfigError, one_line
from .fes import read_fes
from .system import toy_positions


def barrier_regions(centres: np.ndarray, f: np.ndarray, beta: float, window_kT: float,
                    prominence_kT: float) -> list[dict]:
    """Barriers of a 1-D free energy: interior maxima that rise at least ``prominence_kT``
    above the basins on both sides (scipy's peak prominence), each with the interval of ξ
    around it where F stays within ``window_kT`` of its top.

    Parameters
    ----------
    centres : (n, 1) array, CV units
    f : (n,) array, kJ/mol; NaN where unknown (each finite stretch is searched on its own)
    """
    from scipy.signal import find_peaks
    c = np.asarray(centres, float).reshape(len(centres), -1)[:, 0]
    f = np.asarray(f, float)
    width = float(np.median(np.diff(c))) if len(c) > 1 else 0.0
    finite = np.isfinite(f)
    out = []
    start = 0
    while start < len(f):
        if not finite[start]:
            start += 1
            continue
        end = start
        while end < len(f) and finite[end]:
            end += 1
        g = beta * f[start:end]
        peaks, props = find_peaks(g, prominence=prominence_kT)
        for p, prom in zip(peaks, props["prominences"]):
            lo = hi = p
            while lo > 0 and g[lo - 1] >= g[p] - window_kT:
                lo -= 1
            while hi < len(g) - 1 and g[hi + 1] >= g[p] - window_kT:
                hi += 1
            out.append({"top": float(c[start + p]), "free_energy_kT": float(g[p] - np.min(g)),
                        "prominence_kT": float(prom), "low": float(c[start + lo] - width / 2),
                        "high": float(c[start + hi] + width / 2)})
        start = end
    return out


def barrier_frames(xi: np.ndarray, fes_path: Path, beta: float, ts_cfg, rng: np.random.Generator):
    """Indices of the frames whose ξ (n, 1) lies in a barrier region of ``fes_path``, at
    most ``ts_cfg.max_frames``, shared equally among the barriers (drawn at random within
    each). Returns ``(indices, info)``."""
    centres, f, _ = read_fes(fes_path)
    regions = barrier_regions(centres, f, beta, ts_cfg.window_kT, ts_cfg.prominence_kT)
    xi = np.asarray(xi, float).reshape(len(xi), -1)[:, 0]
    picked = []
    for r in regions:
        idx = np.flatnonzero((xi >= r["low"]) & (xi <= r["high"]))
        share = ts_cfg.max_frames // max(1, len(regions))
        if len(idx) > share:
            idx = np.sort(rng.choice(idx, size=share, replace=False))
        r["frames"] = int(len(idx))
        picked.append(idx)
    indices = np.unique(np.concatenate(picked)) if picked else np.zeros(0, np.int64)
    return indices.astype(np.int64), {"source": "barrier", "fes": str(fes_path), "barriers": regions,
                                      "window_kT": ts_cfg.window_kT, "prominence_kT": ts_cfg.prominence_kT}


def file_frames(path: Path, bundle) -> np.ndarray:
    """The frames of a transition-state file as positions (n, n_atoms, 3), nm. Toys: a
    ``.npy`` or text file of rows x, y (nm). Molecules: a trajectory with the system's atoms
    (its own topology if the format has one, else the system's)."""
    key = "model.transition_states.file"
    path = Path(path)
    if bundle.is_toy:
        try:
            xy = np.load(path) if path.suffix == ".npy" else np.loadtxt(path, ndmin=2)
        except (OSError, ValueError) as e:
            raise ConfigError(f"{key}: cannot read {path}: {one_line(e)}") from None
        xy = np.asarray(xy, float)
        if xy.ndim != 2 or xy.shape[1] not in (2, 3) or not len(xy):
            raise ConfigError(f"{key}: {path} must hold rows of x, y in nm (got shape {xy.shape})")
        return toy_positions(xy)
    import mdtraj as md
    try:
        if path.suffix.lower() in (".pdb", ".h5", ".gro", ".mol2"):
            t = md.load(str(path))
        else:
            t = md.load(str(path), top=bundle.mdtraj_topology())
    except Exception as e:  # mdtraj raises many kinds (a wrong atom count among them)
        raise ConfigError(f"{key}: cannot read {path} with the system's {bundle.n_atoms} atoms: {one_line(e)}") from None
    if t.n_atoms != bundle.n_atoms:
        raise ConfigError(f"{key}: {path} has {t.n_atoms} atoms, the system has {bundle.n_atoms}")
    return t.xyz.astype(np.float64)
