"""The autoencoder of Belkacemi et al. (2022): features → bottleneck (the CV) → features."""
from __future__ import annotations

from torch import Tensor, nn

from .base import MLP, CVModel, Unsqueeze1, weighted_mse


class Autoencoder(CVModel):
    """Encoder with a bottleneck (tanh, bounded, by default; or identity) and a mirrored
    decoder with linear output. The loss is the weighted reconstruction error."""

    def __init__(self, n_features: int, hidden: list[int], bottleneck: int, activation: str = "tanh",
                 bottleneck_activation: str = "tanh"):
        super().__init__()
        enc_sizes = [n_features, *hidden, bottleneck]
        dec_sizes = [bottleneck, *reversed(hidden), n_features]
        self.encoder = MLP(enc_sizes, [activation] * len(hidden) + [bottleneck_activation])
        self.decoder = MLP(dec_sizes, [activation] * len(hidden) + ["identity"])

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
