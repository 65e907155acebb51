"""Hand-made CVs written as TorchScript files: torsion angles (φ, ψ and any others).

A torsion CV maps the positions of all atoms, (n_atoms, 3) in nm, to the dihedral
angles (radians, in (−π, π]) of the given atom quadruples, with MDTraj's and PLUMED's
sign convention. The file is the definition; :class:`FastTorsions` computes the same
values and gradients in numba, and a test holds the two to 1e-10.
"""
# no `from __future__ import annotations`: TorchScript reads the class annotations
from pathlib import Path
from typing import Sequence

import numba
import numpy as np
import torch
from torch import Tensor, nn

from .artifacts import atomic_path
from .arena import CV_SLOTS, JAC, POS, XI, f1, f2, f3, i2
from .fastcv import CVEvaluator, _check_shape

TORSIONS_FORMAT = "torsions/1"


def _dihedrals(pos: Tensor, q: Tensor) -> Tensor:
    b1 = pos[q[:, 1]] - pos[q[:, 0]]
    b2 = pos[q[:, 2]] - pos[q[:, 1]]
    b3 = pos[q[:, 3]] - pos[q[:, 2]]
    c1 = torch.linalg.cross(b2, b3)
    c2 = torch.linalg.cross(b1, b2)
    y = (b1 * c1).sum(-1) * torch.linalg.norm(b2, dim=-1)
    x = (c1 * c2).sum(-1)
    return torch.atan2(y, x)


class TorsionCV(nn.Module):
    """Dihedral angles of atom quadruples (i, j, k, l), radians."""

    n_atoms: int
    cvflow_format: str

    def __init__(self, quads: Sequence[Sequence[int]], n_atoms: int):
        super().__init__()
        self.register_buffer("quads", torch.as_tensor(np.asarray(quads, dtype=np.int64).reshape(-1, 4)))
        self.n_atoms = int(n_atoms)
        self.cvflow_format = TORSIONS_FORMAT

    def forward(self, pos: Tensor) -> Tensor:
        return _dihedrals(pos, self.quads)


FEATURE_INPUT_FORMAT = "feature-input/1"


class FeatureInputCV(nn.Module):
    """Positions → declared features → a model that takes features (mlcolvar's
    ``to_torchscript``, PLUMED's ``PYTORCH_MODEL`` convention: input (1, n_features)).

    The result has cvflow's CV signature, (n_atoms, 3) nm → 1-D tensor of CV values, so it
    runs on every engine; the wrapped model is kept whole inside the file.
    """

    n_atoms: int
    cvflow_format: str
    model_double: bool

    def __init__(self, model, features, n_atoms: int, model_double: bool):
        super().__init__()
        tors, tmode, pairs, points = [], [], [], []
        order: list[int] = []
        slots = {"torsion": [], "distance": [], "position": []}
        for f in features:
            if f.kind.endswith("torsion"):
                slots["torsion"].append(len(order))
                tors.append(f.atoms)
                tmode.append({"torsion": 0, "sin_torsion": 1, "cos_torsion": 2}[f.kind])
                order.append(-1)
            elif f.kind == "distance":
                slots["distance"].append(len(order))
                pairs.append(f.atoms)
                order.append(-1)
            else:
                for _ in range(3):
                    slots["position"].append(len(order))
                    order.append(-1)
                points.append(f.atoms[0])
        # concatenated layout [torsions, distances, positions (x, y, z each)] → declared order
        pos_in_cat = slots["torsion"] + slots["distance"] + slots["position"]
        perm = [0] * len(pos_in_cat)
        for cat_index, declared in enumerate(pos_in_cat):
            perm[declared] = cat_index
        self.register_buffer("quads", torch.as_tensor(np.asarray(tors, np.int64).reshape(-1, 4)))
        self.register_buffer("tmode", torch.as_tensor(np.asarray(tmode, np.int64).reshape(-1)))
        self.register_buffer("pairs", torch.as_tensor(np.asarray(pairs, np.int64).reshape(-1, 2)))
        self.register_buffer("points", torch.as_tensor(np.asarray(points, np.int64).reshape(-1)))
        self.register_buffer("perm", torch.as_tensor(np.asarray(perm, np.int64)))
        self.model = model
        self.n_atoms = int(n_atoms)
        self.cvflow_format = FEATURE_INPUT_FORMAT
        self.model_double = bool(model_double)

    def features(self, pos: Tensor) -> Tensor:
        phi = _dihedrals(pos, self.quads)
        t = torch.where(self.tmode == 0, phi, torch.where(self.tmode == 1, torch.sin(phi), torch.cos(phi)))
        d = torch.linalg.norm(pos[self.pairs[:, 1]] - pos[self.pairs[:, 0]], dim=-1)
        p = pos[self.points].reshape(-1)
        return torch.cat([t, d, p])[self.perm]

    def forward(self, pos: Tensor) -> Tensor:
        f = self.features(pos).unsqueeze(0)
        f = f.double() if self.model_double else f.float()
        return self.model(f).reshape(-1).to(pos.dtype)


