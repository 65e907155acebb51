"""What every kind of CV model provides (the registry's contract), and the building blocks.

The loop knows models only through :class:`CVModel`:

- ``from_config(model_cfg, n_features)`` builds one; ``cv_range_for(model_cfg)`` is the
  interval its CV lives in (the eABF grid stays inside it);
- ``encoder`` is an :class:`MLP` from normalised features to the CV: it alone is exported
  as the CV file, so both bias engines, the regscore and the bootstrap never see the rest;
- ``loss(x, w)`` is the training objective on a batch, Σ_j w_j ℓ(x_j) / n for weights of
  mean one over the data set (:func:`weighted_mse`); a frame's ℓ is whatever the kind
  minimises (reconstruction error, minus an ELBO, ...). In ``eval()`` mode it is the
  objective that validation and early stopping use;
- ``start_epoch(epoch, epochs)`` is called before each epoch, for schedules (a soft-min
  temperature, a KL warm-up); ``annealing_epochs`` is how many epochs such a schedule
  runs: early stopping waits for them;
- ``n_decoders`` is K and ``decoder_module()`` maps the CV z (n, bottleneck) to
  reconstructions (n, K, n_features) in normalised features, or is None for a kind that
  has no decoder. The loop saves it,
  in feature units, as ``iter_NNN/decoder.pt``.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

ACTIVATIONS = {"tanh": nn.Tanh, "softplus": nn.Softplus, "relu": nn.ReLU, "elu": nn.ELU, "identity": nn.Identity}


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
            layers += [nn.Linear(n_in, n_out), ACTIVATIONS[act]()]
        self.net = nn.Sequential(*layers)
        self.activations = list(activations)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def linear_sequential(self) -> nn.Sequential:
        """The layers as one Sequential (Linear, activation, Linear, ...)."""
        return self.net


def encoder_mlp(n_features: int, hidden: list[int], bottleneck: int, activation: str,
                bottleneck_activation: str) -> MLP:
    """The encoder every kind shares: features → hidden layers → the CV."""
    return MLP([n_features, *hidden, bottleneck], [activation] * len(hidden) + [bottleneck_activation])


class MLPBank(nn.Module):
    """K MLPs of the same shape that read the same input, evaluated together:
    (n, n_in) → (n, K, n_out). One batched matrix product per layer (``baddbmm``) instead
    of K small ones. Each member is initialised as ``nn.Linear`` would be."""

    def __init__(self, sizes: list[int], activations: list[str], k: int):
        super().__init__()
        assert len(activations) == len(sizes) - 1 and k >= 1
        self.k = int(k)
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for n_in, n_out in zip(sizes[:-1], sizes[1:]):
            bound = 1.0 / math.sqrt(n_in)
            self.weights.append(nn.Parameter(torch.empty(k, n_in, n_out).uniform_(-bound, bound)))
            self.biases.append(nn.Parameter(torch.empty(k, 1, n_out).uniform_(-bound, bound)))
        self.acts = nn.ModuleList([ACTIVATIONS[a]() for a in activations])

    def forward(self, z: Tensor) -> Tensor:
        h = z.unsqueeze(0).expand(self.k, z.shape[0], z.shape[1])
        for w, b, act in zip(self.weights, self.biases, self.acts):
            h = act(torch.baddbmm(b, h, w))
        return h.transpose(0, 1)


class Unsqueeze1(nn.Module):
    """Wraps a decoder (n, b) → (n, m) as (n, b) → (n, 1, m): one decoder, K = 1."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z).unsqueeze(1)


def weighted_mse(x: Tensor, x_hat: Tensor, w: Tensor) -> Tensor:
    """Σ_j w_j ‖x_j − x̂_j‖² / n over a batch of n frames, the weights not squared.

    The trainer gives weights with mean one over the data set, so over the whole set this
    is Σ w‖x − x̂‖² / Σ w, and over a uniformly drawn minibatch it is an unbiased estimate
    of it. (Dividing each batch by its own Σw would be a ratio estimator, biased where the
    weights are uneven: it under-weights the heaviest frames.)
    """
    return (w * ((x - x_hat) ** 2).sum(dim=-1)).sum() / w.shape[0]


class CVModel(nn.Module):
    """Base class of the registry's model kinds (see the module docstring)."""

    encoder: MLP
    #: epochs during which the objective is still being annealed (no early stop before)
    annealing_epochs: int = 0

    @classmethod
    def from_config(cls, cfg, n_features: int) -> "CVModel":
        raise NotImplementedError

    @classmethod
    def cv_range_for(cls, cfg) -> tuple[float, float]:
        """The values the CV of a model built from ``cfg`` can take: (−1, 1) with a tanh
        bottleneck, unbounded with identity."""
        return (-1.0, 1.0) if getattr(cfg, "bottleneck_activation", "tanh") == "tanh" else (-math.inf, math.inf)

    def loss(self, x: Tensor, w: Tensor) -> Tensor:
        raise NotImplementedError

    def start_epoch(self, epoch: int, epochs: int) -> None:
        """Called before each epoch (1-based); schedules override it."""

    @property
    def n_decoders(self) -> int:
        """K, the number of decoders (0 for a kind without one)."""
        return 0

    def decoder_module(self) -> nn.Module | None:
        """z (n, bottleneck) → reconstructions (n, K, n_features), normalised; or None."""
        return None
