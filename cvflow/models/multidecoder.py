"""One encoder, K decoders (Lelièvre, Pigeon, Stoltz & Zhang, "Analyzing multimodal
probability measures with autoencoders").

The encoder ξ is the CV, as in :class:`~cvflow.models.autoencoder.Autoencoder`. Each frame
is reconstructed by its best decoder: the loss is Σ_j w_j min_k ‖x_j − d_k(ξ(x_j))‖² / Σ w.
Where two channels join the same two states, one decoder averages them and its curve runs
through the empty middle; with one decoder per channel each curve follows its own.

Training starts from a soft-min, −τ log Σ_k e^{−e_k/τ} + τ log K (the mean of the errors
when τ is large, their minimum as τ → 0), whose gradient shares each frame among the
decoders by their responsibilities softmax(−e/τ), as deterministic annealing does. τ falls
geometrically from ``softmin.start`` to ``softmin.end`` over ``softmin.anneal_epochs``,
so that the decoders first fit the data together and then split it; early stopping waits
for the annealing to end. Validation always uses the hard minimum, the objective itself.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .base import CVModel, MLPBank, encoder_mlp


class MultiDecoderAutoencoder(CVModel):
    """Encoder (n, m) → (n, bottleneck); K decoders (n, bottleneck) → (n, K, m)."""

    def __init__(self, n_features: int, hidden: list[int], bottleneck: int, decoders: int,
                 activation: str = "tanh", bottleneck_activation: str = "tanh",
                 tau_start: float = 1.0, tau_end: float = 1e-3, anneal_epochs: int = 100):
        super().__init__()
        self.encoder = encoder_mlp(n_features, hidden, bottleneck, activation, bottleneck_activation)
        self.decoders = MLPBank([bottleneck, *reversed(hidden), n_features], [activation] * len(hidden) + ["identity"],
                                decoders)
        self.k = int(decoders)
        self.tau_start, self.tau_end = float(tau_start), float(tau_end)
        self.annealing_epochs = int(anneal_epochs)
        self.tau = self.tau_start

    @classmethod
    def from_config(cls, cfg, n_features: int) -> "MultiDecoderAutoencoder":
        s = cfg.softmin
        return cls(n_features, list(cfg.hidden), cfg.bottleneck, cfg.decoders, cfg.activation,
                   cfg.bottleneck_activation, s.start, s.end, s.anneal_epochs)

    def start_epoch(self, epoch: int, epochs: int) -> None:
        """τ = start · (end/start)^t, t going from 0 at epoch 1 to 1 at ``anneal_epochs``."""
        t = min(1.0, (epoch - 1) / max(1, self.annealing_epochs - 1))
        self.tau = self.tau_start * (self.tau_end / self.tau_start) ** t

    def forward(self, x: Tensor) -> Tensor:
        return self.decoders(self.encoder(x))

    def errors(self, x: Tensor) -> Tensor:
        """Squared reconstruction error of every frame by every decoder, (n, K)."""
        return ((x.unsqueeze(1) - self(x)) ** 2).sum(dim=-1)

    def loss(self, x: Tensor, w: Tensor) -> Tensor:
        e = self.errors(x)
        n = w.shape[0]
        if self.training and self.k > 1:
            # Σ_j w_j (−τ log Σ_k e^{−e_jk/τ} + τ log K) / n, the constant outside the sum
            # (mean-one weights: Σ w / n is 1 over the data set) — fewer passes over the batch
            lse = torch.logsumexp(e * (-1.0 / self.tau), dim=1)
            return (w * lse).sum() * (-self.tau / n) + self.tau * math.log(self.k) * (w.sum() / n)
        return (w * e.min(dim=1).values).sum() / n

    @property
    def n_decoders(self) -> int:
        return self.k

    def decoder_module(self) -> nn.Module:
        return self.decoders