def wrap_feature_cv(model_path, features, n_atoms: int, out_path, key: str = "bias.cv") -> Path:
    """Compose a features-taking TorchScript model with its declared features into one
    cvflow CV file (positions → CV). Errors name the key and what does not fit."""
    from .config import ConfigError, one_line
    model_path, out_path = Path(model_path), Path(out_path)
    try:
        model = torch.jit.load(str(model_path), map_location="cpu").eval()
    except Exception as e:
        raise ConfigError(f"{key}: {model_path} is not a TorchScript file ({one_line(e, 120)})") from None
    for f in features:
        if max(f.atoms) >= n_atoms:
            raise ConfigError(f"bias.cv_features: atom index {max(f.atoms)} in a {f.kind} feature, "
                              f"but the system has {n_atoms} atoms (indices are 0-based)")
    n_in = sum(f.width for f in features)
    last = ""
    for double in (False, True):
        x = torch.zeros(1, n_in, dtype=torch.float64 if double else torch.float32)
        try:
            with torch.no_grad():
                y = model(x)
        except Exception as e:
            last = str(e).strip().splitlines()[-1][:160] if str(e).strip() else type(e).__name__
            continue
        if not isinstance(y, Tensor) or y.numel() not in (1, 2):
            shape = tuple(y.shape) if isinstance(y, Tensor) else type(y).__name__
            raise ConfigError(f"{key}: {model_path.name} returns shape {shape} for {n_in} features; "
                              "a CV must give 1 or 2 values")
        break
    else:
        raise ConfigError(f"{key}: {model_path.name} does not take the {n_in} features that bias.cv_features "
                          f"declares (input shape (1, {n_in})): {last}")
    scripted = torch.jit.script(FeatureInputCV(model, features, n_atoms, double))
    with atomic_path(out_path) as tmp:
        scripted.save(str(tmp))
    return out_path


def ramachandran_quads(topology) -> list[list[int]]:
    """The (φ, ψ) atom quadruples of a dipeptide (the first φ and the first ψ), by MDTraj."""
    import mdtraj as md
    traj = md.Trajectory(np.zeros((1, topology.n_atoms, 3)), topology)
    phi, _ = md.compute_phi(traj)
    psi, _ = md.compute_psi(traj)
    if len(phi) == 0 or len(psi) == 0:
        raise ValueError("the topology has no backbone φ/ψ torsion")
    return [list(map(int, phi[0])), list(map(int, psi[0]))]


def ramachandran_angles(traj) -> np.ndarray:
    """(φ, ψ) of the first residue that has both, radians, ``(n_frames, 2)`` (MDTraj)."""
    import mdtraj as md
    _, phi = md.compute_phi(traj)
    _, psi = md.compute_psi(traj)
    if phi.shape[1] == 0 or psi.shape[1] == 0:
        raise ValueError("the topology has no backbone φ/ψ torsion")
    return np.column_stack([phi[:, 0], psi[:, 0]])


def ramachandran_features(traj) -> np.ndarray:
    """(cos φ, sin φ, cos ψ, sin ψ) per frame: what a good alanine-dipeptide CV is a function of."""
    a = ramachandran_angles(traj)
    return np.column_stack([np.cos(a[:, 0]), np.sin(a[:, 0]), np.cos(a[:, 1]), np.sin(a[:, 1])])


