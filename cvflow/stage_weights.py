"""A run's reweighting factor as a function of configuration, for models of its biased frames.

A biased stage samples p_s(x) ∝ p(x) / W_s(ξ_s(x)): its bias acts through its CV ξ_s alone,
so the factor that takes its frames back to p, w ∝ p / p_s, is a function of ξ_s. Each
frame's weight (``weights.npy``) estimates it at one point, with noise (the extended
weights also depend on λ). Binned on ξ_s, the mean weight of the stage's frames in each
bin is W_s there; within a bin p_s(x | ξ) = p(x | ξ), so nothing else is needed.

A model fitted to the frames as sampled (each frame counts once: all of them inform it,
where the reweighted likelihood counts only the Kish ESS, and a state the bias visits
often, with small weights, is learned as well as the rest) describes the pool of stages,
p_pool = Σ_s π_s p_s (π_s: the stage's share of the frames). Its samples are taken to p by

    p(x) / p_pool(x) = 1 / Σ_s π_s r_s(x),   r_s = p_s / p = 1 / W_s(ξ_s(x)),

with r_s = 0 in a bin that the stage's frames never reached (it put no density there), and
the factor undefined (the sample dropped, and counted) where no stage did. An unbiased
stage has r_s = 1. ``cvflow cg`` uses it with ``cg.frame_weights: biased``.

Tempered (``cg.weight_exponent`` α, 0 ≤ α < 1): the frames enter the likelihood with weights
W_s^α / c_s at their bin (c_s: the mean of W_s^α over the stage's frames), so the model
learns Σ_s π_s p r_s^{1−α} / c_s, and the factor is 1 / Σ_s (π_s / c_s) r_s^{1−α}. α = 0 is
the frames as sampled; towards 1 it approaches the reweighted likelihood.
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .fes import Grid

FALLBACK_BINS = 36   # per dimension, over the frames' range, for a stage without czar.npz


@dataclass
class StageFactor:
    """One stage: its CV (None: unbiased), grid, r_s per bin (flattened), share π_s and the
    tempered weights' normalisation c_s (1 untempered)."""
    cv: Path | None
    grid: Grid | None
    ratio: np.ndarray | None
    share: float
    norm: float = 1.0


def stage_factor(cv_path: Path | None, xi: np.ndarray | None, weights: np.ndarray, share: float,
                 grid: Grid | None = None) -> StageFactor:
    """r_s per bin of ``grid`` from one stage's frames: their CV values ``xi`` (n, d) and
    weights (n,), normalised here to mean 1 over the stage. Without ``grid``, a grid of
    :data:`FALLBACK_BINS` bins per dimension over the frames' range."""
    if cv_path is None:
        return StageFactor(None, None, None, float(share))
    w = np.asarray(weights, np.float64)
    w = w / w.mean()
    xi = np.asarray(xi, np.float64).reshape(len(w), -1)
    if grid is None:
        lo, hi = xi.min(0), xi.max(0)
        pad = np.maximum(hi - lo, 1e-9) / (2 * FALLBACK_BINS)
        grid = Grid(lo - pad, hi + pad, np.full(xi.shape[1], FALLBACK_BINS, np.int64))
    flat, inside = _flat_bins(grid, xi)
    n = int(np.prod(grid.bins))
    count = np.bincount(flat[inside], minlength=n)
    total = np.bincount(flat[inside], weights=w[inside], minlength=n)
    visited = (count > 0) & (total > 0)
    ratio = np.where(visited, count / np.where(visited, total, 1.0), 0.0)  # 1 / (mean weight in the bin)
    return StageFactor(Path(cv_path), grid, ratio, float(share))


def _flat_bins(grid: Grid, xi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    k = grid.bin_indices(xi)
    inside = np.all((k >= 0) & (k < grid.bins), axis=1)
    flat = np.ravel_multi_index(tuple(np.clip(k, 0, grid.bins - 1).T), tuple(grid.bins))
    return flat, inside


def ratio_at(s: StageFactor, xi: np.ndarray) -> np.ndarray:
    """r_s at CV values ``xi`` (n, d); 0 outside the grid and in bins the frames never reached."""
    flat, inside = _flat_bins(s.grid, xi)
    return np.where(inside, s.ratio[flat], 0.0)


def tempered_weights(s: StageFactor, xi: np.ndarray | None, n: int, alpha: float) -> np.ndarray:
    """The stage's ``n`` frames' likelihood weights W_s^α / c_s (mean 1), from their CV
    values ``xi``; sets the stage's c_s. All 1 for an unbiased stage or α = 0."""
    if s.cv is None or alpha == 0:
        s.norm = 1.0
        return np.ones(n)
    r = ratio_at(s, xi)
    t = np.where(r > 0, np.where(r > 0, r, 1.0) ** -alpha, 0.0)
    s.norm = float(t.mean())
    return t / s.norm


def log_factor(stages: list[StageFactor], xi_of, n: int, alpha: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """log p/p_model of ``n`` configurations (p_model: the pool of stages, tempered by
    ``alpha``), and the mask of those that no stage reached (their log factor is −inf).
    ``xi_of(cv_path)`` gives the configurations' values of a CV."""
    denom = np.zeros(n)
    for s in stages:
        if s.cv is None:
            denom += s.share
            continue
        denom += s.share / s.norm * ratio_at(s, xi_of(s.cv)) ** (1.0 - alpha)
    unreached = denom <= 0
    return -np.log(np.where(unreached, np.inf, denom)), unreached


def save(stages: list[StageFactor], out_dir: Path) -> None:
    """``reweighting.npz`` and each stage's CV, copied beside it (``stage_cv_K.pt``), so that
    the directory keeps what its samples were weighted by."""
    from . import artifacts as art
    arrays = {"shares": np.array([s.share for s in stages]), "stages": np.int64(len(stages)),
              "norms": np.array([s.norm for s in stages])}
    for k, s in enumerate(stages):
        if s.cv is None:
            continue
        dst = out_dir / f"stage_cv_{k}.pt"
        with art.atomic_path(dst) as tmp:
            shutil.copyfile(s.cv, tmp)
        g = s.grid
        arrays.update({f"ratio_{k}": s.ratio, f"mins_{k}": g.mins, f"maxs_{k}": g.maxs, f"bins_{k}": g.bins,
                       f"periodic_{k}": g.periodic})
    art.write_npz(out_dir / "reweighting.npz", **arrays)


def load(out_dir: Path) -> list[StageFactor]:
    d = np.load(out_dir / "reweighting.npz")
    out = []
    for k in range(int(d["stages"])):
        share = float(d["shares"][k])
        if f"ratio_{k}" not in d:
            out.append(StageFactor(None, None, None, share))
            continue
        g = Grid(d[f"mins_{k}"], d[f"maxs_{k}"], d[f"bins_{k}"], d[f"periodic_{k}"])
        out.append(StageFactor(out_dir / f"stage_cv_{k}.pt", g, d[f"ratio_{k}"], share, float(d["norms"][k])))
    return out


def systematic_resample(log_w: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` indices drawn with probabilities ∝ exp(log_w) by systematic resampling (one
    uniform: the lowest variance of the standard schemes)."""
    w = np.exp(log_w - np.max(log_w))
    c = np.cumsum(w / w.sum())
    c[-1] = 1.0
    return np.searchsorted(c, (rng.random() + np.arange(n)) / n, side="right")
