"""Energies and forces of a batch of configurations through OpenMM, as a torch function.

The generative models (Boltzmann generators, issue 20; probabilistic coarse-graining by
reverse KL, issue 21) are trained on the energy U(x) of configurations that they propose.
:class:`OpenMMEnergy` evaluates U and its forces for a batch through one OpenMM
``Context`` of the system that cvflow builds from the config (a molecule, or a toy's
expression in x and y: one source of truth for both). :func:`energy` wraps it as a
``torch.autograd.Function`` whose gradient is minus the force, and :func:`regularised`
caps the high energies that a poorly trained model proposes, as the Boltzmann-generator
literature does (a linear-then-logarithmic cut), so that one clash does not dominate a
batch's gradient. Non-finite energies or forces (atoms on top of each other, NaN input)
get the cut value and a zero force, and are counted.

Units: positions in nm, energies in kJ/mol, forces in kJ/mol/nm.
"""
from __future__ import annotations

import math
import time

import numpy as np
import openmm as mm
import torch
from openmm import unit as u

from .system import SystemBundle, clone_system, confine_toy


class OpenMMEnergy:
    """U(x) and −∇U(x) of ``bundle``'s system for batches of configurations.

    Parameters
    ----------
    bundle : SystemBundle
    platform : str
        OpenMM platform of the evaluation context (``Reference`` by default: small systems
        and exact reproducibility; ``CPU`` or ``CUDA`` for larger ones).
    max_energy : float
        Energies above this (kJ/mol) count as non-finite for the force (see :func:`regularised`
        for the energy): a configuration so far from the data is given no force at all.
    """

    def __init__(self, bundle: SystemBundle, platform: str = "Reference", max_energy: float = 1e12):
        system = clone_system(bundle.system)
        self.n_atoms = system.getNumParticles()
        self.is_toy = bundle.is_toy
        self.context = mm.Context(system, mm.VerletIntegrator(0.001), mm.Platform.getPlatformByName(platform))
        if bundle.is_toy:
            confine_toy(self.context, bundle, 0.001)  # z is not a degree of freedom of a toy
        if bundle.box is not None:
            self.context.setPeriodicBoxVectors(*(bundle.box * u.nanometer))
        self.max_energy = float(max_energy)
        self.evaluations = 0
        self.nonfinite = 0
        self.seconds = 0.0  # wall time spent in evaluations
        self._pos = np.zeros((self.n_atoms, 3))
        self._force = np.zeros((self.n_atoms, 3))

    def __call__(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Energies (n,) and forces (n, n_atoms, 3) for positions ``x`` (n, n_atoms, 3);
        toys may pass (n, 2) for (x, y)."""
        x = np.asarray(x, np.float64)
        if self.is_toy and x.ndim == 2 and x.shape[1] == 2:
            x = np.concatenate([x, np.zeros((len(x), 1))], axis=1)[:, None, :]
        if x.ndim != 3 or x.shape[1:] != (self.n_atoms, 3):
            raise ValueError(f"positions of shape {x.shape}; the system has {self.n_atoms} atoms")
        t0 = time.perf_counter()
        n = len(x)
        energies = np.empty(n)
        forces = np.zeros((n, self.n_atoms, 3))
        for i in range(n):
            energies[i] = self._one(x[i], forces[i])
        self.evaluations += n
        self.seconds += time.perf_counter() - t0
        return energies, forces

    def _one(self, pos: np.ndarray, force_out: np.ndarray) -> float:
        if not np.all(np.isfinite(pos)):
            self.nonfinite += 1
            return math.inf
        try:
            self.context.setPositions(pos)
            st = self.context.getState(getEnergy=True, getForces=True)
            e = st.getPotentialEnergy().value_in_unit(u.kilojoule_per_mole)
            st._getVectorAsNumpy(mm.State.Forces, self._force)
        except Exception:  # OpenMM refuses positions it cannot handle (e.g. a particle at NaN)
            self.nonfinite += 1
            return math.inf
        if not (math.isfinite(e) and e < self.max_energy and np.all(np.isfinite(self._force))):
            self.nonfinite += 1
            return math.inf
        force_out[...] = self._force
        return e


class _Energy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, bridge):
        e, f = bridge(x.detach().cpu().double().numpy())
        ctx.save_for_backward(torch.as_tensor(-f, dtype=x.dtype, device=x.device))
        return torch.as_tensor(e, dtype=x.dtype, device=x.device)

    @staticmethod
    def backward(ctx, grad_e):
        (grad_u,) = ctx.saved_tensors
        shape = (-1,) + (1,) * (grad_u.dim() - 1)
        return grad_e.reshape(shape) * grad_u, None


def energy(x: torch.Tensor, bridge: OpenMMEnergy) -> torch.Tensor:
    """U(x) in kJ/mol for a batch ``x`` (n, n_atoms, 3) in nm, differentiable: its gradient
    is −F from OpenMM (+inf where not finite, with a zero gradient; see :func:`regularised`)."""
    if bridge.is_toy and x.dim() == 2 and x.shape[1] == 2:
        x = torch.cat([x, torch.zeros_like(x[:, :1])], 1)[:, None, :]
    return _Energy.apply(x, bridge)


def regularised(e: torch.Tensor, high: float, cap: float | None = None) -> torch.Tensor:
    """Energies above ``high`` grow logarithmically, ``high + log(1 + e − high)``: continuous
    with a continuous first derivative at ``high``; non-finite energies become ``cap``
    (default: the value at e = high + 10¹⁰) with a zero gradient."""
    if cap is None:
        cap = high + math.log1p(1e10)
    finite = torch.isfinite(e)
    safe = torch.where(finite, e, torch.full_like(e, high))
    over = safe > high
    soft = high + torch.log1p(torch.clamp(safe - high, min=0.0))
    out = torch.where(over, soft, safe)
    return torch.where(finite, out, torch.full_like(e, cap))
