"""Featurisation shared by training and MD: atom selection, centring, Kabsch alignment.

The same TorchScript code runs when the autoencoder is trained (on batches of frames) and
inside the exported CV (on one frame of all atoms), so the two can never disagree.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


def kabsch_rotation(x: Tensor, ref: Tensor) -> Tensor:
    """Rotation ``R`` that minimises ``|x @ R - ref|`` for centred ``x`` and ``ref``.

    Works on a single frame ``(k, 3)`` or a batch ``(b, k, 3)``.
    """
    h = x.transpose(-1, -2) @ ref
    u, _, vt = torch.linalg.svd(h)
    d = torch.sign(torch.linalg.det(u @ vt))
    ones = torch.ones_like(d)
    dmat = torch.diag_embed(torch.stack([ones, ones, d], dim=-1))
    return u @ dmat @ vt


class AlignedFeatures(torch.nn.Module):
    """Positions of all atoms (…, n_atoms, 3) in nm → flat features (…, m).

    Selects ``atom_indices``, optionally centres them and rotates them onto ``reference``
    (Kabsch), flattens them and keeps the flat ``components``.
    """

    def __init__(self, atom_indices, reference, align: bool, components=None):
        super().__init__()
        idx = torch.as_tensor(np.asarray(atom_indices), dtype=torch.long)
        ref = torch.as_tensor(np.asarray(reference, dtype=np.float64))
        if align:
            ref = ref - ref.mean(dim=0, keepdim=True)
        if components is None:
            components = np.arange(3 * len(idx))
        self.register_buffer("atom_indices", idx)
        self.register_buffer("reference", ref)
        self.register_buffer("components", torch.as_tensor(np.asarray(components), dtype=torch.long))
        self.align = bool(align)

    def forward(self, pos: Tensor) -> Tensor:
        x = pos.to(self.reference.dtype).index_select(-2, self.atom_indices)
        if self.align:
            x = x - x.mean(dim=-2, keepdim=True)
            x = x @ kabsch_rotation(x, self.reference)
        flat = x.reshape(x.shape[:-2] + (x.shape[-2] * 3,))
        return flat.index_select(-1, self.components)


def featurize(positions: np.ndarray, features: AlignedFeatures, batch: int = 65536) -> np.ndarray:
    """Apply ``features`` to frames ``(n_frames, n_atoms, 3)`` (nm) without autograd."""
    out = []
    with torch.inference_mode():
        for i in range(0, len(positions), batch):
            out.append(features(torch.as_tensor(positions[i:i + batch], dtype=torch.float64)).numpy())
    return np.concatenate(out) if out else np.zeros((0, len(features.components)))
