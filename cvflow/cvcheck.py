"""Load a TorchScript CV for a system and check it before any MD runs."""
from __future__ import annotations

from pathlib import Path

import torch

from .config import ConfigError, one_line
from .fastcv import CVEvaluator, load_cv


def checked_cv(path, bundle, key: str = "bias.cv", fast: bool = True) -> CVEvaluator:
    """The CV in ``path`` as an evaluator, or a :class:`ConfigError` that says what is wrong.

    Checks that the file loads, that it was made for this number of atoms, and that it
    returns a 1-D tensor of 1 or 2 finite values at the system's starting positions.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{key}: CV file not found: {path}")
    try:
        module = torch.jit.load(str(path), map_location="cpu")
    except Exception as e:
        raise ConfigError(f"{key}: {path} is not a TorchScript file (save the model with "
                          f"torch.jit.script(model).save(path)); torch says: {one_line(str(e), 100)}") from None
    n = bundle.n_atoms
    declared = getattr(module, "n_atoms", None) if hasattr(module, "n_atoms") else None
    if declared is not None and int(declared) != n:
        raise ConfigError(f"{key}: {path.name} was made for {int(declared)} atoms, but the system has {n}")
    x = torch.as_tensor(bundle.positions, dtype=torch.float32)
    try:
        with torch.no_grad():
            y = module(x)
    except Exception as e:
        first = str(e).strip().splitlines()
        hint = next((ln for ln in first if "index" in ln.lower() or "size" in ln.lower()), first[-1] if first else "")
        raise ConfigError(f"{key}: {path.name} fails on the {n} atoms of the system: {one_line(hint, 160)}") from None
    if not isinstance(y, torch.Tensor) or y.dim() != 1 or y.shape[0] not in (1, 2):
        shape = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
        raise ConfigError(f"{key}: {path.name} returns shape {shape}; a CV must return a 1-D tensor of 1 or 2 values")
    if not torch.isfinite(y).all():
        raise ConfigError(f"{key}: {path.name} returns non-finite values at the starting structure")
    _check_gradient(module, x, path, key)
    return load_cv(path, n, fast=fast)


def _check_gradient(module, x: torch.Tensor, path: Path, key: str) -> None:
    """The bias force is −κ (ξ − λ) ∂ξ/∂x: every output needs a finite gradient with respect
    to the positions, non-zero somewhere near the starting structure (at the structure and
    two perturbed copies: zero at one point may be a stationary point, zero at all three is
    a step function such as round or argmax)."""
    gen = torch.Generator().manual_seed(0)
    norms = []  # per trial, the largest |∂ξ_i/∂x| of each output
    try:
        for trial in range(3):
            noise = 0.01 * torch.randn(x.shape, generator=gen, dtype=x.dtype) if trial else 0.0
            xg = (x + noise).detach().requires_grad_(True)
            y = module(xg)
            if not y.requires_grad:
                raise ValueError("its output does not depend on the positions through differentiable operations")
            grads = [torch.autograd.grad(y[i], xg, retain_graph=True, allow_unused=True)[0] for i in range(len(y))]
            for i, g in enumerate(grads):
                if g is None:
                    raise ValueError(f"output {i} does not depend on the positions")
                if not torch.isfinite(g).all():
                    raise ValueError(f"the gradient of output {i} is not finite near the starting structure")
            norms.append([float(g.abs().max()) for g in grads])
        flat = [i for i, m in enumerate(torch.tensor(norms).amax(0).tolist()) if m == 0.0]
        if flat:
            raise ValueError(f"the gradient of output {flat[0]} is zero at and around the starting structure")
    except Exception as e:
        raise ConfigError(f"{key}: {path.name} cannot be differentiated with respect to the positions "
                          f"({one_line(e, 120)}); the bias force needs dξ/dx") from None
