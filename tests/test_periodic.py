"""Periodic CVs: torsions (φ, ψ) and angles, on periodic grids."""
import subprocess
import sys

import numpy as np
import pytest
import torch

from cvflow.config import GridDim
from cvflow.fes import Grid, fes_on_frames, integrate_1d, integrate_2d, read_fes
from cvflow.sampler import run_segment
from cvflow.system import build_system
from conftest import ALA2_PDB, BETA_ES, ROOT, es_exact_along, rms_kT


def test_grid_reads_multiples_of_pi():
    d = GridDim(min="-pi", max="2*pi", bins=10, periodic=True)
    assert d.min == pytest.approx(-np.pi) and d.max == pytest.approx(2 * np.pi)
    assert Grid.from_dims([d]).periods[0] == pytest.approx(3 * np.pi)
    with pytest.raises(ValueError):
        GridDim(min="-p1", max="pi", bins=10)


def test_periodic_integration_1d_and_2d():
    """Gradients of known periodic functions integrate back to them (to the grid's O(h²))."""
    n = 72
    h = 2 * np.pi / n
    t = -np.pi + (np.arange(n) + 0.5) * h
    f = np.cos(t) + 0.5 * np.sin(2 * t)
    g = -np.sin(t) + np.cos(2 * t)
    # a constant offset on the gradient (noise that breaks periodicity) is removed
    got = integrate_1d(g + 0.01, h, np.ones(n, bool), periodic=True)
    assert np.abs((got - got.mean()) - (f - f.mean())).max() < 2e-3
    # a gap in the sampling: the run that wraps around the boundary is integrated as one
    mask = np.ones(n, bool)
    mask[30:34] = False
    got = integrate_1d(g, h, mask, periodic=True)
    ok = np.isfinite(got)
    assert ok.sum() == n - 4
    d = got[ok] - f[ok]
    assert np.abs(d - d.mean()).max() < 5e-3
    # 2-D, periodic in both
    T, P = np.meshgrid(t, t, indexing="ij")
    F = np.cos(T) * np.sin(P) + np.cos(P - T)
    G = np.stack([-np.sin(T) * np.sin(P) + np.sin(P - T), np.cos(T) * np.cos(P) - np.sin(P - T)], -1)
    got = integrate_2d(G, np.array([h, h]), np.ones((n, n), bool), periodic=(True, True))
    assert np.abs((got - got.mean()) - (F - F.mean())).max() < 5e-3


def test_periodic_interpolation_wraps():
    n = 36
    c = -np.pi + (np.arange(n) + 0.5) * 2 * np.pi / n
    f = np.cos(c)
    x = np.array([np.pi - 1e-9, -np.pi + 1e-9, 3 * np.pi - 0.3, 0.0])
    assert np.allclose(fes_on_frames(c[:, None], f, x, periods=[2 * np.pi]), np.cos(x), atol=2e-2)


def test_torsion_cv_fast_path_matches_torchscript(tmp_path):
    """The numba torsions match the TorchScript file (values, autograd gradients) and MDTraj."""
    import mdtraj as md
    from cvflow.cvs import FastTorsions, ramachandran_quads, save_torsion_cv
    from cvflow.fastcv import TorchCV, load_cv
    t = md.load(str(ALA2_PDB))
    path = save_torsion_cv(ramachandran_quads(t.topology), t.n_atoms, tmp_path / "phipsi.pt")
    fast, slow = load_cv(path, 22), load_cv(path, 22, fast=False)
    assert isinstance(fast, FastTorsions) and isinstance(slow, TorchCV)
    rng = np.random.default_rng(3)
    for _ in range(20):
        x = t.xyz[0].astype(float) + rng.normal(0, 0.05, (22, 3))
        v1, j1 = fast(x[fast.particles])
        v2, j2 = slow(x)
        phi = md.compute_phi(md.Trajectory(x[None], t.topology))[1][0, 0]
        psi = md.compute_psi(md.Trajectory(x[None], t.topology))[1][0, 0]
        assert np.allclose(v1, [phi, psi], atol=1e-5)
        assert np.allclose(v1, v2, atol=1e-10)
        assert np.allclose(j1, j2[:, fast.particles], atol=1e-10)


class _Angle(torch.nn.Module):
    def forward(self, pos):
        return torch.atan2(pos[0, 1:2] - 0.5, pos[0, 0:1])


def _angle_np(xy):
    return np.arctan2(xy[:, 1] - 0.5, xy[:, 0])


