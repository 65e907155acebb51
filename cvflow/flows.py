"""Normalizing flows on configurations: the model of a Boltzmann generator (issue 20).

A Boltzmann generator (Noé, Olsson, Köhler & Wu, Science 2019) is an invertible map from a
simple latent density to configurations, with an exact log-density. cvflow composes two
bijections:

- a fixed **coordinate transform** between configurations x and the flow's space y, with its
  log|det|: for toys, (x, y) in nm mapped by the training frames' range onto [−2, 2]
  (:class:`ToyCoordinates`); for molecules, internal coordinates (:mod:`cvflow.internal`):
  bonds and angles mapped affinely into [−π, π) around their mean, the torsions as they are
  (periodic) unless they have one narrow peak (mapped like angles around it), and the bonds
  that the system constrains (``HBonds``) held at their length (:class:`MoleculeCoordinates`);
- a trainable **flow** from zuko (see the README for why zuko): a neural spline flow with a
  Gaussian base for toys (``NSF``), and for molecules a neural circular spline flow (``NCSF``:
  rational-quadratic splines on the circle, a uniform base on the torus) in coupling form
  (two passes), which samples as fast as it evaluates densities.

:class:`BoltzmannGenerator` gives samples x with log q(x), and log q(x) of given x, where q is
the density over configurations (for molecules: over shapes, with the rigid-body motion
removed; see :mod:`cvflow.internal`). Importance weights are then w ∝ exp(−βU(x)) / q(x).
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from .internal import ZMatrix, wrap_angle

EDGE = 1e-4  # data are kept this far inside (−π, π) in the flow's space
NARROW_TORSION = 1.0  # a torsion whose ±width circular standard deviations fit in (−π, π) is not periodic


class ToyCoordinates(nn.Module):
    """(x, y) in nm ↔ y = (x − mean) / scale."""

    periodic = False

    def __init__(self, mean, scale):
        super().__init__()
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float64).reshape(2))
        self.register_buffer("scale", torch.as_tensor(scale, dtype=torch.float64).reshape(2))

    @property
    def dim(self) -> int:
        return 2

    @classmethod
    def fit(cls, xy: np.ndarray | None, weights: np.ndarray | None = None) -> "ToyCoordinates":
        """The frames' (n, 2) range mapped onto [−2, 2]: the splines' domain, [−5, 5], then
        reaches 1.5 ranges past the frames on each side (outside it zuko's splines are the
        identity, and q drops there: measured, a sample at the edge took 2 % of the total
        weight). A standard deviation would put a second state with few frames far out in
        the Gaussian base's tail. The unit map without frames; ``weights`` select the frames
        used (those with w > 0)."""
        if xy is None or len(xy) < 2:
            return cls(np.zeros(2), np.ones(2))
        if weights is not None:
            xy = xy[np.asarray(weights) > 0]
        lo, hi = xy.min(0), xy.max(0)
        return cls((lo + hi) / 2, np.maximum((hi - lo) / 4, 1e-3))

    def params(self) -> dict:
        return {"kind": "toy", "mean": self.mean.tolist(), "scale": self.scale.tolist()}

    def to_flow(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Configurations (n, 2) → (y (n, 2), log|dy/dx| (n,))."""
        y = (x.double() - self.mean) / self.scale
        return y, torch.full((len(x),), -float(self.scale.log().sum()), dtype=torch.float64)

    def from_flow(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """y (n, 2) → (configurations (n, 2), log|dx/dy| (n,))."""
        x = self.mean + self.scale * y.double()
        return x, torch.full((len(y),), float(self.scale.log().sum()), dtype=torch.float64)


class MoleculeCoordinates(nn.Module):
    """Cartesian positions (n, N, 3) in nm ↔ the flow's y in [−π, π)^D.

    The 3N − 6 internal coordinates of ``zmatrix`` (bonds, angles, torsions); bonds that
    the system constrains are fixed at their length and left out of y. A free bond or angle
    q maps to y = π (q − mean) / half_width, where half_width is ``width`` standard
    deviations of the training frames (less for angles near 0 or π, so that the box stays
    inside (0, π)). A torsion whose ``width`` circular standard deviations fit inside
    ``narrow`` · π (one narrow peak: a placed sibling's offset, a trans peptide bond) maps
    the same way around its circular mean, with the difference wrapped; the others (the
    backbone's φ and ψ, methyl rotors) map to themselves. Measured on alanine dipeptide
    (scripts/bg_ala2_diagnostics.py): on 8,000 frames this raised the ESS from 0.014 % to
    0.10 %; the narrow peaks otherwise fill a few of the circular spline's bins.
    """

    periodic = True

    def __init__(self, zmatrix: ZMatrix, fixed_bonds: np.ndarray, bond_mean, bond_half, angle_mean, angle_half,
                 torsion_mean=None, torsion_half=None):
        super().__init__()
        nt = zmatrix.n_torsions
        # not in the state dict: params() records them, and a checkpoint from before they
        # existed (every torsion periodic) still loads
        self.register_buffer("torsion_mean", torch.as_tensor(
            np.zeros(nt) if torsion_mean is None else torsion_mean, dtype=torch.float64), persistent=False)
        self.register_buffer("torsion_half", torch.as_tensor(
            np.full(nt, math.pi) if torsion_half is None else torsion_half, dtype=torch.float64), persistent=False)
        self.zmatrix = zmatrix
        nb = len(bond_mean)
        fixed = np.zeros(nb, bool) if fixed_bonds is None else ~np.isnan(np.asarray(fixed_bonds, float))
        self.register_buffer("fixed_mask", torch.as_tensor(fixed))
        self.register_buffer("fixed_value", torch.as_tensor(np.nan_to_num(np.asarray(
            fixed_bonds if fixed_bonds is not None else np.full(nb, np.nan), float)), dtype=torch.float64))
        self.register_buffer("bond_mean", torch.as_tensor(bond_mean, dtype=torch.float64))
        self.register_buffer("bond_half", torch.as_tensor(bond_half, dtype=torch.float64))
        self.register_buffer("angle_mean", torch.as_tensor(angle_mean, dtype=torch.float64))
        self.register_buffer("angle_half", torch.as_tensor(angle_half, dtype=torch.float64))

    @property
    def dim(self) -> int:
        return int((~self.fixed_mask).sum()) + len(self.angle_mean) + self.zmatrix.n_torsions

    @classmethod
    def fit(cls, zmatrix: ZMatrix, constraints: dict, positions: np.ndarray, weights: np.ndarray | None = None,
            width: float = 6.0, narrow: float = NARROW_TORSION) -> "MoleculeCoordinates":
        """From frames (n, N, 3) and the system's constraints {(i, j): length nm}. With one
        frame (no data), spreads of 0.01 nm (bonds) and 0.1 rad (angles) are assumed."""
        x = torch.as_tensor(np.asarray(positions, np.float64).reshape(-1, zmatrix.n_atoms, 3))
        bonds, angles, tors = zmatrix.to_internal(x)
        bonds, angles, tors = bonds.numpy(), angles.numpy(), tors.numpy()
        w = np.ones(len(x)) if weights is None else np.asarray(weights, float)
        w = w / w.sum()

        def stats(q, floor):
            m = (w[:, None] * q).sum(0)
            s = np.sqrt((w[:, None] * (q - m) ** 2).sum(0)) if len(q) > 1 else np.full(q.shape[1], floor)
            return m, np.maximum(s, floor * 0.05)
        bm, bs = stats(bonds, 0.01)
        am, as_ = stats(angles, 0.1)
        pairs = cls.bond_pairs(zmatrix)
        fixed = np.array([constraints.get(tuple(sorted(p)), np.nan) for p in pairs], float)
        ah = np.minimum(width * as_, 0.999 * np.minimum(am, math.pi - am))
        bh = np.minimum(width * bs, 0.999 * bm)
        # a torsion with one narrow peak (a placed sibling's, ±120° or 180°) is mapped like an
        # angle around its circular mean: on the full circle its peak would fill a few of the
        # spline's bins, and its tails would be the spline's crude ones
        c, s_ = (w[:, None] * np.cos(tors)).sum(0), (w[:, None] * np.sin(tors)).sum(0)
        resultant = np.clip(np.hypot(c, s_), 1e-12, 1.0)
        circ_std = np.sqrt(-2 * np.log(resultant))
        is_narrow = (width * circ_std < math.pi * narrow) if len(tors) > 1 else np.zeros(tors.shape[1], bool)
        tm = np.where(is_narrow, np.arctan2(s_, c), 0.0)
        th = np.where(is_narrow, np.maximum(width * circ_std, 0.05), math.pi)
        return cls(zmatrix, fixed, bm, bh, am, ah, tm, th)

    @staticmethod
    def bond_pairs(zmatrix: ZMatrix) -> list[tuple[int, int]]:
        """The atom pairs of the bonds of :meth:`ZMatrix.to_internal`, in its order."""
        o0, o1, o2 = (int(v) for v in zmatrix.first)
        return [(o1, o0), (o2, o0)] + [(int(i), int(j)) for i, j, _, _ in zmatrix.rows]

    def params(self) -> dict:
        return {"kind": "molecule", "fixed_bonds": np.where(self.fixed_mask.numpy(), self.fixed_value.numpy(),
                                                           np.nan).tolist(),
                "bond_mean": self.bond_mean.tolist(), "bond_half": self.bond_half.tolist(),
                "angle_mean": self.angle_mean.tolist(), "angle_half": self.angle_half.tolist(),
                "torsion_mean": self.torsion_mean.tolist(), "torsion_half": self.torsion_half.tolist()}

    def _log_scale(self) -> float:
        """Σ log(dq/dy) over the free bonds, the angles and the torsions (a constant)."""
        free = ~self.fixed_mask
        return float((self.bond_half[free] / math.pi).log().sum() + (self.angle_half / math.pi).log().sum()
                     + (self.torsion_half / math.pi).log().sum())

    def to_flow(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Positions (n, N, 3) → (y (n, D), log|dy/d shape| (n,)); y is clamped inside the box."""
        x = torch.as_tensor(x, dtype=torch.float64)
        bonds, angles, tors = self.zmatrix.to_internal(x)
        free = ~self.fixed_mask
        yb = math.pi * (bonds[:, free] - self.bond_mean[free]) / self.bond_half[free]
        ya = math.pi * (angles - self.angle_mean) / self.angle_half
        yt = math.pi * wrap_angle(tors - self.torsion_mean) / self.torsion_half
        y = torch.cat([yb, ya, yt], 1)
        y = torch.clamp(y, -math.pi + EDGE, math.pi - EDGE)
        _, logdet_cart = self.zmatrix.to_cartesian(bonds, angles, tors)
        return y, -logdet_cart - self._log_scale()

    def from_flow(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """y (n, D) → (positions (n, N, 3) in the canonical frame, log|d shape/dy| (n,))."""
        y = y.double()
        free = ~self.fixed_mask
        nf, na = int(free.sum()), len(self.angle_mean)
        bonds = self.fixed_value.expand(len(y), -1).clone()
        bonds[:, free] = self.bond_mean[free] + self.bond_half[free] * y[:, :nf] / math.pi
        angles = self.angle_mean + self.angle_half * y[:, nf:nf + na] / math.pi
        tors = wrap_angle(self.torsion_mean + self.torsion_half * y[:, nf + na:] / math.pi)
        x, logdet_cart = self.zmatrix.to_cartesian(bonds, angles, tors)
        return x, logdet_cart + self._log_scale()


def coordinates_from_params(p: dict, zmatrix: ZMatrix | None = None) -> nn.Module:
    """The coordinate transform that :meth:`params` described (for a checkpoint)."""
    if p["kind"] == "toy":
        return ToyCoordinates(p["mean"], p["scale"])
    return MoleculeCoordinates(zmatrix, np.array(p["fixed_bonds"], float), p["bond_mean"], p["bond_half"],
                               p["angle_mean"], p["angle_half"], p.get("torsion_mean"), p.get("torsion_half"))


class BoltzmannGenerator(nn.Module):
    """A zuko flow on the coordinates' space y, and the density it gives configurations:
    log q(x) = log q_y(y(x)) + log|dy/dx|.

    Parameters
    ----------
    coordinates : ToyCoordinates or MoleculeCoordinates
    transforms, hidden, bins : the flow's depth, its networks' hidden layers and spline bins
    """

    def __init__(self, coordinates: nn.Module, transforms: int = 4, hidden=(64, 64), bins: int = 8):
        super().__init__()
        import zuko
        self.coordinates = coordinates
        d = coordinates.dim
        if coordinates.periodic:
            self.flow = zuko.flows.NCSF(d, transforms=transforms, hidden_features=list(hidden), bins=bins,
                                        passes=2 if d > 1 else None)
        else:
            self.flow = zuko.flows.NSF(d, transforms=transforms, hidden_features=list(hidden), bins=bins)

    def sample(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """n configurations (reparameterised: differentiable in the parameters) and their
        log q(x), float64."""
        y, log_qy = self.flow().rsample_and_log_prob((n,))
        x, logdet = self.coordinates.from_flow(y)
        return x, log_qy.double() - logdet

    def log_prob_flow(self, y: torch.Tensor) -> torch.Tensor:
        """log q_y of points y already in the flow's space."""
        return self.flow().log_prob(y.float())

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """log q(x) of configurations, float64."""
        y, logdet = self.coordinates.to_flow(torch.as_tensor(x))
        return self.log_prob_flow(y).double() + logdet
