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

from ..internal import wrap_angle
from .base import MLP, CVModel, Unsqueeze1, encoder_mlp

LOG_2PI = math.log(2 * math.pi)
LOGVAR_MIN, LOGVAR_MAX = -14.0, 6.0  # log σ² clamp (features of order one): no collapse, no blow-up
# a periodic feature (a torsion, radians): σ ≤ 2.5, where the wrapped normal is within 4 % of
# uniform, and its log-density sums the images k = −3..3 (the next ones are below e⁻¹⁹)
PERIODIC_SIGMA_MAX = 2.5
PERIODIC_LOGVAR_MAX = 2 * math.log(PERIODIC_SIGMA_MAX)
WRAPS = torch.arange(-3, 4, dtype=torch.float64) * 2 * math.pi


def gaussian_log_terms(x: Tensor, mean: Tensor, logvar: Tensor) -> Tensor:
    """log N(x; mean, exp(logvar)), element by element."""
    return -0.5 * (LOG_2PI + logvar + (x - mean) ** 2 * torch.exp(-logvar))


def gaussian_log_prob(x: Tensor, mean: Tensor, logvar: Tensor) -> Tensor:
    """Σ_d log N(x_d; mean_d, exp(logvar_d)) over the last axis."""
    return gaussian_log_terms(x, mean, logvar).sum(-1)


def wrapped_gaussian_log_prob(x: Tensor, mean: Tensor, logvar: Tensor) -> Tensor:
    """Σ_d log of the wrapped normal density (period 2π) of x_d around mean_d, per element
    (not summed): log Σ_k N(δ + 2πk; 0, exp(logvar)), δ = x − mean wrapped into [−π, π)."""
    d = wrap_angle(x - mean)
    return torch.logsumexp(gaussian_log_terms(d[..., None] + WRAPS.to(x.dtype), 0.0, logvar[..., None]), -1)


def log_prior(z: Tensor) -> Tensor:
    """log N(z; 0, I), summed over the last axis."""
    return -0.5 * (LOG_2PI + z ** 2).sum(-1)


