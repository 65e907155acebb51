"""The autoencoder of Belkacemi et al. (2022): features → bottleneck (the CV) → features."""
from __future__ import annotations

from torch import Tensor, nn

from .base import MLP, CVModel, Unsqueeze1, encoder_mlp, weighted_mse


class Autoencoder(CVModel):
    """Encoder with a bottleneck (tanh, bounded, by default; or identity) and a mirrored
    decoder with linear output. The loss is the weighted reconstruction error."""

    def __init__(self, n_features: int, hidden: list[int], bottleneck: int, activation: str = "tanh",
                 bottleneck_activation: str = "tanh"):
        super().__init__()
        self.encoder = encoder_mlp(n_features, hidden, bottleneck, activation, bottleneck_activation)
        self.decoder = MLP([bottleneck, *reversed(hidden), n_features], [activation] * len(hidden) + ["identity"])

    @classmethod
    def from_config(cls, cfg, n_features: int) -> "Autoencoder":
        return cls(n_features, list(cfg.hidden), cfg.bottleneck, cfg.activation, cfg.bottleneck_activation)

    def forward(self, x: Tensor) -> Tensor:
        return self.decoder(self.encoder(x))

    def loss(self, x: Tensor, w: Tensor) -> Tensor:
        return weighted_mse(x, self(x), w)

    @property
    def n_decoders(self) -> int:
        return 1

    def decoder_module(self) -> nn.Module:
        return Unsqueeze1(self.decoder)
