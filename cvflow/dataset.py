"""Trajectories + free energy → aligned features and normalised weights.

Two reweightings of an eABF stage's frames to the Boltzmann distribution:

- **extended** (the default, :func:`log_weights_extended`). eABF samples (x, λ) from
  p_b(x, λ) ∝ e^{−β[U(x) + κ/2 |ξ(x) − λ|² + B(λ)]}, where the bias B (ABF and walls) acts
  on λ alone. The target p_t(x, λ) ∝ e^{−β[U(x) + κ/2 |ξ(x) − λ|²]} has the Boltzmann
  distribution as its x-marginal, and p_b(x | λ) = p_t(x | λ). So the exact weight of a
  frame is p_t(λ)/p_b(λ) = e^{−βA(λ)}/ρ̃(λ): A is the free energy of the extended variable,
  whose gradient is the mean coupling force κ⟨λ − ξ⟩ at fixed λ, and ρ̃ the histogram of λ.
  Nothing in it needs the free energy along ξ or its histogram.
- **czar**: by the CZAR free energy along ξ, ŵ ∝ e^{−βF(ξ)} (the paper's weights, which
  assume that ξ was sampled uniformly) or ŵ ∝ e^{−βF(ξ)}/ρ̃(ξ) (:func:`log_weights_from_fes`).
  On the first biased iteration of alanine dipeptide at the paper's protocol it gave
  ΔF(C7ax − C7eq) 0.8 and 5.1 kJ/mol above the reference where the extended weights were
  within 0.5 (README, "Alanine dipeptide at the paper's protocol").

Both assume that the frames at each λ (or ξ) are in equilibrium among themselves, i.e. that
the CV resolves the slow motions. A stage run under a *frozen* bias (a static B(λ); the
production's ``convergence.production_frozen_steps``) does not need that: its stationary
distribution is p_b(x, λ) ∝ e^{−β[U(x) + κ/2 |ξ(x) − λ|² + B(λ) + W(λ)]} exactly, so
ŵ ∝ e^{β[B(λ) + W(λ)]} (:func:`log_weights_frozen`) are exact weights whatever the CV
resolves; only the number of transitions sets their error.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy.special import logsumexp

from .features import AlignedFeatures
from .fes import Grid, connected_regions, fes_on_frames, integrate_1d, integrate_2d, main_region, read_fes


def make_features(bundle, features_cfg, saved: np.ndarray | None = None) -> AlignedFeatures:
    """The featuriser for a system: (x, y) for toys; selected, aligned atoms for molecules.

    With ``saved`` (the atoms that frames hold, ``md.save_atoms``), it reads frames of those
    atoms only: the same features, with the feature atoms' indices into the saved ones."""
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
    return AlignedFeatures(idx if saved is None else subset_index(saved, idx), ref[idx], align=features_cfg.align)


def subset_index(saved: np.ndarray, atoms: np.ndarray) -> np.ndarray:
    """Where ``atoms`` (indices into the system) sit among the ``saved`` atoms."""
    saved, atoms = np.asarray(saved), np.asarray(atoms)
    pos = np.searchsorted(saved, atoms)
    if np.any(pos >= len(saved)) or np.any(saved[np.minimum(pos, len(saved) - 1)] != atoms):
        raise ValueError("some atoms are not among the saved ones (md.save_atoms)")
    return pos.astype(np.int64)


def expand_frames(frames: np.ndarray, saved: np.ndarray | None, n_atoms: int) -> np.ndarray:
    """Frames of the saved atoms as frames of every atom (the others at the origin), for a
    CV file, which takes the whole system's positions; ``saved`` None: unchanged."""
    if saved is None:
        return frames
    full = np.zeros((len(frames), n_atoms, 3), dtype=frames.dtype)
    full[:, saved] = frames
    return full


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


def extended_grid(grid: Grid, lam: np.ndarray) -> Grid:
    """The grid with the bins of ``grid``, grown on non-periodic dimensions to hold every λ
    (λ goes a little past the walls at the grid's edges)."""
    lam = np.asarray(lam, np.float64).reshape(len(lam), grid.dim)
    lo, nb = grid.mins.copy(), grid.bins.copy()
    for d in range(grid.dim):
        if grid.periodic[d] or not len(lam):
            continue
        below = int(max(0, np.ceil((grid.mins[d] - lam[:, d].min()) / grid.widths[d])))
        above = int(max(0, np.floor((lam[:, d].max() - grid.maxs[d]) / grid.widths[d]) + 1))
        lo[d] -= below * grid.widths[d]
        nb[d] += below + above
    return Grid(lo, lo + nb * grid.widths, nb, grid.periodic)