def save_torsion_cv(quads, n_atoms: int, path) -> Path:
    """Script a :class:`TorsionCV` and save it atomically."""
    path = Path(path)
    scripted = torch.jit.script(TorsionCV(quads, n_atoms).double().eval())
    with atomic_path(path) as tmp:
        scripted.save(str(tmp))
    return path


class FastTorsions(CVEvaluator):
    """Numba values and analytic gradients of a torsion CV, on the atoms it uses."""

    def __init__(self, quads: np.ndarray, n_atoms: int):
        quads = np.asarray(quads, np.int64).reshape(-1, 4)
        self.n_atoms = n_atoms
        self.dim = len(quads)
        self.particles = np.unique(quads)
        self._local = np.searchsorted(self.particles, quads)
        self._values = np.zeros(self.dim)
        self._jac = np.zeros((self.dim, len(self.particles), 3))

    def __call__(self, pos):
        _check_shape(pos, len(self.particles))
        _torsions(pos, self._local, self._values, self._jac)
        return self._values, self._jac

    def pack(self, arena):
        arena.add(CV_SLOTS, self._local)
        return torsions_packed


@numba.njit(cache=True)
def torsions_packed(fb, ib):
    """:func:`_torsions` on the arrays of an arena (see :meth:`FastTorsions.pack`)."""
    _torsions(f2(fb, ib, POS), i2(ib, CV_SLOTS), f1(fb, ib, XI), f3(fb, ib, JAC))


# not inline="always": with cache=True, a function that inlines it loads from numba's cache
# broken ("NRT_adapt_ndarray_to_python: 'descr' is NULL" on the second process; numba 0.6x);
# LLVM inlines a function this small anyway
@numba.njit(cache=True)
def _cross(a0, a1, a2, b0, b1, b2):
    return a1 * b2 - a2 * b1, a2 * b0 - a0 * b2, a0 * b1 - a1 * b0


@numba.njit(cache=True)
def _torsions(pos, quads, values, jac):
    """Dihedrals and their gradients (Blondel and Karplus, J. Comput. Chem. 17, 1132, 1996).

    Scalar arithmetic only: small temporary arrays cost a heap allocation each, which
    made this kernel several times slower per MD step.
    """
    jac[:] = 0.0
    for d in range(quads.shape[0]):
        i, j, k, m = quads[d, 0], quads[d, 1], quads[d, 2], quads[d, 3]
        f0, f1_, f2_ = pos[i, 0] - pos[j, 0], pos[i, 1] - pos[j, 1], pos[i, 2] - pos[j, 2]
        g0, g1, g2 = pos[j, 0] - pos[k, 0], pos[j, 1] - pos[k, 1], pos[j, 2] - pos[k, 2]
        h0, h1, h2 = pos[m, 0] - pos[k, 0], pos[m, 1] - pos[k, 1], pos[m, 2] - pos[k, 2]
        a0, a1, a2 = _cross(f0, f1_, f2_, g0, g1, g2)
        b0, b1, b2 = _cross(h0, h1, h2, g0, g1, g2)
        c0, c1, c2 = _cross(b0, b1, b2, a0, a1, a2)
        gn = np.sqrt(g0 * g0 + g1 * g1 + g2 * g2)
        aa = a0 * a0 + a1 * a1 + a2 * a2
        bb = b0 * b0 + b1 * b1 + b2 * b2
        x = a0 * b0 + a1 * b1 + a2 * b2
        y = (c0 * g0 + c1 * g1 + c2 * g2) / gn
        values[d] = np.arctan2(y, x)
        fg = f0 * g0 + f1_ * g1 + f2_ * g2
        hg = h0 * g0 + h1 * g1 + h2 * g2
        sa, sb = gn / aa, gn / bb
        ta, tb = fg / (aa * gn), hg / (bb * gn)
        for r, ar, br in ((0, a0, b0), (1, a1, b1), (2, a2, b2)):
            di = -sa * ar
            dm = sb * br
            jac[d, i, r] += di
            jac[d, j, r] += -di + ta * ar - tb * br
            jac[d, k, r] += -dm - ta * ar + tb * br
            jac[d, m, r] += dm
    return values
