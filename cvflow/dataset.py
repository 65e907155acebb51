"""Trajectories + free energy → aligned features and normalised weights."""
from __future__ import annotations

import numpy as np
from scipy.special import logsumexp

from .features import AlignedFeatures
from .fes import fes_on_frames, read_fes


def make_features(bundle, features_cfg) -> AlignedFeatures:
    """The featuriser for a system: (x, y) for toys; selected, aligned atoms for molecules."""
    if bundle.is_toy:
        return AlignedFeatures([0], bundle.positions[:1], align=False, components=[0, 1])
    ref = bundle.positions
    if features_cfg.reference is not None:
        import mdtraj as md
        from .config import ConfigError
        t = md.load(str(features_cfg.reference))
        if t.n_atoms != bundle.n_atoms:
            raise ConfigError(f"features.reference: {features_cfg.reference} has {t.n_atoms} atoms, "
                              f"the system has {bundle.n_atoms}")
        ref = t.xyz[0].astype(np.float64)
    idx = bundle.feature_atoms
    return AlignedFeatures(idx, ref[idx], align=features_cfg.align)


def log_weights_from_fes(xi: np.ndarray, fes_path, beta: float,
                         divide_by_histogram: bool = False) -> tuple[np.ndarray, dict]:
    """log ŵ_j = −β F(ξ_j) − log Σ_k exp(−β F(ξ_k)), in float64 (log-sum-exp).

    The paper's weights assume that the biased run sampled ξ uniformly. With
    ``divide_by_histogram``, they are divided by the run's own histogram of ξ (the
    ``count`` column of ``fes.csv``): ŵ ∝ exp(−β F(ξ)) / ρ̃(ξ), the exact ratio of the
    equilibrium to the biased density of ξ, which also holds where eABF has not yet
    flattened ρ̃ (early in a run, during the ``fullsamples`` ramp).

    Frames whose ξ has no free energy (outside the grid, in an unsampled bin, or in a
    region of the grid that the CZAR gradient does not connect to the main one) get
    log ŵ = −inf: they are left out of the reweighted data rather than given an arbitrary
    weight. Returns ``(log ŵ, info)``; ``info`` counts those frames.
    """
    centres, f, count, periods = read_fes(fes_path, with_periods=True)
    xi = np.asarray(xi, np.float64).reshape(len(xi), -1)
    fx = fes_on_frames(centres, f, xi, periods)
    if divide_by_histogram:
        with np.errstate(divide="ignore"):
            log_rho = np.where((count > 0) & np.isfinite(f), np.log(np.maximum(count, 1e-300)), np.nan)
        fx = fx + fes_on_frames(centres, log_rho, xi, periods) / beta
    known = np.isfinite(fx)
    logw = np.where(known, -beta * np.where(known, fx, 0.0), -np.inf)
    if known.any():
        logw = logw - logsumexp(logw[known])
    n = len(xi)
    info = {"frames": int(n), "frames_without_free_energy": int(n - known.sum()),
            "fraction_without_free_energy": float((n - known.sum()) / n) if n else 0.0}
    return logw, info


def normalised_weights(logw: np.ndarray) -> np.ndarray:
    """Weights summing to one from log-weights (−inf: weight 0)."""
    w = np.exp(logw - np.max(logw))
    return w / w.sum()
def effective_sample_size(w: np.ndarray) -> float:
    """Kish's effective sample size (Σw)² / Σw²."""
    w = np.asarray(w, np.float64)
    return float(w.sum() ** 2 / np.sum(w * w)) if len(w) else 0.0