def log_weights_extended(xi: np.ndarray, lam: np.ndarray, kappa, grid: Grid, beta: float,
                         min_count: int = 1, step_stats=None, stride: int = 1) -> tuple[np.ndarray, dict]:
    """log ŵ_j = −β A(λ_j) − ln ρ̃(λ_j), normalised (see the module's docstring).

    ``xi`` and ``lam`` are the frames' ξ and λ (colvar.csv), ``kappa`` the coupling of each
    frame (a scalar, or one per frame: a stage that recovered from a blow-up went on with a
    softer κ; each part is reweighted on its own and the parts are pooled by their frame
    counts). A is integrated from the mean of κ(λ − ξ) per bin of λ on ``grid`` grown to
    hold every λ, on the main connected region of sampled bins; frames elsewhere get
    log ŵ = −inf and are counted in ``info``.

    ``step_stats`` (a :class:`cvflow.fes.CZARStats` binned by λ on ``grid``: the native
    engine's count and Σ κ(λ − ξ) of every MD step, ``lambda.npz``) replace the frames'
    own statistics, in units of frames (divided by ``stride``, the steps per frame), and
    the frames whose λ is past the walls (a few percent: 3% in 10-ns alanine-dipeptide
    stages) take the weight at the nearest point of the grid. A stage with one κ only:
    after a recovery the frames' statistics are used, on the grown grid."""
    xi = np.asarray(xi, np.float64).reshape(len(xi), -1)
    lam = np.asarray(lam, np.float64).reshape(xi.shape)
    n = len(xi)
    kappa = np.broadcast_to(np.asarray(kappa, np.float64), (n,))
    # with the per-step statistics, A(λ) lives on the ABF grid, and the few frames whose λ
    # is past the walls take the log-ratio at the nearest point of the grid (λ clamped);
    # with the frames' statistics alone, the grid grows to hold every λ
    clamp = step_stats is not None and len(np.unique(np.asarray(kappa))) == 1
    g = grid if clamp else extended_grid(grid, lam)
    periods = g.periods
    lam_lookup = lam
    if clamp:
        half = 0.5 * g.widths
        lam_lookup = np.where(periods > 0, lam, np.clip(lam, g.mins + half * 1e-9, g.maxs - half * 1e-9))
    diff = lam - xi
    diff = np.where(periods > 0, diff - periods * np.floor(diff / np.where(periods > 0, periods, 1.0) + 0.5), diff)
    k = np.clip(g.bin_indices(lam_lookup), 0, g.bins - 1)  # periodic ones are in range already
    logw = np.full(n, -np.inf)
    parts = np.unique(kappa)
    for kap in parts:
        sel = kappa == kap
        count = np.zeros(tuple(g.bins))
        force = np.zeros(tuple(g.bins) + (g.dim,))
        np.add.at(count, tuple(k[sel].T), 1.0)
        np.add.at(force, tuple(k[sel].T), kap * diff[sel])
        if clamp:
            count, force = step_stats.count / stride, step_stats.sum_coupling / stride
        ok = count >= min_count if min_count > 1 else count > 0
        grad = np.where(ok[..., None], force / np.where(ok, count, 1.0)[..., None], np.nan)
        main = main_region(connected_regions(ok, g.periodic), count)
        if g.dim == 1:
            a = integrate_1d(grad[:, 0], g.widths[0], main, periodic=bool(g.periodic[0]))
        else:
            a = integrate_2d(grad, g.widths, main, periodic=g.periodic)
        with np.errstate(divide="ignore"):
            log_ratio = np.where(main, -beta * a - np.log(np.maximum(count, 1e-300)), np.nan)
        # ln(p_t/p_b) interpolated between bin centres at each λ (bin-constant weights are
        # off by up to the change of ln(p_t/p_b) across half a bin)
        part = fes_on_frames(g.mesh().reshape(-1, g.dim), log_ratio.reshape(-1), lam_lookup[sel], periods)
        part = np.where(np.isfinite(part), part, -np.inf)
        if np.isfinite(part).any():
            part = part - logsumexp(part[np.isfinite(part)]) + np.log(sel.sum() / n)
        logw[sel] = part
    known = np.isfinite(logw)
    if known.any():
        logw = logw - logsumexp(logw[known])
    info = {"estimator": "extended", "frames": int(n), "frames_without_free_energy": int(n - known.sum()),
            "fraction_without_free_energy": float((n - known.sum()) / n) if n else 0.0,
            "kappa_parts": int(len(parts))}
    return logw, info


