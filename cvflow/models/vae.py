"""The variational autoencoder of Schöberl, Zabaras & Koutsourelakis (2019, 2020).

A latent CV z with prior p(z) = N(0, I), a probabilistic decoder
q_θ(x | z) = N(μ_θ(z), diag σ²_θ(z)) that generates configurations, and an encoder
r_φ(z | x) = N(μ_φ(x), diag σ²_φ(x)) whose **mean is the CV** (``encoder``, the network that
is exported). One class serves both uses:

- as a CV learner in the loop (``model.kind: vae``): :meth:`loss` is minus the evidence lower
  bound (ELBO) of each frame, weighted like the autoencoder's reconstruction error;
- in ``cvflow cg`` (:mod:`cvflow.cg`): trained on frames (forward KL, with the Bayesian
  decoder of :mod:`cvflow.cg`) or on the energy alone (reverse KL, :meth:`sample_joint`).

Units: whatever the features are (normalised by the trainer); log-densities in nats.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .base import MLP, CVModel, Unsqueeze1, encoder_mlp

LOG_2PI = math.log(2 * math.pi)
LOGVAR_MIN, LOGVAR_MAX = -14.0, 6.0  # log σ² clamp (features of order one): no collapse, no blow-up


def gaussian_log_prob(x: Tensor, mean: Tensor, logvar: Tensor) -> Tensor:
    """Σ_d log N(x_d; mean_d, exp(logvar_d)) over the last axis."""
    return -0.5 * (LOG_2PI + logvar + (x - mean) ** 2 * torch.exp(-logvar)).sum(-1)


def log_prior(z: Tensor) -> Tensor:
    """log N(z; 0, I), summed over the last axis."""
    return -0.5 * (LOG_2PI + z ** 2).sum(-1)


class _Head(nn.Module):
    """The first ``n`` outputs of a network (the decoder's mean, for the loop's decoder file)."""

    def __init__(self, net: nn.Module, n: int):
        super().__init__()
        self.net = net
        self.n = int(n)

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z)[..., : self.n]


class VAE(CVModel):
    """Encoder mean (the CV) and log-variance networks; a decoder with mean and log-variance
    outputs.

    Parameters
    ----------
    n_features : int
    hidden : hidden layers of the encoder (the decoder mirrors them)
    latent : the dimension of z (the CV)
    activation, bottleneck_activation : as for the autoencoder (the CV layer: tanh or identity)
    kl_weight : the weight of KL(r(z|x) ‖ p(z)) in the loss at the end of the warm-up (1: the ELBO)
    kl_warmup : epochs over which that weight rises linearly from 0 (no early stop before)
    """

    def __init__(self, n_features: int, hidden: list[int], latent: int, activation: str = "tanh",
                 bottleneck_activation: str = "identity", kl_weight: float = 1.0, kl_warmup: int = 0,
                 decoder_gain: bool = False):
        super().__init__()
        self.n_features = int(n_features)
        self.latent = int(latent)
        self.encoder = encoder_mlp(n_features, hidden, latent, activation, bottleneck_activation)
        self.encoder_logvar = MLP([n_features, *hidden, latent], [activation] * len(hidden) + ["identity"])
        self.decoder = MLP([latent, *reversed(hidden), 2 * n_features], [activation] * len(hidden) + ["identity"])
        # a learned log-gain on z before the decoder (cvflow cg): Adam moves a weight by about
        # the learning rate per step, so a sharp step in μ(z) (the boundary between two modes)
        # takes thousands of steps to grow; a gain grows it multiplicatively
        self.decoder_log_gain = nn.Parameter(torch.zeros(latent)) if decoder_gain else None
        self.kl_weight = float(kl_weight)
        self.annealing_epochs = int(kl_warmup)
        self._kl_now = self.kl_weight if kl_warmup == 0 else 0.0

    @classmethod
    def from_config(cls, cfg, n_features: int) -> "VAE":
        v = cfg.vae
        return cls(n_features, list(cfg.hidden), cfg.bottleneck, cfg.activation, cfg.bottleneck_activation,
                   v.kl_weight, v.kl_warmup)

    # -- the two conditionals ---------------------------------------------------------------
    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(mean, log-variance) of r_φ(z | x)."""
        return self.encoder(x), self.encoder_logvar(x).clamp(LOGVAR_MIN, LOGVAR_MAX)

    def decode(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """(mean, log-variance) of q_θ(x | z)."""
        out = self.decoder(self.decoder_input(z))
        return out[..., : self.n_features], out[..., self.n_features:].clamp(LOGVAR_MIN, LOGVAR_MAX)

    def decoder_input(self, z: Tensor) -> Tensor:
        """What the decoder network reads: z, times the learned gain where there is one."""
        return z if self.decoder_log_gain is None else z * torch.exp(self.decoder_log_gain)

    def decoder_parameters(self) -> list[nn.Parameter]:
        """The generative side's parameters (θ): the decoder network and its gain."""
        return list(self.decoder.parameters()) + ([] if self.decoder_log_gain is None else [self.decoder_log_gain])

    def forward(self, x: Tensor) -> Tensor:
        """The reconstruction μ_θ(μ_φ(x))."""
        return self.decode(self.encoder(x))[0]

    # -- forward KL: minus the ELBO of frames --------------------------------------------------
    def neg_elbo(self, x: Tensor, kl_weight: float = 1.0, sample: bool = True) -> Tensor:
        """−ELBO per frame, −E_r[log q_θ(x|z)] + kl_weight · KL(r(z|x) ‖ N(0, I)) (nats), with
        one reparameterised z (or z = μ_φ(x) when ``sample`` is False)."""
        mu, logvar = self.encode(x)
        z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu) if sample else mu
        xm, xlv = self.decode(z)
        kl = 0.5 * (mu ** 2 + torch.exp(logvar) - 1.0 - logvar).sum(-1)
        return -gaussian_log_prob(x, xm, xlv) + kl_weight * kl

    def loss(self, x: Tensor, w: Tensor) -> Tensor:
        """Σ_j w_j (−ELBO_j) / n; in eval mode with z at the encoder mean (a deterministic
        validation loss for early stopping)."""
        return (w * self.neg_elbo(x, self._kl_now, sample=self.training)).sum() / w.shape[0]

    def start_epoch(self, epoch: int, epochs: int) -> None:
        if self.annealing_epochs > 0:
            self._kl_now = self.kl_weight * min(1.0, epoch / self.annealing_epochs)

    # -- reverse KL: the model's own samples ---------------------------------------------------
    def sample_joint(self, n: int) -> tuple[Tensor, Tensor, Tensor]:
        """n draws (z, x) of q(x, z) = p(z) q_θ(x|z), reparameterised, and log q(x, z)."""
        z = torch.randn(n, self.latent, dtype=self.decoder.net[0].weight.dtype)
        xm, xlv = self.decode(z)
        x = xm + torch.exp(0.5 * xlv) * torch.randn_like(xm)
        return z, x, log_prior(z) + gaussian_log_prob(x, xm, xlv)

    def log_r(self, z: Tensor, x: Tensor) -> Tensor:
        """log r_φ(z | x)."""
        mu, logvar = self.encode(x)
        return gaussian_log_prob(z, mu, logvar)

    def log_marginal_upper(self, z0: Tensor, x: Tensor, k: int) -> Tensor:
        """An upper bound on log q(x) in expectation, for x drawn from q(x | z0), z0 ~ p(z):
        log (1/(k+1)) Σ_{i=0..k} p(z_i) q_θ(x|z_i) / r_φ(z_i|x) with z_1..z_k ~ r_φ(z|x) and
        the generating z0 among them (the importance-weighted hierarchical bound of Sobolev &
        Vetrov 2019). k = 0 is the encoder bound log p(z0) + log q(x|z0) − log r(z0|x); it
        tightens as k grows, and, unlike an importance-sampling estimate (a lower bound),
        minimising it cannot exploit a poor encoder."""
        mu, logvar = self.encode(x)
        z = torch.cat([z0[None], mu + torch.exp(0.5 * logvar) * torch.randn(k, *mu.shape, dtype=mu.dtype)])
        return torch.logsumexp(self._log_weights(z, x, mu, logvar), 0) - math.log(k + 1)

    def _log_weights(self, z: Tensor, x: Tensor, mu: Tensor, logvar: Tensor) -> Tensor:
        """log p(z) + log q_θ(x|z) − log r(z|x) for draws z (k, n, latent) of each x (n, d),
        with r's (mu, logvar) given: the importance weights of q(x) under r."""
        xm, xlv = self.decode(z)
        return log_prior(z) + gaussian_log_prob(x.expand_as(xm), xm, xlv) - gaussian_log_prob(z, mu, logvar)

    def log_marginal_quadrature(self, x: Tensor, points: int = 1024, half_width: float = 7.0) -> Tensor:
        """log q(x) = log ∫ p(z) q_θ(x|z) dz by the trapezoidal rule on ``points`` values of
        a 1-D latent in [−half_width, half_width]: no encoder, differentiable in θ and x."""
        if self.latent != 1:
            raise ValueError("quadrature over z needs a 1-D latent")
        z = torch.linspace(-half_width, half_width, points, dtype=x.dtype)[:, None, None]
        xm, xlv = self.decode(z)                                             # (points, 1, d)
        lp = log_prior(z) + gaussian_log_prob(x[None], xm, xlv)            # (points, n)
        w = torch.full((points,), math.log(2 * half_width / (points - 1)), dtype=x.dtype)
        w[0] = w[-1] = w[0] - math.log(2)
        return torch.logsumexp(lp + w[:, None], 0)

    def log_marginal(self, x: Tensor, k: int = 64) -> Tensor:
        """log q(x) = log ∫ p(z) q_θ(x|z) dz by importance sampling with r_φ(z|x), k draws
        (unbiased for q(x); a lower bound on log q(x) that tightens as k grows)."""
        mu, logvar = self.encode(x)
        z = mu + torch.exp(0.5 * logvar) * torch.randn(k, *mu.shape, dtype=mu.dtype)
        return torch.logsumexp(self._log_weights(z, x, mu, logvar), 0) - math.log(k)

    # -- the loop's contract ---------------------------------------------------------------------
    @property
    def n_decoders(self) -> int:
        return 1

    def decoder_module(self) -> nn.Module:
        return Unsqueeze1(_Head(self.decoder, self.n_features))
