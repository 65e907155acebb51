"""The autoencoder of Belkacemi et al. (2022): features → bottleneck (the CV) → features."""
from __future__ import annotations

import torch
from torch import Tensor, nn

_ACT = {"tanh": nn.Tanh, "softplus": nn.Softplus, "relu": nn.ReLU, "elu": nn.ELU, "identity": nn.Identity}


class MLP(nn.Module):
    """A stack of Linear layers with the given activations after each.

    ``activations`` has one name per layer; it is kept as a list of strings so that an
    exported CV can be rebuilt by the fast path (:mod:`cvflow.fastcv`).
    """

    def __init__(self, sizes: list[int], activations: list[str]):
        super().__init__()
        assert len(activations) == len(sizes) - 1
        layers: list[nn.Module] = []
        for n_in, n_out, act in zip(sizes[:-1], sizes[1:], activations):
            layers += [nn.Linear(n_in, n_out), _ACT[act]()]
        self.net = nn.Sequential(*layers)
        self.activations = list(activations)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def linear_sequential(self) -> nn.Sequential:
        """The layers as one Sequential (Linear, activation, Linear, ...)."""
        return self.net


def weighted_mse(x: Tensor, x_hat: Tensor, w: Tensor) -> Tensor:
    """Σ_j w_j ‖x_j − x̂_j‖² / n over a batch of n frames, the weights not squared.

    The trainer gives weights with mean one over the data set, so over the whole set this
    is Σ w‖x − x̂‖² / Σ w, and over a uniformly drawn minibatch it is an unbiased estimate
    of it. (Dividing each batch by its own Σw would be a ratio estimator, biased where the
    weights are uneven: it under-weights the heaviest frames.)
    """
    return (w * ((x - x_hat) ** 2).sum(dim=-1)).sum() / w.shape[0]


class Autoencoder(nn.Module):
    """Encoder with a bottleneck (tanh, bounded, by default; or identity) and a mirrored
    decoder with linear output."""

    #: the values the CV can take with the default tanh bottleneck; the eABF grid stays inside
    cv_range = (-1.0, 1.0)

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

    @classmethod
    def cv_range_for(cls, cfg) -> tuple[float, float]:
        """The values the CV of a model built from ``cfg`` can take."""
        return cls.cv_range if cfg.bottleneck_activation == "tanh" else (-float("inf"), float("inf"))

    def forward(self, x: Tensor) -> Tensor:
        return self.decoder(self.encoder(x))

    def loss(self, x: Tensor, w: Tensor) -> Tensor:
        return weighted_mse(x, self(x), w)
