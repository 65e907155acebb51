"""How stiff a coupling the MD can integrate on a learned CV.

The coupling κ/2 (ξ(x) − λ)² acts on an atom of mass m like a spring of stiffness
κ |∇_i ξ|². Its period must stay well above the time step: with ω = |∇_i ξ| √(κ/m), the
Verlet-type integrator is unstable beyond ω Δt = 2. cvflow keeps ω Δt ≤ c (``bias.max_omega_dt``,
default 1, half that limit) at the largest gradient seen on the CV's own training frames:

    κ_stable = m_min (c / Δt)² / G²,   G = max over frames and atoms of |∇_i ξ|

Measured on alanine dipeptide (10 ns iterations, 2 fs): an autoencoder trained with
``scaling: feature`` had G = 106 /nm on the next iteration's frames (99% quantile 61), so the
default κ = kT/h² = 1,133 kJ/mol/cv² gave ω Δt ≈ 2.1 on a carbon, and the run blew up
(κ_stable = 267; κ = 300 is the value that a user found to work); with ``scaling: global``,
G = 17–22 /nm (99% quantile 11–14), ω Δt ≈ 0.4 at κ = 1,133, and κ_stable ≈ 6,000 does not bind.

The entropic-switch toy (a 1-amu particle at 20 fs) turns the bound off: its learned CVs
have G = 16–24 /nm, so κ_stable ≈ 4–10 against kT/h² ≈ 156, and yet the loop ran stably at
ω Δt ≈ 4 at the steepest point in 11 of 11 seeds (a lone particle passes through the
steep, narrow part of a tanh in a step or two; nothing resonates). With the bound on, it
still found x (R² 0.9999, free energy 0.14 kT RMS) but took 8 iterations instead of 4.

"""
from __future__ import annotations

import numpy as np



def gradient_stats(cv, frames: np.ndarray, max_frames: int = 2000, saved: np.ndarray | None = None) -> dict:
    """The largest per-atom gradient norm |∇_i ξ| (CV units per nm) of a CV evaluator on
    frames ``(n, n_atoms, 3)`` (at most ``max_frames`` of them, evenly spaced); frames of
    the ``saved`` atoms only (``md.save_atoms``) when given."""
    idx = np.unique(np.linspace(0, len(frames) - 1, min(max_frames, len(frames))).astype(int))
    parts = np.asarray(cv.particles)
    if saved is not None:
        from .dataset import subset_index
        parts = subset_index(saved, parts)
    g = np.empty(len(idx))
    for k, j in enumerate(idx):
        _, jac = cv(np.ascontiguousarray(frames[j][parts], dtype=np.float64))
        g[k] = np.sqrt((jac ** 2).sum(axis=(0, 2))).max()  # all CV components together, per atom
    return {"grad_max": float(g.max()), "grad_q99": float(np.quantile(g, 0.99)),
            "grad_median": float(np.median(g)), "frames": int(len(idx))}


def stable_kappa(grad_max: float, min_mass: float, timestep: float, omega_dt: float = 1.0) -> float:
    """κ_stable in kJ/mol/cv² for the largest gradient (/nm), the lightest CV atom (amu), the
    time step (ps) and the largest ω Δt allowed."""
    return float(min_mass * (omega_dt / timestep) ** 2 / max(grad_max, 1e-12) ** 2)
