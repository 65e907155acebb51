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
from .fastcv import CVEvaluator

TORSIONS_FORMAT = "torsions/1"


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
        q = self.quads
        b1 = pos[q[:, 1]] - pos[q[:, 0]]
        b2 = pos[q[:, 2]] - pos[q[:, 1]]
        b3 = pos[q[:, 3]] - pos[q[:, 2]]
        c1 = torch.linalg.cross(b2, b3)
        c2 = torch.linalg.cross(b1, b2)
        y = (b1 * c1).sum(-1) * torch.linalg.norm(b2, dim=-1)
        x = (c1 * c2).sum(-1)
        return torch.atan2(y, x)


def ramachandran_quads(topology) -> list[list[int]]:
    """The (φ, ψ) atom quadruples of a dipeptide (the first φ and the first ψ), by MDTraj."""
    import mdtraj as md
    traj = md.Trajectory(np.zeros((1, topology.n_atoms, 3)), topology)
    phi, _ = md.compute_phi(traj)
    psi, _ = md.compute_psi(traj)
    if len(phi) == 0 or len(psi) == 0:
        raise ValueError("the topology has no backbone φ/ψ torsion")
    return [list(map(int, phi[0])), list(map(int, psi[0]))]


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
        _torsions(pos, self._local, self._values, self._jac)
        return self._values, self._jac

    def pack(self, arena):
        arena.add(CV_SLOTS, self._local)
        return torsions_packed


@numba.njit(cache=True)
def torsions_packed(fb, ib):
    """:func:`_torsions` on the arrays of an arena (see :meth:`FastTorsions.pack`)."""
    _torsions(f2(fb, ib, POS), i2(ib, CV_SLOTS), f1(fb, ib, XI), f3(fb, ib, JAC))


@numba.njit(cache=True)
def _torsions(pos, quads, values, jac):
    """Dihedrals and their gradients (Blondel and Karplus, J. Comput. Chem. 17, 1132, 1996)."""
    jac[:] = 0.0
    for d in range(quads.shape[0]):
        i, j, k, m = quads[d, 0], quads[d, 1], quads[d, 2], quads[d, 3]
        f = pos[i] - pos[j]
        g = pos[j] - pos[k]
        h = pos[m] - pos[k]
        a = np.cross(f, g)
        b = np.cross(h, g)
        gn = np.sqrt(g[0] * g[0] + g[1] * g[1] + g[2] * g[2])
        aa = a[0] * a[0] + a[1] * a[1] + a[2] * a[2]
        bb = b[0] * b[0] + b[1] * b[1] + b[2] * b[2]
        x = a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
        c = np.cross(b, a)
        y = (c[0] * g[0] + c[1] * g[1] + c[2] * g[2]) / gn
        values[d] = np.arctan2(y, x)
        fg = f[0] * g[0] + f[1] * g[1] + f[2] * g[2]
        hg = h[0] * g[0] + h[1] * g[1] + h[2] * g[2]
        for r in range(3):
            di = -gn / aa * a[r]
            dm = gn / bb * b[r]
            dj = -di + fg / (aa * gn) * a[r] - hg / (bb * gn) * b[r]
            dk = -dm - fg / (aa * gn) * a[r] + hg / (bb * gn) * b[r]
            jac[d, i, r] += di
            jac[d, j, r] += dj
            jac[d, k, r] += dk
            jac[d, m, r] += dm
    return values