class MixturePrior(nn.Module):
    """p(z) = Σ_k π_k N(z; m_k, I): K unit Gaussians whose means m_k are fixed, ``separation``
    apart along the first latent axis (centred on 0), with learned weights π = softmax(logits).

    For the reverse KL (``cvflow cg --no-data``, ``cg.prior_components``). Under N(0, I) a mode
    of weight p must take the prior's tail z₁ > Φ⁻¹(1 − p), where the density is of the order
    of the mode's own mass per unit z: the decoder's boundary there puts a large share of the
    mode's samples into the barrier between the modes, and dropping the mode costs only
    −ln(1 − p) nats. With well separated components, a mode's weight is a parameter, its
    boundary lies where the prior has almost no mass, and the optimum weight is the mode's
    share of the partition function (the loss of each component is its free energy).
    """

    def __init__(self, latent: int, components: int, separation: float):
        super().__init__()
        means = torch.zeros(components, latent, dtype=torch.float64)
        means[:, 0] = separation * (torch.arange(components, dtype=torch.float64) - (components - 1) / 2)
        self.register_buffer("means", means)
        self.logits = nn.Parameter(torch.zeros(components, dtype=torch.float64))

    @property
    def weights(self) -> Tensor:
        return torch.softmax(self.logits, 0)

    def log_prob(self, z: Tensor) -> Tensor:
        """log p(z), z of shape (..., latent)."""
        m = self.means.to(z.dtype)
        lp = -0.5 * (LOG_2PI + (z[..., None, :] - m) ** 2).sum(-1) + torch.log_softmax(self.logits, 0).to(z.dtype)
        return torch.logsumexp(lp, -1)

    def sample(self, n: int, generator=None, dtype=torch.float64) -> Tensor:
        """n draws of p(z) (the component by its weight: not differentiable in π)."""
        k = torch.multinomial(self.weights.detach(), n, replacement=True, generator=generator)
        return self.means[k].to(dtype) + torch.randn(n, self.means.shape[1], generator=generator, dtype=dtype)

    def strata(self, n: int, dtype=torch.float64) -> tuple[Tensor, Tensor]:
        """n draws, an equal share from each component, and weights w of mean ~1 such that
        mean(w · f(z)) estimates E_p[f(z)] = Σ_k π_k E_k[f]: differentiable in π (the
        components' weights get their exact gradient, not a score-function estimate)."""
        K, latent = self.means.shape
        counts = [n // K + (1 if k < n % K else 0) for k in range(K)]
        comp = torch.repeat_interleave(torch.arange(K), torch.tensor(counts))
        z = self.means[comp].to(dtype) + torch.randn(n, latent, dtype=dtype)
        w = self.weights.to(dtype)[comp] * n / torch.tensor(counts, dtype=dtype)[comp]
        return z, w


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
                 decoder_gain: bool = False, prior_components: int = 1, prior_separation: float = 6.0):
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
        # p(z): N(0, I), or a mixture of unit Gaussians with learned weights (cvflow cg --no-data)
        self.prior = MixturePrior(latent, prior_components, prior_separation) if prior_components > 1 else None
        self.periodic: Tensor | None = None  # a mask of periodic features (set_periodic)
        self.periodic_logvar_max = PERIODIC_LOGVAR_MAX
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
        logvar = out[..., self.n_features:].clamp(LOGVAR_MIN, LOGVAR_MAX)
        if self.periodic is not None:
            logvar = torch.where(self.periodic, logvar.clamp(max=self.periodic_logvar_max), logvar)
        return out[..., : self.n_features], logvar

    def set_periodic(self, mask, sigma_max: float = PERIODIC_SIGMA_MAX) -> None:
        """Mark features as periodic (torsions in radians, period 2π): q_θ(x | z) is then a
        wrapped normal in them. The plain normal's log-density in an unwrapped torsion falls
        without bound as σ grows while the energy no longer changes, so the reverse KL would
        widen such torsions until the clamp (measured on alanine dipeptide: the methyl
        hydrogens' torsions went uniform and their H–C–H angles cost ~800 kT).

        ``sigma_max`` (radians, at most 2.5) caps σ in those torsions: a small cap leaves the
        decoder no way to spread a torsion over several wells but through z (``cg.torsion_sigma_max``)."""
        self.periodic = None if mask is None else torch.as_tensor(mask, dtype=torch.bool)
        self.periodic_logvar_max = 2 * math.log(min(float(sigma_max), PERIODIC_SIGMA_MAX))

    def decoder_log_prob(self, x: Tensor, mean: Tensor, logvar: Tensor) -> Tensor:
        """log q_θ(x | z) from the decoder's (mean, logvar), summed over the features."""
        if self.periodic is None:
            return gaussian_log_prob(x, mean, logvar)
        return torch.where(self.periodic, wrapped_gaussian_log_prob(x, mean, logvar),
                           gaussian_log_terms(x, mean, logvar)).sum(-1)

    def decoder_input(self, z: Tensor) -> Tensor:
        """What the decoder network reads: z, times the learned gain where there is one."""
        return z if self.decoder_log_gain is None else z * torch.exp(self.decoder_log_gain)

    def decoder_parameters(self) -> list[nn.Parameter]:
        """The generative side's parameters (θ): the decoder network, its gain, and the mixture
        prior's weights."""
        return (list(self.decoder.parameters()) + ([] if self.decoder_log_gain is None else [self.decoder_log_gain])
                + ([] if self.prior is None else [self.prior.logits]))

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
    def log_p_z(self, z: Tensor) -> Tensor:
        """log p(z) of the model's prior."""
        return log_prior(z) if self.prior is None else self.prior.log_prob(z)

    def sample_prior(self, n: int, generator=None) -> Tensor:
        """n draws of p(z)."""
        dtype = self.decoder.net[0].weight.dtype
        if self.prior is None:
            return torch.randn(n, self.latent, generator=generator, dtype=dtype)
        return self.prior.sample(n, generator, dtype)

    def prior_range(self, margin: float = 2.5) -> tuple[float, float]:
        """From ``margin`` below the prior's lowest mean on z₁ to ``margin`` above its highest
        (0 for N(0, I)): where p(z) has its mass along the first latent axis."""
        m = [0.0] if self.prior is None else self.prior.means[:, 0].tolist()
        return min(m) - margin, max(m) + margin

    def sample_joint(self, n: int, stratified: bool = False) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """n draws (z, x) of q(x, z) = p(z) q_θ(x|z), reparameterised, log q(x, z), and the
        draws' weights (all 1, or with ``stratified`` and a mixture prior, the strata's weights
        of :meth:`MixturePrior.strata`: then average w · f, not f)."""
        dtype = self.decoder.net[0].weight.dtype
        if stratified and self.prior is not None:
            z, w = self.prior.strata(n, dtype)
        else:
            z, w = self.sample_prior(n), torch.ones(n, dtype=dtype)
        xm, xlv = self.decode(z)
        x = xm + torch.exp(0.5 * xlv) * torch.randn_like(xm)
        return z, x, self.log_p_z(z) + self.decoder_log_prob(x, xm, xlv), w

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
        return self.log_p_z(z) + self.decoder_log_prob(x.expand_as(xm), xm, xlv) - gaussian_log_prob(z, mu, logvar)

    def log_marginal_quadrature(self, x: Tensor, points: int = 1024, half_width: float = 7.0) -> Tensor:
        """log q(x) = log ∫ p(z) q_θ(x|z) dz by the trapezoidal rule on ``points`` values of
        a 1-D latent, from half_width below the prior's lowest mean to half_width above its
        highest: no encoder, differentiable in θ and x."""
        if self.latent != 1:
            raise ValueError("quadrature over z needs a 1-D latent")
        lo, hi = self.prior_range(half_width)
        z = torch.linspace(lo, hi, points, dtype=x.dtype)[:, None, None]
        xm, xlv = self.decode(z)                                             # (points, 1, d)
        lp = self.log_p_z(z) + self.decoder_log_prob(x[None].expand(len(z), -1, -1), xm, xlv)  # (points, n)
        w = torch.full((points,), math.log((hi - lo) / (points - 1)), dtype=x.dtype)
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
