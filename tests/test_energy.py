"""The OpenMM energy bridge of the generative models (issues 20, 21): energies and forces
of batches against the toy's formula, finite differences and single evaluations; non-finite
inputs handled without NaN gradients."""
import numpy as np
import pytest
import torch

from cvflow.config import SystemConfig
from cvflow.energy import OpenMMEnergy, energy, regularised
from cvflow.system import build_system
from conftest import build_ala2

DOUBLE_WELL = "x^4 - 6*x^2 + x + 0.5*y^2"


def _u(x, y):
    return x ** 4 - 6 * x ** 2 + x + 0.5 * y ** 2


def test_toy_energy_and_gradient_match_the_formula(fixed_rng):
    bridge = OpenMMEnergy(build_system(SystemConfig(potential=DOUBLE_WELL, mass="1 amu")))
    xy = torch.tensor(fixed_rng.uniform(-3, 3, size=(64, 2)), requires_grad=True)
    e = energy(xy, bridge)
    x, y = xy.detach().numpy().T
    assert np.allclose(e.detach().numpy(), _u(x, y), rtol=1e-12, atol=1e-10)
    e.sum().backward()
    grad = np.column_stack([4 * x ** 3 - 12 * x + 1, y])
    assert np.allclose(xy.grad.numpy(), grad, rtol=1e-10, atol=1e-10)
    assert bridge.evaluations == 64 and bridge.nonfinite == 0


def test_molecule_forces_are_minus_the_gradient_and_batches_match_singles(fixed_rng):
    """Alanine dipeptide: the gradient of U through the bridge against central differences
    (h = 1e-5 nm, on 6 random coordinates of 3 perturbed structures); a batch equals the
    frames one at a time."""
    bundle = build_ala2()
    bridge = OpenMMEnergy(bundle)
    x = bundle.positions[None] + 0.01 * fixed_rng.normal(size=(3,) + bundle.positions.shape)
    xt = torch.tensor(x, requires_grad=True)
    e = energy(xt, bridge)
    e.sum().backward()
    h = 1e-5
    for k in range(3):
        for a, r in zip(fixed_rng.integers(0, bundle.n_atoms, 6), fixed_rng.integers(0, 3, 6)):
            xp, xm = x[k].copy(), x[k].copy()
            xp[a, r] += h
            xm[a, r] -= h
            ep, _ = bridge(xp[None])
            em, _ = bridge(xm[None])
            fd = (ep[0] - em[0]) / (2 * h)
            assert xt.grad[k, a, r].item() == pytest.approx(fd, rel=1e-4, abs=1e-3)
    singles = np.concatenate([bridge(x[k:k + 1])[0] for k in range(3)])
    assert np.array_equal(singles, e.detach().numpy())


def test_non_finite_energies_have_no_nan_gradient():
    """NaN positions and two atoms on top of each other give +inf (counted); the regularised
    energy is finite everywhere and its gradient has no NaN."""
    bundle = build_ala2()
    bridge = OpenMMEnergy(bundle)
    x = np.repeat(bundle.positions[None], 3, axis=0)
    x[1, 0] = np.nan
    x[2, 1] = x[2, 0]  # an overlap: a singular Coulomb term
    xt = torch.tensor(x, requires_grad=True)
    e = energy(xt, bridge)
    assert np.isfinite(e[0].item()) and not np.isfinite(e[1].item())
    assert bridge.nonfinite >= 1
    r = regularised(e, high=1e3)
    assert torch.isfinite(r).all()
    r.sum().backward()
    assert torch.isfinite(xt.grad).all() and torch.count_nonzero(xt.grad[1]) == 0


def test_regularised_energy_is_smooth_at_the_cut():
    e = torch.tensor([999.0, 1000.0 - 1e-9, 1000.0 + 1e-9, 1001.0, 1e9, float("inf"), float("nan")],
                     dtype=torch.float64, requires_grad=True)
    r = regularised(e, high=1000.0)
    assert r[0].item() == 999.0 and r[1].item() == pytest.approx(r[2].item(), abs=1e-8)
    assert r[3].item() == pytest.approx(1000.0 + np.log(2.0))
    assert r[4].item() < 1000.0 + 21 and r[5].item() == r[6].item() == pytest.approx(1000.0 + np.log1p(1e10))
    r.sum().backward()
    g = e.grad.numpy()
    assert g[0] == 1.0 and g[1] == pytest.approx(g[2], abs=1e-6) and g[3] == pytest.approx(0.5)
    assert g[5] == 0.0 and g[6] == 0.0
