"""The numba fast path and the exported TorchScript CV give the same numbers."""
import numpy as np
import pytest
import torch

from cvflow.fastcv import FastAlignedMLP, TorchCV, horn_rotation, load_cv
from conftest import random_neural_cv


def test_horn_rotation_matches_svd_kabsch():
    """The QCP-style rotation equals the SVD Kabsch rotation (with the reflection fix) to 1e-9,
    on random point sets, on noisy rotated copies of a structure, and on a planar one."""
    from scipy.spatial.transform import Rotation
    rng = np.random.default_rng(1)
    base = rng.normal(size=(10, 3))
    cases = [rng.normal(size=(10, 3)) for _ in range(20)]
    cases += [base @ Rotation.random(random_state=k).as_matrix().T + 0.05 * rng.normal(size=(10, 3))
              for k in range(20)]
    planar = base.copy()
    planar[:, 2] = 0.0
    cases.append(planar @ Rotation.random(random_state=99).as_matrix().T)
    for y in cases:
        y = y - y.mean(0)
        ref = base - base.mean(0)
        if y is cases[-1]:
            ref = planar - planar.mean(0)
        rot = np.zeros((3, 3))
        horn_rotation(y, ref, rot, np.zeros((4, 4)))
        u, _, vt = np.linalg.svd(y.T @ ref)
        d = np.sign(np.linalg.det(u @ vt))
        r_svd = (u @ np.diag([1, 1, d]) @ vt).T  # rot @ y_i ≈ ref_i
        assert np.allclose(rot, r_svd, atol=1e-9)
        assert np.allclose(rot @ rot.T, np.eye(3), atol=1e-12) and np.linalg.det(rot) > 0


@pytest.mark.parametrize("last", ["tanh", "identity"])  # model.bottleneck_activation
def test_fast_path_matches_torchscript(tmp_path, ala2_bundle, last):
    """Values and gradients of the numba path equal TorchScript autograd to 1e-6 on
    perturbed and rotated alanine-dipeptide frames."""
    path = random_neural_cv(tmp_path / "cv.pt", ala2_bundle, last=last)
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


class _State:
    """What NativeEABF reads from an OpenMM State: the step count and the positions."""

    def __init__(self, step, pos):
        self.step, self.pos = step, pos

    def getStepCount(self):
        return self.step

    def _getVectorAsNumpy(self, kind, out):
        out[...] = self.pos


@pytest.mark.parametrize("kind", ["aligned-mlp", "torsions"])
def test_fused_eabf_step_matches_the_two_call_path(tmp_path, ala2_bundle, kind, monkeypatch):
    """The fused CV + eABF kernel on the arena gives the forces, λ, statistics and CV time series
    of the reference path (TorchScript autograd in float64, then the eABF step), to 1e-6,
    over 300 steps that cross noise and ramp-in boundaries."""
    from cvflow.bias import native
    from cvflow.config import GridDim
    import mdtraj as md
    from cvflow.cvs import ramachandran_quads, save_torsion_cv
    from cvflow.fes import Grid
    monkeypatch.setattr(native, "_NOISE_BLOCK", 64)  # 300 steps cross four noise blocks
    if kind == "aligned-mlp":
        path = random_neural_cv(tmp_path / "cv.pt", ala2_bundle)
        grid = Grid.from_dims([GridDim(min=-1, max=1, bins=20)] * 2)
    else:
        path = save_torsion_cv(ramachandran_quads(md.Topology.from_openmm(ala2_bundle.topology)), ala2_bundle.n_atoms, tmp_path / "cv.pt")
        grid = Grid.from_dims([GridDim(min=-np.pi, max=np.pi, bins=24, periodic=True)] * 2)
    runs = []
    for fast in (True, False):
        cv = load_cv(path, ala2_bundle.n_atoms, fast=fast)
        bias = native.NativeEABF(cv, grid, kappa=800.0, mass=5.0, friction=2.0, temperature=300.0,
                                 timestep=0.002, fullsamples=50, seed=4, report_interval=7)
        assert (bias._kernel is not native.step_external) == fast
        rng = np.random.default_rng(9)
        out = []
        for step in range(300):
            frame = ala2_bundle.positions + 0.01 * rng.standard_normal(ala2_bundle.positions.shape)
            e, f = bias(_State(step, frame[bias.cv.particles] if fast else frame))
            f = np.asarray(f)
            full = np.zeros((ala2_bundle.n_atoms, 3))
            full[bias.cv.particles] = f
            out.append((e, full, bias.lam.copy()))
        runs.append((out, bias))
    (fa, bf), (sl, bs) = runs
    for (e1, f1, l1), (e2, f2, l2) in zip(fa, sl):
        assert abs(e1 - e2) < 1e-6 and np.allclose(f1, f2, atol=1e-6, rtol=0) and np.allclose(l1, l2, atol=1e-6)
    assert np.array_equal(bf.abf_count, bs.abf_count) and np.array_equal(bf.czar_count, bs.czar_count)
    assert np.allclose(bf.abf_sum, bs.abf_sum, atol=1e-4) and np.allclose(bf.czar_sum, bs.czar_sum, atol=1e-6)
    assert np.allclose(bf.take_colvar(), bs.take_colvar(), atol=1e-6)
    assert bf.noise_counter == bs.noise_counter == 300
