"""Load a TorchScript CV for a system and check it before any MD runs."""
from __future__ import annotations

from pathlib import Path

import torch

from .config import ConfigError
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
        raise ConfigError(f"{key}: {path} is not a TorchScript file ({str(e).splitlines()[0][:120]})") from None
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
        raise ConfigError(f"{key}: {path.name} fails on the {n} atoms of the system: {hint.strip()[:160]}") from None
    if not isinstance(y, torch.Tensor) or y.dim() != 1 or y.shape[0] not in (1, 2):
        shape = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
        raise ConfigError(f"{key}: {path.name} returns shape {shape}; a CV must return a 1-D tensor of 1 or 2 values")
    if not torch.isfinite(y).all():
        raise ConfigError(f"{key}: {path.name} returns non-finite values at the starting structure")
    return load_cv(path, n, fast=fast)
