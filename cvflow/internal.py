"""Internal coordinates of a molecule: bonds, angles and torsions, with the log-Jacobian.

The generative models of issues 20 and 21 work on molecules in internal coordinates, where
the Boltzmann density is far simpler than in Cartesian ones: bond lengths and angles are
nearly Gaussian, and the torsions (periodic, in (−π, π]) carry the conformations.

:class:`ZMatrix` orders the atoms so that each one after the first three is placed from
three earlier ones, j (its bond partner), k and l: a bond |x_i − x_j|, an angle
∠(x_i, x_j, x_k) and a torsion (x_i, x_j, x_k, x_l). The first three atoms fix the frame:
atom 0 at the origin, atom 1 on the x axis, atom 2 in the xy plane, so that the 6 rigid-body
degrees of freedom are removed and the transform is a bijection between the 3N − 6
internal coordinates and the molecule's shape.

Volume: with the rigid-body motion integrated out (a constant), the Cartesian volume
element is dx ∝ r₁² r₂² sin a₂ Π_{i≥3} b_i² sin a_i × d(internal coordinates), where r₁ =
|x₁ − x₀|, r₂ = |x₂ − x₀|, a₂ = ∠(x₂, x₀, x₁). :meth:`ZMatrix.to_cartesian` returns that
log|det J| so that a density on internal coordinates becomes one on shapes:
log p_x = log p_ic − log|det J|.
"""
from __future__ import annotations

from collections import deque

import numpy as np
import torch


