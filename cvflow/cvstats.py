"""How stiff a coupling the MD can integrate on a learned CV.

The coupling κ/2 (ξ(x) − λ)² acts on an atom of mass m like a spring of stiffness
κ |∇_i ξ|². Its period must stay well above the time step: with ω = |∇_i ξ| √(κ/m), the
Verlet-type integrator is unstable beyond ω Δt = 2 and inaccurate well before. cvflow keeps
ω Δt ≤ 0.5 (at least 12 steps per period) at a margin of 1.5 above the largest gradient
seen on the CV's own training frames:

    κ_stable = m_min (0.5 / Δt)² / (1.5 G)²,   G = max over frames and atoms of |∇_i ξ|

Measured on alanine dipeptide (10 ns iterations, 2 fs): an autoencoder trained with
``scaling: feature`` had G = 106 /nm on the next iteration's frames (99% quantile 61), so the
default κ = kT/h² = 1,133 kJ/mol/cv² gave ω Δt ≈ 2 on a carbon, and the run blew up; with
``scaling: global``, G = 17–22 /nm (99% quantile 11–14), and κ_stable ≈ 700.
"""
from __future__ import annotations

import numpy as np

OMEGA_DT = 0.5
MARGIN = 1.5


def gradient_stats(cv, frames: np.ndarray, max_frames: int = 2000) -> dict:
    """The largest per-atom gradient norm |∇_i ξ| (CV units per nm) of a CV evaluator on
    frames ``(n, n_atoms, 3)`` (at most ``max_frames`` of them, evenly spaced)."""
    idx = np.unique(np.linspace(0, len(frames) - 1, min(max_frames, len(frames))).astype(int))
    parts = np.asarray(cv.particles)
    g = np.empty(len(idx))
    for k, j in enumerate(idx):
        _, jac = cv(np.ascontiguousarray(frames[j][parts], dtype=np.float64))
        g[k] = np.sqrt((jac ** 2).sum(axis=(0, 2))).max()  # all CV components together, per atom
    return {"grad_max": float(g.max()), "grad_q99": float(np.quantile(g, 0.99)),
            "grad_median": float(np.median(g)), "frames": int(len(idx))}


def stable_kappa(grad_max: float, min_mass: float, timestep: float) -> float:
    """κ_stable in kJ/mol/cv² for the largest gradient (/nm), the lightest CV atom (amu) and the
    time step (ps)."""
    return float(min_mass * (OMEGA_DT / timestep) ** 2 / (MARGIN * max(grad_max, 1e-12)) ** 2)
