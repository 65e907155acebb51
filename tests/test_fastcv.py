"""The numba fast path and the exported TorchScript CV give the same numbers."""
import numpy as np
import pytest
import torch

from cvflow.fastcv import FastAlignedMLP, TorchCV, jacobi_eigh4, load_cv
from conftest import random_neural_cv


def test_jacobi_eigh4_matches_lapack():
    rng = np.random.default_rng(1)
    for _ in range(20):
        a = rng.normal(size=(4, 4))
        a = a + a.T
        w, v = jacobi_eigh4(a)
        w_ref = np.linalg.eigvalsh(a)
        assert np.allclose(w, w_ref, atol=1e-12)
        assert np.allclose(a @ v, v * w, atol=1e-10)


def test_fast_path_matches_torchscript(tmp_path, ala2_bundle):
    """Values and gradients of the numba path equal TorchScript autograd to 1e-6 on
    perturbed and rotated alanine-dipeptide frames."""
    path = random_neural_cv(tmp_path / "cv.pt", ala2_bundle)
    fast = load_cv(path, ala2_bundle.n_atoms)
    slow = load_cv(path, ala2_bundle.n_atoms, fast=False)
    assert isinstance(fast, FastAlignedMLP) and isinstance(slow, TorchCV)
    rng = np.random.default_rng(0)
    from scipy.spatial.transform import Rotation
    for k in range(20):
        frame = ala2_bundle.positions + 0.02 * rng.standard_normal(ala2_bundle.positions.shape)
        frame = frame @ Rotation.random(random_state=k).as_matrix().T + rng.normal(size=3)
        v_fast, j_fast = fast(frame[fast.particles])
        v_slow, j_slow = slow(frame)
        assert np.allclose(v_fast, v_slow, atol=1e-6, rtol=0)
        assert np.allclose(j_fast, j_slow[:, fast.particles], atol=1e-6, rtol=0)
        others = np.setdiff1d(np.arange(ala2_bundle.n_atoms), fast.particles)
        assert np.all(j_slow[:, others] == 0)


def test_cv_is_rotation_and_translation_invariant(tmp_path, ala2_bundle):
    path = random_neural_cv(tmp_path / "cv.pt", ala2_bundle, seed=3)
    m = torch.jit.load(str(path))
    x = torch.as_tensor(ala2_bundle.positions)
    from scipy.spatial.transform import Rotation
    r = torch.as_tensor(Rotation.random(random_state=4).as_matrix())
    assert torch.allclose(m(x), m(x @ r.T + 0.7), atol=1e-10)


def test_export_refuses_a_mismatching_file(tmp_path, ala2_bundle, monkeypatch):
    """export_cv compares the reloaded file with the in-memory model."""
    import cvflow.export as ex
    from cvflow.features import AlignedFeatures
    from cvflow.models.autoencoder import MLP
    idx = ala2_bundle.feature_atoms
    feats = AlignedFeatures(idx, ala2_bundle.positions[idx], align=True)
    enc = MLP([3 * len(idx), 5, 1], ["tanh", "tanh"])
    frames = ala2_bundle.positions[None] + 0.01 * np.random.default_rng(0).standard_normal((5, 22, 3))
    ex.export_cv(feats, np.zeros(24), np.ones(24), enc, 22, tmp_path / "ok.pt", check_positions=frames)
    real_load = torch.jit.load

    def corrupted(path, *a, **k):
        m = real_load(path, *a, **k)
        with torch.no_grad():
            m.mean.add_(1.0)
        return m
    monkeypatch.setattr(torch.jit, "load", corrupted)
    with pytest.raises(RuntimeError, match="does not match"):
        ex.export_cv(feats, np.zeros(24), np.ones(24), enc, 22, tmp_path / "bad.pt", check_positions=frames)