def log_weights_frozen(lam: np.ndarray, record, beta: float, steps: np.ndarray | None = None) -> tuple[np.ndarray, dict]:
    """log ŵ_j = β [B(λ_j) + W(λ_j)], normalised: the exact weights of the frames of a stage
    run under a frozen bias (see the module's docstring). ``record`` is the stage's
    ``frozen_bias.npz`` (B per bin in kJ/mol, the grid, the walls' κ), ``lam`` the frames'
    λ (colvar.csv), ``beta`` in mol/kJ. κ does not enter: a recovery from a blow-up that
    softened it leaves the weights exact.

    A stage whose bias was frozen again along the way (``potentials`` and ``starts`` in the
    record: B_k from step s_k on) is a set of K stages, each under its own static bias, and
    ``steps`` (the frames' steps) says which one a frame belongs to: the frame at step s to
    the last bias frozen before s. Their frames are weighted together by MBAR
    (:func:`mbar_log_weights`), exact for each part's stationary distribution as the single
    bias's weights are; with one bias it is the formula above."""
    from .bias.native import static_bias_energies
    lam = np.ascontiguousarray(lam, np.float64).reshape(len(lam), -1)
    grid = (np.asarray(record["mins"], np.float64), np.asarray(record["widths"], np.float64),
            np.asarray(record["bins"], np.int64), np.asarray(record["periods"], np.float64),
            float(record["wall_kappa"]))
    pots = np.asarray(record["potentials"], np.float64) if "potentials" in record else np.zeros((0, 0))
    if len(pots) <= 1:
        pot = pots[0] if len(pots) else np.asarray(record["potential"], np.float64).ravel()
        logw = beta * static_bias_energies(lam, np.ascontiguousarray(pot), *grid)
        if len(logw):
            logw = logw - logsumexp(logw)
        return logw, {"estimator": "frozen", "frames": int(len(lam)), "frames_without_free_energy": 0,
                      "fraction_without_free_energy": 0.0}
    if steps is None:
        raise ValueError("a stage frozen more than once needs its frames' steps to weight them")
    starts = np.asarray(record["starts"], np.int64)
    part = np.clip(np.searchsorted(starts, np.asarray(steps, np.int64), side="left") - 1, 0, len(starts) - 1)
    u = np.array([beta * static_bias_energies(lam, np.ascontiguousarray(p), *grid) for p in pots])
    counts = np.bincount(part, minlength=len(pots)).astype(float)
    logw, f = mbar_log_weights(u, counts)
    return logw, {"estimator": "frozen", "frames": int(len(lam)), "frames_without_free_energy": 0,
                  "fraction_without_free_energy": 0.0, "frozen_biases": int(len(pots)),
                  "frames_per_bias": counts.astype(int).tolist(), "mbar_free_energies_kT": f.tolist()}


