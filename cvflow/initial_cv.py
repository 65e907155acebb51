"""Grids for CVs given by the user (the initial CV, or ``cvflow sample --cv``)."""
from __future__ import annotations

import numpy as np

from .config import ConfigError
from .fes import Grid
from .units import kT


def initial_grid(cfg, bundle, cv_path=None) -> Grid:
    """``bias.grid`` if set; [-1, 1] for a cvflow CV (tanh bottleneck); for a toy, the range
    of the CV over the region where V − V_min ≤ 12 kT; otherwise an error asking for a grid."""
    import torch
    b = cfg.bias
    if b.grid is not None:
        return Grid.from_dims(b.grid)
    path = cv_path or b.cv
    m = torch.jit.load(str(path), map_location="cpu").eval()
    if hasattr(m, "cvflow_format"):
        with torch.no_grad():
            d = int(m(torch.as_tensor(bundle.positions, dtype=torch.float64)).numel())
        return Grid(np.full(d, -1.0), np.full(d, 1.0), np.full(d, b.bins, dtype=np.int64))
    if bundle.is_toy:
        pts = _low_energy_points(bundle, cfg.md.temperature)
        with torch.no_grad():
            vals = np.array([m(torch.as_tensor(p, dtype=torch.float32)).double().numpy() for p in pts])
        vals = vals.reshape(len(pts), -1)
        lo, hi = vals.min(0), vals.max(0)
        span = np.maximum(hi - lo, 1e-6)
        return Grid(lo - b.grid_margin * span, hi + b.grid_margin * span, np.full(len(lo), b.bins, dtype=np.int64))
    raise ConfigError("bias.grid: give the grid (min, max, bins per CV dimension) for a CV that cvflow did not make")


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
