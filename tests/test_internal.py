"""Internal coordinates (issues 20, 21): Cartesian → internal → Cartesian round trip, the
log-Jacobian against autograd, torsions against MDTraj and across ±π."""
import mdtraj as md
import numpy as np
import pytest
import torch

from cvflow.internal import ZMatrix, _torsion
from conftest import build_ala2


@pytest.fixture(scope="module")
def ala2():
    bundle = build_ala2()
    return bundle, ZMatrix.from_topology(bundle.mdtraj_topology())


def _kabsch_rmsd_max(a, b):
    """Largest atom deviation after the optimal rigid superposition of a onto b."""
    a0, b0 = a - a.mean(0), b - b.mean(0)
    u, _, vt = np.linalg.svd(a0.T @ b0)
    d = np.sign(np.linalg.det(u @ vt))
    r = u @ np.diag([1, 1, d]) @ vt
    return np.abs(a0 @ r - b0).max()


def test_zmatrix_covers_every_atom_once(ala2):
    bundle, zm = ala2
    placed = list(zm.first) + list(zm.rows[:, 0])
    assert sorted(placed) == list(range(bundle.n_atoms))
    pos = {int(a): p for p, a in enumerate(zm.order)}
    for i, j, k, l in zm.rows:  # each atom is placed from three atoms placed before it
        assert len({i, j, k, l}) == 4 and max(pos[j], pos[k], pos[l]) < pos[i]
    assert zm.n_internal == 3 * bundle.n_atoms - 6


def test_round_trip_to_1e5_nm(ala2, fixed_rng):
    """20 perturbed alanine-dipeptide structures (0.02 nm noise, random rotations and
    shifts): back from bonds, angles and torsions to the same shape within 1e-5 nm (measured
    about 1e-15 in float64) and the same internal coordinates."""
    bundle, zm = ala2
    from scipy.spatial.transform import Rotation
    rot = Rotation.random(20, random_state=1).as_matrix()
    x = np.einsum("nij,naj->nai", rot, bundle.positions + 0.02 * fixed_rng.normal(size=(20,) + bundle.positions.shape))
    x += fixed_rng.normal(size=(20, 1, 3))
    xt = torch.tensor(x)
    ic = zm.to_internal(xt)
    back, _ = zm.to_cartesian(*ic)
    worst = max(_kabsch_rmsd_max(back[n].numpy(), x[n]) for n in range(20))
    print(f"round trip: largest deviation {worst:.2e} nm")
    assert worst < 1e-5
    for a, b in zip(zm.to_internal(back), ic):
        assert torch.allclose(a, b, atol=1e-9)
    assert torch.all(ic[2] > -np.pi) and torch.all(ic[2] <= np.pi)


def test_log_jacobian_matches_autograd(ala2, fixed_rng):
    """log|det J| against autograd (60 × 60 for alanine dipeptide), on 3 structures. The
    Cartesian volume factors as d³t · dR · r₁² y₂ · ds: ds over the 3N − 6 canonical-frame
    ("shape") coordinates, whose Jacobian autograd gives, and r₁² y₂ (y₂ = r₂ sin a₂) from the
    rotations, which to_cartesian's log|det J| includes."""
    bundle, zm = ala2
    x = torch.tensor(bundle.positions[None] + 0.02 * fixed_rng.normal(size=(3,) + bundle.positions.shape))
    b, a, t = zm.to_internal(x)
    nb, na = b.shape[1], a.shape[1]
    for n in range(3):
        flat = torch.cat([b[n], a[n], t[n]])

        def f(v):
            xx, _ = zm.to_cartesian(v[None, :nb], v[None, nb:nb + na], v[None, nb + na:])
            return zm.shape_coordinates(xx)[0]
        jac = torch.autograd.functional.jacobian(f, flat)
        sign, logabs = torch.linalg.slogdet(jac)
        _, logdet = zm.to_cartesian(b[n:n + 1], a[n:n + 1], t[n:n + 1])
        assert jac.shape == (zm.n_internal, zm.n_internal) and sign != 0
        rotations = 2 * torch.log(b[n, 0]) + torch.log(b[n, 1] * torch.sin(a[n, 0]))
        assert (logabs + rotations).item() == pytest.approx(logdet.item(), abs=1e-8)


def test_torsions_agree_with_mdtraj_and_wrap(ala2):
    bundle, zm = ala2
    t = md.Trajectory(bundle.positions[None].astype(np.float32), bundle.mdtraj_topology())
    for fn in (md.compute_phi, md.compute_psi):
        quad, ang = fn(t)
        mine = _torsion(*(torch.tensor(bundle.positions[None, q]) for q in quad[0]))
        assert mine.item() == pytest.approx(float(ang[0, 0]), abs=1e-5)
    # a torsion just below π and just above −π give nearly the same atom position
    b, a, tor = zm.to_internal(torch.tensor(bundle.positions[None]))
    t1, t2 = tor.clone(), tor.clone()
    t1[0, 0], t2[0, 0] = np.pi - 1e-7, -np.pi + 1e-7
    x1, _ = zm.to_cartesian(b, a, t1)
    x2, _ = zm.to_cartesian(b, a, t2)
    assert (x1 - x2).abs().max() < 1e-6


def test_siblings_are_placed_relative_to_each_other(ala2):
    """An atom whose bond partner j already holds another placed atom takes that sibling as
    its torsion reference: the torsion is then the nearly fixed rotation between the two
    about j–k (about ±120° for a methyl's hydrogens) rather than a second free torsion."""
    bundle, zm = ala2
    top = bundle.mdtraj_topology()
    nbr = {a.index: set() for a in top.atoms}
    for a, b in top.bonds:
        nbr[a.index].add(b.index)
        nbr[b.index].add(a.index)
    pos = {int(a): p for p, a in enumerate(zm.order)}
    x = torch.as_tensor(bundle.positions[None])
    _, _, tors = zm.to_internal(x)
    n_sib = 0
    for c, (i, j, k, l) in enumerate(zm.rows):
        sibs = [n for n in nbr[int(j)] if n not in (i, k) and pos[n] < pos[int(i)]]
        if sibs:
            n_sib += 1
            assert int(l) in sibs
            assert 60 < abs(np.degrees(float(tors[0, c]))) <= 180  # a rotation about j–k (180: sp2), not ~0
    assert n_sib >= 8  # the methyl hydrogens (3 x 2) and the carbonyl/amide partners