def mbar_log_weights(u: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """MBAR (Shirts & Chodera 2008) for frames drawn from K biased distributions
    p_k(x) ∝ e^{−U(x)/kT − u_k(x)}: ``u`` (K, n) the reduced bias energies of every frame
    under every bias, ``counts`` (K,) the frames drawn from each. Solves for the reduced free
    energies f_k (f_0 = 0) by minimising the convex objective
    Σ_n ln Σ_k N_k e^{f_k − u_k(n)} − Σ_k N_k f_k, and returns the normalised log-weights of
    the frames for the unbiased distribution, −ln Σ_k N_k e^{f_k − u_k(n)}, and f."""
    from scipy.optimize import minimize
    u = np.asarray(u, np.float64)
    logn = np.log(np.maximum(np.asarray(counts, np.float64), 1e-300))
    used = np.asarray(counts) > 0
    u, logn, counts = u[used], logn[used], np.asarray(counts, np.float64)[used]

    def objective(g):
        f = np.r_[0.0, g]
        a = logn[:, None] + f[:, None] - u
        lse = logsumexp(a, axis=0)
        p = np.exp(a - lse[None, :])  # each frame's share of each bias
        return lse.sum() - counts @ f, (p.sum(1) - counts)[1:]
    res = minimize(objective, np.zeros(len(counts) - 1), jac=True, method="L-BFGS-B",
                   options={"gtol": 1e-8, "ftol": 1e-14, "maxiter": 1000})
    worst = float(np.abs(objective(res.x)[1]).max()) if len(res.x) else 0.0
    if worst > 1e-3 * counts.max():  # a bias's frames off its expected count by more than 0.1 %
        from .progress import log
        log.warning(f"MBAR over {len(counts)} frozen biases did not converge ({res.message}; a bias's "
                    f"frames weigh {worst:.3g} off their count): the frozen stage's weights are approximate")
    f = np.r_[0.0, res.x]
    logw = -logsumexp(logn[:, None] + f[:, None] - u, axis=0)
    full = np.full(len(used), np.nan)
    full[used] = f
    return logw - logsumexp(logw), full


def frame_kappa(seg_dir, frame_steps: np.ndarray, kappa0: float) -> np.ndarray:
    """κ of each frame of a biased stage: ``kappa0`` (κ at the start), softened at each
    recovery from a blow-up (``segment.json``) from the step that it restarted from."""
    from . import artifacts as art
    kap = np.full(len(frame_steps), float(kappa0))
    marker = Path(seg_dir) / "segment.json"
    recoveries = art.read_json(marker).get("recoveries") or [] if marker.exists() else []
    for r in recoveries:
        kap[np.asarray(frame_steps) >= int(r["resumed_from_step"])] = float(r["kappa_after"])
    return kap


def stage_log_weights(seg_dir, beta: float, estimator: str = "extended", xi: np.ndarray | None = None,
                      divide_by_histogram: bool = True) -> tuple[np.ndarray, dict]:
    """Log-weights of a biased stage's frames (``seg_dir``: its md/ directory) by
    ``estimator`` (``extended`` or ``czar``; see the module's docstring), or, for a stage
    run under a frozen bias (``frozen_bias.npz``), by its exact weights. ``xi`` (the biasing
    CV on the frames) is needed by ``czar``; ``extended`` reads ξ and λ from colvar.csv and
    the per-step λ statistics from lambda.npz, which the native engine writes; a stage
    without them (PLUMED's) is reweighted by ``czar`` instead, and ``info`` says so.
    Walkers' stages (a ``walker`` column) are reweighted per walker's κ parts together."""
    from . import artifacts as art
    from .fes import CZARStats
    seg_dir = Path(seg_dir)
    if (seg_dir / "frozen_bias.npz").exists():  # a static bias: exact weights, whatever ``estimator``
        header, rows = art.read_csv(seg_dir / "colvar.csv")
        lam = rows[:, [i for i, h in enumerate(header) if h.startswith("lambda")]]
        return log_weights_frozen(lam, np.load(seg_dir / "frozen_bias.npz"), beta, rows[:, header.index("step")])
    if estimator == "extended" and not (seg_dir / "lambda.npz").exists():
        # no per-step λ statistics (the PLUMED engine, or a stage written before them): the
        # frames alone are too few for A(λ) on a 2-D grid in short stages, so use CZAR's
        logw, info = log_weights_from_fes(xi, seg_dir / "fes.csv", beta, divide_by_histogram=divide_by_histogram)
        return logw, {**info, "estimator": "czar", "note": "no lambda.npz (per-step λ statistics) in this stage"}
    if estimator == "czar":
        return log_weights_from_fes(xi, seg_dir / "fes.csv", beta, divide_by_histogram=divide_by_histogram)
    stats = CZARStats.load(seg_dir / "czar.npz")
    header, rows = art.read_csv(seg_dir / "colvar.csv")
    d = stats.grid.dim
    cv = rows[:, [header.index(f"cv{i + 1}") for i in range(d)]]
    lam = rows[:, [header.index(f"lambda{i + 1}") for i in range(d)]]
    steps = rows[:, header.index("step")].astype(np.int64)
    if "walker" in header:
        from .walkers import _walker_dir
        kappa = np.empty(len(rows))
        walker = rows[:, header.index("walker")].astype(np.int64)
        for w in np.unique(walker):
            sel = walker == w
            kappa[sel] = frame_kappa(_walker_dir(seg_dir, int(w)), steps[sel], stats.kappa)
    else:
        kappa = frame_kappa(seg_dir, steps, stats.kappa)
    step_stats, stride = None, 1
    if (seg_dir / "lambda.npz").exists():
        step_stats = CZARStats.load(seg_dir / "lambda.npz")
        stride = int(np.median(np.diff(steps))) if len(steps) > 1 else 1
    return log_weights_extended(cv, lam, kappa, stats.grid, beta, step_stats=step_stats, stride=max(stride, 1))
