"""The run's reweighting factor as a function of each stage's CV (cvflow.stage_weights):
samples of the biased ensemble, resampled by it, follow the unbiased one; the binned factor
gives each bin of the frames exactly their weight; stages pool as a mixture."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cvflow import stage_weights as sw

CV = Path("x.pt")   # the tests' CV is x itself: xi_of ignores the path


def biased_frames(rng, n):
    """p = N(0, 1) biased by exp(−x²/4): p_s = N(0, 2/3); each frame's weight is the exact
    factor exp(x²/4) times mean-1 noise (as the extended weights carry λ's)."""
    x = rng.normal(0.0, np.sqrt(2 / 3), n)
    return x, np.exp(x ** 2 / 4) * rng.lognormal(-0.5 * 0.3 ** 2, 0.3, n)


def resampled(stages, x, rng):
    log_w, unreached = sw.log_factor(stages, lambda cv: x[:, None], len(x))
    return x[sw.systematic_resample(log_w, len(x), rng)], unreached


def test_resampled_biased_samples_follow_the_unbiased_density():
    rng = np.random.default_rng(1)
    x, w = biased_frames(rng, 40_000)
    stage = sw.stage_factor(CV, x[:, None], w, 1.0)
    fresh = rng.normal(0.0, np.sqrt(2 / 3), 40_000)   # the model's samples of the biased ensemble
    y, unreached = resampled([stage], fresh, rng)
    # p: variance 1 and P(x > 1.5) = 0.0668; the biased samples themselves: 2/3 and 0.0334.
    # With ~20,000 effective samples the estimates' errors are about 0.01 and 0.002; the
    # 36-bin factor adds a bias of the same order
    assert y.var() == pytest.approx(1.0, abs=0.05) and fresh.var() == pytest.approx(2 / 3, abs=0.02)
    assert (y > 1.5).mean() == pytest.approx(0.0668, abs=0.008)
    assert unreached.mean() < 0.001


def test_tempered_weights_split_the_factor_between_frames_and_samples():
    """weight_exponent α = 0.5: the frames weighted by W^α follow p_s W^α = N(0, 2/(3 − α))
    = N(0, 0.8); samples of that, resampled by the rest of the factor, follow p = N(0, 1)."""
    rng = np.random.default_rng(5)
    x, w = biased_frames(rng, 40_000)
    stage = sw.stage_factor(CV, x[:, None], w, 1.0)
    t = sw.tempered_weights(stage, x[:, None], len(x), 0.5)
    assert t.mean() == pytest.approx(1.0) and 0 < stage.norm < 1.0   # Jensen: W has mean 1
    assert np.average(x ** 2, weights=t) == pytest.approx(0.8, abs=0.03)
    fresh = rng.normal(0.0, np.sqrt(0.8), 40_000)
    log_w, _ = sw.log_factor([stage], lambda cv: fresh[:, None], len(fresh), alpha=0.5)
    y = fresh[sw.systematic_resample(log_w, len(fresh), rng)]
    assert y.var() == pytest.approx(1.0, abs=0.05)
    assert np.all(sw.tempered_weights(stage, x[:, None], len(x), 0.0) == 1.0) and stage.norm == 1.0


def test_the_binned_factor_gives_each_bin_its_frames_weight():
    """On the frames themselves, p/p_pool summed over a bin is the bin's share of the weight."""
    rng = np.random.default_rng(2)
    x, w = biased_frames(rng, 5000)
    stage = sw.stage_factor(CV, x[:, None], w, 1.0)
    log_w, _ = sw.log_factor([stage], lambda cv: x[:, None], len(x))
    flat, inside = sw._flat_bins(stage.grid, x[:, None])
    assert inside.all()
    n = int(np.prod(stage.grid.bins))
    got = np.bincount(flat, weights=np.exp(log_w), minlength=n)
    want = np.bincount(flat, weights=w / w.mean(), minlength=n)
    assert np.allclose(got, want)


def test_stages_pool_as_a_mixture_and_unreached_bins_drop():
    rng = np.random.default_rng(3)
    xb, wb = biased_frames(rng, 20_000)
    unbiased = sw.stage_factor(None, None, np.ones(20_000), 0.5)
    biased = sw.stage_factor(CV, xb[:, None], wb, 0.5)
    # the pool: half from p, half from p_s
    pool = np.concatenate([rng.normal(0.0, 1.0, 20_000), rng.normal(0.0, np.sqrt(2 / 3), 20_000)])
    y, _ = resampled([unbiased, biased], pool, rng)
    assert y.var() == pytest.approx(1.0, abs=0.04) and pool.var() == pytest.approx(5 / 6, abs=0.02)
    # far outside every frame: no biased stage reached it (dropped); an unbiased stage has
    # r = 1 everywhere, so in the pool it stays
    far = np.array([0.0, 25.0])
    alone = sw.log_factor([sw.stage_factor(CV, xb[:, None], wb, 1.0)], lambda cv: far[:, None], 2)
    assert list(alone[1]) == [False, True] and np.isneginf(alone[0][1])
    pooled = sw.log_factor([unbiased, biased], lambda cv: far[:, None], 2)
    assert not pooled[1].any() and pooled[0][1] == pytest.approx(np.log(2.0))


def test_the_factors_round_trip_through_the_directory(tmp_path):
    rng = np.random.default_rng(4)
    x, w = biased_frames(rng, 2000)
    cv = tmp_path / "cv.pt"
    cv.write_bytes(b"a CV file")
    stages = [sw.stage_factor(None, None, np.ones(10), 0.25), sw.stage_factor(cv, x[:, None], w, 0.75)]
    sw.save(stages, tmp_path)
    back = sw.load(tmp_path)
    assert back[0].cv is None and back[0].share == 0.25
    assert back[1].cv.read_bytes() == b"a CV file" and back[1].grid.same_as(stages[1].grid)
    assert np.array_equal(back[1].ratio, stages[1].ratio) and back[1].share == 0.75
