"""The wrapper that lets PLUMED's PYTORCH_MODEL run a cvflow CV (no future annotations:
TorchScript reads the class annotations)."""
import numpy as np
import torch
from torch import Tensor, nn


class PlumedInput(nn.Module):
    """(1, 3k) float32 positions of the CV's atoms, as PLUMED passes them → (1, d) float32.

    The positions are placed into an (n_atoms, 3) float64 array, the CV file runs on it
    unchanged, and the result goes back to float32, the type PYTORCH_MODEL reads.
    """

    n_atoms: int

    def __init__(self, inner, particles: np.ndarray, n_atoms: int):
        super().__init__()
        self.inner = inner
        self.register_buffer("particles", torch.as_tensor(np.asarray(particles, dtype=np.int64)))
        self.n_atoms = int(n_atoms)

    def forward(self, x: Tensor) -> Tensor:
        pos = torch.zeros(self.n_atoms, 3, dtype=torch.float64)
        pos = pos.index_put((self.particles,), x.reshape(-1, 3).to(torch.float64))
        y = self.inner(pos)
        return y.reshape(1, -1).to(torch.float32)