class ZMatrix:
    """A placement order for the atoms of a bonded molecule.

    Parameters
    ----------
    bonds : list of (i, j)
        The molecule's bonds (atom indices); the graph must be connected.
    n_atoms : int
    root : int, optional
        The first atom (default: the atom with the most bonds, a central heavy atom).
    """

    def __init__(self, bonds, n_atoms: int, root: int | None = None):
        nbr = [[] for _ in range(n_atoms)]
        for a, b in bonds:
            nbr[a].append(b)
            nbr[b].append(a)
        if root is None:
            root = int(np.argmax([len(v) for v in nbr]))
        order, parent = [root], {root: -1}
        queue = deque([root])
        while queue:  # breadth first: every atom's bond partner is placed before it
            a = queue.popleft()
            for b in sorted(nbr[a]):
                if b not in parent:
                    parent[b] = a
                    order.append(b)
                    queue.append(b)
        if len(order) != n_atoms:
            raise ValueError(f"the bond graph is not connected: {len(order)} of {n_atoms} atoms reached")
        if n_atoms < 3:
            raise ValueError("internal coordinates need at least 3 atoms")
        placed = {}
        rows = []
        for pos, i in enumerate(order):
            placed[i] = pos
            if pos < 3:
                continue
            j = parent[i]
            k = parent[j] if parent[j] >= 0 else next(n for n in nbr[j] if n in placed and n != i)
            # a placed sibling of i (another atom bonded to j) first: the torsion (i, j, k, sibling)
            # is then the rotation between the two about j–k, nearly fixed by the geometry
            # (±120° on an sp3 centre, 180° on an sp2 one), instead of two free torsions
            # whose difference must be learned exactly (a methyl's hydrogens would clash)
            cand = [n for n in nbr[j] if n in placed and n not in (i, k)]
            cand += [parent[k]] if parent[k] >= 0 else []
            cand += [n for n in nbr[k] if n in placed and n not in (i, j)]
            cand += [n for n in order[:pos] if n not in (i, j, k)]
            l = next(c for c in cand if c not in (i, j, k) and c in placed)
            rows.append((i, j, k, l))
        self.n_atoms = n_atoms
        self.order = np.array(order, np.int64)  # placement order
        self.first = self.order[:3]
        self.rows = np.array(rows, np.int64).reshape(-1, 4)  # (i, j, k, l) for atoms 3, 4, ...

    @classmethod
    def from_topology(cls, topology, root: int | None = None) -> "ZMatrix":
        """From an MDTraj or OpenMM topology (its bonds)."""
        bonds = [(a.index, b.index) for a, b in topology.bonds]
        n = topology.n_atoms if hasattr(topology, "n_atoms") else topology.getNumAtoms()
        return cls(bonds, n, root)

    @property
    def n_torsions(self) -> int:
        return len(self.rows)

    @property
    def n_internal(self) -> int:
        """3N − 6: r₁, r₂, a₂, then a bond, an angle and a torsion per further atom."""
        return 3 + 3 * len(self.rows)

    # -- Cartesian → internal ------------------------------------------------------------
    def to_internal(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Positions (n, N, 3) → (bonds (n, 2 + T), angles (n, 1 + T), torsions (n, T)):
        bonds r₁, r₂ then b_i; angles a₂ then a_i; torsions in (−π, π]."""
        x = torch.as_tensor(x)
        a0, a1, a2 = (x[:, int(i)] for i in self.first)
        i, j, k, l = (x[:, self.rows[:, c]] for c in range(4))
        r1 = (a1 - a0).norm(dim=-1)
        r2 = (a2 - a0).norm(dim=-1)
        ang2 = _angle(a2, a0, a1)
        bonds = torch.cat([r1[:, None], r2[:, None], (i - j).norm(dim=-1)], 1)
        angles = torch.cat([ang2[:, None], _angle(i, j, k)], 1)
        return bonds, angles, _torsion(i, j, k, l)

    # -- internal → Cartesian ------------------------------------------------------------
    def to_cartesian(self, bonds: torch.Tensor, angles: torch.Tensor,
                     torsions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The inverse of :meth:`to_internal`, in the canonical frame (atom 0 at the origin,
        atom 1 on +x, atom 2 in the xy plane with y > 0); and log|det J| per configuration
        (see the module's docstring)."""
        n = bonds.shape[0]
        dt = bonds.dtype
        pos = [None] * self.n_atoms
        z = torch.zeros(n, dtype=dt, device=bonds.device)
        r1, r2, a2 = bonds[:, 0], bonds[:, 1], angles[:, 0]
        o0, o1, o2 = (int(v) for v in self.first)
        pos[o0] = torch.stack([z, z, z], -1)
        pos[o1] = torch.stack([r1, z, z], -1)
        pos[o2] = torch.stack([r2 * torch.cos(a2), r2 * torch.sin(a2), z], -1)
        for c, (i, j, k, l) in enumerate(self.rows):
            pos[i] = _place(pos[j], pos[k], pos[l], bonds[:, 2 + c], angles[:, 1 + c], torsions[:, c])
        x = torch.stack(pos, 1)
        logdet = (2 * torch.log(r1) + 2 * torch.log(r2) + torch.log(torch.sin(a2))
                  + (2 * torch.log(bonds[:, 2:]) + torch.log(torch.sin(angles[:, 1:]))).sum(-1))
        return x, logdet

    def canonical(self, x: torch.Tensor) -> torch.Tensor:
        """Positions moved into the canonical frame of :meth:`to_cartesian` (a rigid motion)."""
        return self.to_cartesian(*self.to_internal(x))[0]

    def shape_coordinates(self, x: torch.Tensor) -> torch.Tensor:
        """The 3N − 6 Cartesian coordinates of a canonical-frame configuration (atom 1's x,
        atom 2's x and y, every further atom's x, y, z): the space in which log|det J| is the
        Jacobian of :meth:`to_cartesian`."""
        o0, o1, o2 = (int(v) for v in self.first)
        rest = torch.as_tensor(self.rows[:, 0])
        return torch.cat([x[:, o1, :1], x[:, o2, :2], x[:, rest].reshape(len(x), -1)], 1)


def wrap_angle(a: torch.Tensor) -> torch.Tensor:
    """Angles (radians) into [−π, π)."""
    return torch.remainder(a + np.pi, 2 * np.pi) - np.pi


def _angle(a, b, c):
    """∠(a, b, c) at b, in [0, π]."""
    u, v = a - b, c - b
    cos = (u * v).sum(-1) / (u.norm(dim=-1) * v.norm(dim=-1))
    return torch.arccos(torch.clamp(cos, -1.0, 1.0))


def _torsion(a, b, c, d):
    """The dihedral angle of a–b–c–d in (−π, π] (IUPAC sign)."""
    b0, b1, b2 = a - b, c - b, d - c
    b1n = b1 / b1.norm(dim=-1, keepdim=True)
    v = b0 - (b0 * b1n).sum(-1, keepdim=True) * b1n
    w = b2 - (b2 * b1n).sum(-1, keepdim=True) * b1n
    x = (v * w).sum(-1)
    y = (torch.cross(b1n, v, dim=-1) * w).sum(-1)
    return torch.atan2(y, x)


def _place(j, k, l, bond, angle, torsion):
    """The position of atom i from j, k, l (NeRF): |i − j| = bond, ∠(i, j, k) = angle and
    torsion(i, j, k, l) = torsion."""
    bc = j - k
    bc = bc / bc.norm(dim=-1, keepdim=True)
    nrm = torch.cross(k - l, bc, dim=-1)
    nrm = nrm / nrm.norm(dim=-1, keepdim=True)
    m = torch.cross(nrm, bc, dim=-1)
    d2 = torch.stack([-bond * torch.cos(angle), bond * torch.sin(angle) * torch.cos(torsion),
                      bond * torch.sin(angle) * torch.sin(torsion)], -1)
    return j + d2[..., :1] * bc + d2[..., 1:2] * m + d2[..., 2:3] * nrm
