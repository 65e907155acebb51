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
    a, b, w = _as_columns(a, b, w)
    design = np.column_stack([a, np.ones(len(a))])
    sw = np.sqrt(w)[:, None]
    coef, *_ = np.linalg.lstsq(design * sw, b * sw, rcond=None)
    return _weighted_r2(b, design @ coef, w)


def _as_columns(a, b, w):
    """Old CV, new CV as float64 columns (n, d), and the weights (ones when None)."""
    a = np.asarray(a, np.float64).reshape(len(a), -1)
    b = np.asarray(b, np.float64).reshape(len(b), -1)
    return a, b, np.ones(len(a)) if w is None else np.asarray(w, np.float64).reshape(len(a))


def _weighted_r2(b: np.ndarray, pred: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Per column, 1 − Σw(b − pred)² / Σw(b − mean b)²; 0 for a column that does not vary."""
    mean = (b * w[:, None]).sum(0) / w.sum()
    tot = (((b - mean) ** 2) * w[:, None]).sum(0)
    res = (((b - pred) ** 2) * w[:, None]).sum(0)
    safe = np.where(tot > 0, tot, 1.0)
    return np.where(tot > 0, 1.0 - res / safe, 0.0)


def knn_regscores(a: np.ndarray, b: np.ndarray, w: np.ndarray | None = None, k: int = 25) -> np.ndarray:
    """R² of a k-nearest-neighbour regression of each output of the new CV ``b`` on the old
    CV ``a``: how far ``a`` determines ``b`` by *any* smooth function, not only an affine one.

    ``a`` is standardised per column; the neighbours are looked up among the even frames and
    the R² is scored on the odd ones (weighted by ``w`` when given), so a frame never predicts
    itself. Two learned CVs that embed the same coordinates differently (rotated, folded,
    stretched; a linear :func:`regscores` reads them as different) score near 1 here; an
    output that ``a`` does not determine scores near 0. An output that does not vary scores 0.
    """
    from scipy.spatial import cKDTree
    a, b, w = _as_columns(a, b, w)
    sd = a.std(0)
    a = (a - a.mean(0)) / np.where(sd > 0, sd, 1.0)
    fit = np.arange(len(a)) % 2 == 0
    test = ~fit
    _, nb = cKDTree(a[fit]).query(a[test], k=min(k, int(fit.sum())))
    nb = nb.reshape(int(test.sum()), -1)
    return _weighted_r2(b[test], b[fit][nb].mean(1), w[test])


#: the regression scores ``convergence.score`` chooses from: the paper's linear one, or k-NN
SCORES = {"linear": regscores, "knn": knn_regscores}


def regscore(a: np.ndarray, b: np.ndarray, w: np.ndarray | None = None, method: str = "linear") -> float:
    """The regression score of the new CV ``b`` on the old one ``a``: the weakest output's R²
    (:func:`regscores`, or :func:`knn_regscores` with ``method="knn"``).

    Pooling the residuals of all outputs would let a well-explained output of large variance
    hide one that is not explained at all (scores [1.00, 0.001] pool to 0.99 when the first
    output varies 1000 times more); the stop rule asks that every output be explained.
    """
    return float(np.min(SCORES[method](a, b, w)))


def pairwise_regscores(cvs: list[np.ndarray], method: str = "linear") -> np.ndarray:
    """regscore (weakest output) for every ordered pair of CVs (they are not symmetric)."""
    return np.array([regscore(a, b, method=method) for a, b in itertools.permutations(cvs, 2)])


def bootstrap_threshold(train_fn, x: np.ndarray, w: np.ndarray, repeats: int, fraction: float,
                        quantile: float, rng: np.random.Generator, map_fn=map,
                        eval_x: np.ndarray | None = None, method: str = "linear") -> tuple[float, np.ndarray]:
    """Threshold = ``quantile`` of the pairwise regscores of ``repeats`` models trained on
    resamples (``fraction`` of the frames, drawn without replacement, kept in time order).

    ``train_fn(x_sub, w_sub, seed)`` returns a function features → CV. ``map_fn`` runs the
    trainings (e.g. a process pool's ``map``; the resamples and seeds do not depend on it).
    Returns ``(threshold, scores)``; the CVs are compared on all frames ``x``, or on
    ``eval_x`` when given (the frames on which the loop compares successive CVs), by the
    regression score ``method`` (:data:`SCORES`).
    """
    n = len(x)
    m = max(2, int(round(fraction * n)))
    jobs = []
    for _ in range(repeats):
        idx = np.sort(rng.choice(n, size=m, replace=False))
        jobs.append((x[idx], w[idx], int(rng.integers(2**31))))
    encoders = list(map_fn(train_fn, *zip(*jobs)))
    cvs = [enc(x if eval_x is None else eval_x) for enc in encoders]
    scores = pairwise_regscores(cvs, method)
    return float(np.quantile(scores, quantile)), scores