def test_czar_periodic_angle_on_entropic_switch_matches_exact(tmp_path, es_config):
    """ξ = atan2(y − 0.5, x), a periodic CV on the entropic switch, on a periodic grid.

    The exact F(ξ) is the Boltzmann-weighted histogram of ξ over a fine (x, y) grid. The
    tolerance is the issue's 0.3 kT RMS where F ≤ 5 kT.
    """
    cv = tmp_path / "angle.pt"
    torch.jit.script(_Angle()).save(str(cv))
    cfg = es_config.model_copy(deep=True)
    bundle = build_system(cfg.system)
    grid = Grid.from_dims([GridDim(min="-pi", max="pi", bins=36, periodic=True)])
    res = run_segment(cfg, bundle, tmp_path / "run", 150_000, seed=3, cv_path=cv, grid=grid)
    c, f, n = read_fes(tmp_path / "run" / "fes.csv")
    edges = np.linspace(-np.pi, np.pi, 37)
    exact = es_exact_along(_angle_np, edges)
    err, nbins = rms_kT(f, exact, BETA_ES)
    from cvflow.artifacts import read_csv
    lam = read_csv(tmp_path / "run" / "colvar.csv")[1][:, -1]
    print(f"periodic CZAR (angle): RMS error {err:.3f} kT over {nbins} bins after {res.steps} steps")
    assert np.all((lam >= -np.pi) & (lam < np.pi))  # λ lives on the circle
    assert nbins >= 12  # the exact F has 14 bins below 5 kT
    assert err < 0.3


def _ala2_phipsi_fes(tmp_path, steps):
    cv = tmp_path / "phipsi.pt"
    cfg = ROOT / "configs" / "ala2-vacuum.yaml"
    subprocess.run([sys.executable, "-m", "cvflow.cli", "make-cv", "torsions", str(ALA2_PDB), "--phi-psi",
                    "-o", str(cv)], check=True)
    out = tmp_path / "run"
    subprocess.run([sys.executable, "-m", "cvflow.cli", "sample", str(cfg), "--cv", str(cv), "--out", str(out),
                    "--steps", str(steps), "--grid=-pi,pi,36,periodic", "--grid=-pi,pi,36,periodic", "-q"],
                   check=True)
    c, f, n = read_fes(out / "fes.csv")
    phi, psi = np.degrees(c[:, 0]), np.degrees(c[:, 1])

    def basin_min(phi_lo, phi_hi, psi_lo, psi_hi):
        m = (phi >= phi_lo) & (phi <= phi_hi) & (psi >= psi_lo) & (psi <= psi_hi) & np.isfinite(f)
        i = np.argmin(np.where(m, f, np.inf))
        return phi[i], psi[i], f[i], i

    eq = basin_min(-180, -30, 0, 180)
    ax = basin_min(30, 130, -150, 0)
    print(f"{steps} steps: C7eq at {eq[:2]}, C7ax at {ax[:2]}, ΔF = {ax[2] - eq[2]:.2f} kJ/mol")
    return f.reshape(36, 36), eq, ax


def test_ala2_phipsi_free_energy_shows_c7eq_and_c7ax(tmp_path):
    """eABF on ξ = (φ, ψ) of alanine dipeptide in vacuum, through the CLI, on a periodic grid.

    The CZAR free energy has its global minimum in the C7eq basin and a separate local
    minimum in the C7ax basin (φ > 0), higher than C7eq. The size of the gap converges
    slowly (C7ax is visited rarely): 2.7 kJ/mol after 300k steps, 6.8 after 3M; the slow
    test below checks it.
    """
    F, eq, ax = _ala2_phipsi_fes(tmp_path, 400_000)
    assert eq[2] == pytest.approx(np.nanmin(F))
    assert -110 <= eq[0] <= -50 and 20 <= eq[1] <= 110
    assert 40 <= ax[0] <= 100 and -100 <= ax[1] <= -10
    assert 0.0 < ax[2] - eq[2] < 16.0
    # C7ax is a basin: every sampled neighbour on the periodic grid lies higher
    i, j = divmod(ax[3], 36)
    neighbours = [F[(i + di) % 36, (j + dj) % 36] for di in (-1, 0, 1) for dj in (-1, 0, 1) if di or dj]
    assert all(v > ax[2] for v in neighbours if np.isfinite(v))


@pytest.mark.slow
def test_ala2_phipsi_c7ax_gap(tmp_path):
    """3M steps (6 ns): ΔF = F(C7ax) − F(C7eq) between the minima within 4–12 kJ/mol.

    Amber force fields in vacuum put C7ax roughly 6–10 kJ/mol above C7eq; measured here
    6.8 kJ/mol between the minima (8.9 between the basins' integrated populations).
    """
    F, eq, ax = _ala2_phipsi_fes(tmp_path, 3_000_000)
    assert 4.0 <= ax[2] - eq[2] <= 12.0
