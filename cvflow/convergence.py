"""The regression score between two CVs and its bootstrap-calibrated threshold."""
from __future__ import annotations

import itertools

import numpy as np


def regscores(a: np.ndarray, b: np.ndarray, w: np.ndarray | None = None) -> np.ndarray:
    """R² of the least-squares fit b_k ≈ W_k a + c_k, one per output k of the new CV.

    ``a`` (n, d1) is the old CV and ``b`` (n, d2) the new one, on the same frames.
    R²_k = 1 − Σ(b_k − b̂_k)² / Σ(b_k − mean b_k)², each sum weighted by ``w`` when given.
    An output that does not vary scores 0.
    """
    a = np.asarray(a, np.float64).reshape(len(a), -1)
    b = np.asarray(b, np.float64).reshape(len(b), -1)
    w = np.ones(len(a)) if w is None else np.asarray(w, np.float64).reshape(len(a))
    design = np.column_stack([a, np.ones(len(a))])
    sw = np.sqrt(w)[:, None]
    coef, *_ = np.linalg.lstsq(design * sw, b * sw, rcond=None)
    resid = b - design @ coef
    mean = (b * w[:, None]).sum(0) / w.sum()
    tot = (((b - mean) ** 2) * w[:, None]).sum(0)
    res = ((resid ** 2) * w[:, None]).sum(0)
    safe = np.where(tot > 0, tot, 1.0)
    return np.where(tot > 0, 1.0 - res / safe, 0.0)


def regscore(a: np.ndarray, b: np.ndarray, w: np.ndarray | None = None) -> float:
    """The regression score of the new CV ``b`` on the old one ``a``: the weakest output's R²
    (:func:`regscores`).

    Pooling the residuals of all outputs would let a well-explained output of large variance
    hide one that is not explained at all (scores [1.00, 0.001] pool to 0.99 when the first
    output varies 1000 times more); the stop rule asks that every output be explained.
    """
    return float(np.min(regscores(a, b, w)))


def pairwise_regscores(cvs: list[np.ndarray]) -> np.ndarray:
    """regscore (weakest output) for every ordered pair of CVs (they are not symmetric)."""
    return np.array([regscore(a, b) for a, b in itertools.permutations(cvs, 2)])


def bootstrap_threshold(train_fn, x: np.ndarray, w: np.ndarray, repeats: int, fraction: float,
                        quantile: float, rng: np.random.Generator, map_fn=map,
                        eval_x: np.ndarray | None = None) -> tuple[float, np.ndarray]:
    """Threshold = ``quantile`` of the pairwise regscores of ``repeats`` models trained on
    resamples (``fraction`` of the frames, drawn without replacement, kept in time order).

    ``train_fn(x_sub, w_sub, seed)`` returns a function features → CV. ``map_fn`` runs the
    trainings (e.g. a process pool's ``map``; the resamples and seeds do not depend on it).
    Returns ``(threshold, scores)``; the CVs are compared on all frames ``x``, or on
    ``eval_x`` when given (the frames on which the loop compares successive CVs).
    """
    n = len(x)
    m = max(2, int(round(fraction * n)))
    jobs = []
    for _ in range(repeats):
        idx = np.sort(rng.choice(n, size=m, replace=False))
        jobs.append((x[idx], w[idx], int(rng.integers(2**31))))
    encoders = list(map_fn(train_fn, *zip(*jobs)))
    cvs = [enc(x if eval_x is None else eval_x) for enc in encoders]
    scores = pairwise_regscores(cvs)
    return float(np.quantile(scores, quantile)), scores
