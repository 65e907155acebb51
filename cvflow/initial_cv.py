"""Grids for CVs given by the user (the initial CV, or ``cvflow sample --cv``)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .config import ConfigError
from .fes import Grid
from .units import kT


def initial_grid(cfg, bundle, cv_path=None) -> Grid:
    """``bias.cv_grid`` if set, else ``bias.grid`` if it has the CV's dimension; [-1, 1] for
    a learned cvflow CV (tanh bottleneck); (−π, π], periodic, for torsions; for a toy, the
    range of the CV over the region where V − V_min ≤ 12 kT; otherwise an error asking for
    a grid."""
    import torch
    from .fastcv import cv_format
    b = cfg.bias
    path = cv_path or b.cv
    m = torch.jit.load(str(path), map_location="cpu").eval()
    fmt = cv_format(m)
    with torch.no_grad():
        d = int(m(torch.as_tensor(bundle.positions, dtype=torch.float64 if fmt else torch.float32)).numel())
    for key, dims in (("bias.cv_grid", b.cv_grid), ("bias.grid", b.grid)):
        if dims is not None and len(dims) == d:
            return Grid.from_dims(dims)
        if dims is not None and key == "bias.cv_grid":
            raise ConfigError(f"bias.cv_grid has {len(dims)} dimension(s) but the CV {Path(path).name} gives {d}")
    if fmt in ("aligned-mlp/1", "torsions/1"):
        bins = np.full(d, b.bins, dtype=np.int64)
        if fmt == "torsions/1":
            return Grid(np.full(d, -np.pi), np.full(d, np.pi), bins, np.ones(d, bool))
        return Grid(np.full(d, -1.0), np.full(d, 1.0), bins)
    if bundle.is_toy:
        pts = _low_energy_points(bundle, cfg.md.temperature)
        with torch.no_grad():
            vals = np.array([m(torch.as_tensor(p, dtype=torch.float32)).double().numpy() for p in pts])
        vals = vals.reshape(len(pts), -1)
        lo, hi = vals.min(0), vals.max(0)
        span = np.maximum(hi - lo, 1e-6)
        return Grid(lo - b.grid_margin * span, hi + b.grid_margin * span, np.full(len(lo), b.bins, dtype=np.int64))
    raise ConfigError("bias.cv_grid: give the grid (min, max, bins per CV dimension) for a CV that cvflow "
                      "did not make")


def resolve_initial_cv(cfg, bundle, dest_dir) -> Path:
    """The initial CV file: ``bias.cv`` itself, or, when ``bias.cv_features`` declares that
    the model takes features (mlcolvar), the two composed into ``dest_dir/initial_cv.pt``."""
    if cfg.bias.cv_features is None:
        return Path(cfg.bias.cv)
    from .cvs import wrap_feature_cv
    return wrap_feature_cv(cfg.bias.cv, cfg.bias.cv_features, bundle.n_atoms, Path(dest_dir) / "initial_cv.pt")


def _low_energy_points(bundle, temperature, cutoff_kT: float = 12.0, n: int = 121, extent: float = 4.0):
    """Points (x, y, 0) of a toy potential within ``cutoff_kT`` of its minimum on a grid."""
    import openmm as mm
    from .system import clone_system
    system = clone_system(bundle.system)
    ctx = mm.Context(system, mm.VerletIntegrator(0.001), mm.Platform.getPlatformByName("Reference"))
    xs = np.linspace(-extent, extent, n)
    pts, energies = [], []
    for x in xs:
        for y in xs:
            ctx.setPositions([[x, y, 0.0]])
            energies.append(ctx.getState(getEnergy=True).getPotentialEnergy()._value)
            pts.append([[x, y, 0.0]])
    energies = np.array(energies)
    keep = energies - energies.min() <= cutoff_kT * kT(temperature)
    return np.array(pts)[keep]
