"""Export an encoder as one self-contained TorchScript CV, verified by a round trip.

The file maps the positions of all atoms, (n_atoms, 3) in nm, to the CV values (d,).
It carries the atom selection, the reference structure for the Kabsch alignment, the
input normalisation and the encoder's weights, all in float64.
"""

from pathlib import Path
from typing import List

import numpy as np
import torch
from torch import Tensor, nn

from .artifacts import atomic_path
from .features import AlignedFeatures
from .models.base import MLP


class ExportedCV(nn.Module):
    """Positions (n_atoms, 3) nm → CV (d,). Also accepts a batch (b, n_atoms, 3)."""

    activations: List[str]
    n_atoms: int
    cvflow_format: str

    def __init__(self, features: AlignedFeatures, mean, std, encoder: MLP, n_atoms: int):
        super().__init__()
        self.features = features
        self.register_buffer("mean", torch.as_tensor(np.asarray(mean, dtype=np.float64)))
        self.register_buffer("std", torch.as_tensor(np.asarray(std, dtype=np.float64)))
        self.encoder = encoder.linear_sequential()
        self.activations: list[str] = list(encoder.activations)
        self.n_atoms: int = int(n_atoms)
        self.cvflow_format: str = "aligned-mlp/1"

    def forward(self, pos: Tensor) -> Tensor:
        f = (self.features(pos) - self.mean) / self.std
        return self.encoder(f)


def export_cv(features: AlignedFeatures, mean, std, encoder: MLP, n_atoms: int, path: Path,
              check_positions: np.ndarray | None = None, atol: float = 1e-8) -> torch.jit.ScriptModule:
    """Script, save atomically, reload and compare with the in-memory model.

    Parameters
    ----------
    check_positions : (n, n_atoms, 3) array, nm, optional
        Frames on which values and autograd gradients of the file must match the
        in-memory model to ``atol``.
    """
    import copy
    enc = copy.deepcopy(encoder).double().eval()
    for p in enc.parameters():
        p.requires_grad_(False)
    module = ExportedCV(features, mean, std, enc, n_atoms).eval()
    scripted = torch.jit.script(module)
    with atomic_path(path) as tmp:
        scripted.save(str(tmp))
    loaded = torch.jit.load(str(path))
    if check_positions is not None and len(check_positions):
        x = torch.as_tensor(np.asarray(check_positions[:50], dtype=np.float64))
        ref = _values_and_grads(module, x)
        got = _values_and_grads(loaded, x)
        for a, b in zip(ref, got):
            if not torch.allclose(a, b, atol=atol, rtol=0):
                raise RuntimeError(f"exported CV {path} does not match the in-memory model "
                                   f"(max diff {float((a - b).abs().max()):.2e})")
    return loaded


def _values_and_grads(m, x: Tensor):
    vals, grads = [], []
    for frame in x:
        f = frame.clone().requires_grad_(True)
        y = m(f)
        g = [torch.autograd.grad(y[i], f, retain_graph=True)[0] for i in range(y.shape[0])]
        vals.append(y.detach())
        grads.append(torch.stack(g))
    return torch.stack(vals), torch.stack(grads)


class ExportedDecoder(nn.Module):
    """CV values z (n, bottleneck) → reconstructions (n, K, n_features), in the units of the
    features (toys: x, y in nm; molecules: the aligned coordinates of the feature atoms in
    nm, flattened x1 y1 z1 x2 ...)."""

    n_decoders: int
    cvflow_format: str

    def __init__(self, decoder: nn.Module, mean, std, n_decoders: int):
        super().__init__()
        self.decoder = decoder
        self.register_buffer("mean", torch.as_tensor(np.asarray(mean, dtype=np.float64)))
        self.register_buffer("std", torch.as_tensor(np.asarray(std, dtype=np.float64)))
        self.n_decoders = int(n_decoders)
        self.cvflow_format = "decoder/1"

    def forward(self, z: Tensor) -> Tensor:
        return self.decoder(z.to(self.mean.dtype)) * self.std + self.mean


def export_decoder(decoder: nn.Module, mean, std, n_decoders: int, path: Path,
                   check_z: np.ndarray | None = None, atol: float = 1e-8) -> torch.jit.ScriptModule:
    """Script ``decoder`` ((n, b) → (n, K, m), normalised features) with the feature scaling,
    save it atomically, reload it and compare it with the in-memory module on ``check_z``."""
    import copy
    dec = copy.deepcopy(decoder).double().eval()
    for p in dec.parameters():
        p.requires_grad_(False)
    module = ExportedDecoder(dec, mean, std, n_decoders).eval()
    scripted = torch.jit.script(module)
    with atomic_path(path) as tmp:
        scripted.save(str(tmp))
    loaded = torch.jit.load(str(path))
    if check_z is not None and len(check_z):
        z = torch.as_tensor(np.asarray(check_z, np.float64))
        with torch.no_grad():
            a, b = module(z), loaded(z)
        if a.shape != (len(z), n_decoders, len(np.atleast_1d(mean))) or not torch.allclose(a, b, atol=atol, rtol=0):
            raise RuntimeError(f"exported decoder {path} does not match the in-memory model")
    return loaded
