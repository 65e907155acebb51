"""``cvflow cg``: probabilistic coarse-graining with the VAE of Schöberl, Zabaras &
Koutsourelakis (2019: from data; 2020: from the force field alone).

The model (:class:`cvflow.models.vae.VAE`, the same class the loop trains with
``model.kind: vae``): a latent z ~ N(0, I), a decoder q_θ(x | z) = N(μ_θ(z), diag σ²_θ(z))
that generates configurations, and an encoder r_φ(z | x) whose mean is the CV. Its space:
a toy's (x, y), standardised; a molecule's Cartesian coordinates of every atom, centred,
rotated onto a reference structure (Kabsch) and divided by one global scale.

Two ways to learn it, two sets of stages (recorded in ``manifest.json``; ``--resume``
continues at the first missing stage, and training from ``checkpoint.pt``):

``--from RUN_DIR`` (forward KL): **data** (the run's frames and weights, ``cg.n_frames`` of
them, evenly spaced; with ``cg.frame_weights: biased``, also each stage's reweighting factor
as a function of its CV, :mod:`cvflow.stage_weights`) → **train** (the ELBO of the frames as
sampled, or weighted by their factors, with an ARD prior on the decoder's
weights whose precisions are re-estimated every ``cg.ard_every`` steps) → **posterior** (a
Laplace approximation of p(θ_out | data) for the output layer of the decoder mean, exact for
a Gaussian likelihood given the hidden activations) → **sample** (``cg.posterior_draws``
decoders drawn from it, or from its Student-t with ``cg.posterior_noise: marginal``, each
generating its share of ``cg.samples``; with ``biased``, ``cg.oversample`` times as many,
resampled by the factors) → **analysis**
(observables per draw → 95 % credible intervals).

``--no-data`` (reverse KL): **train** (minimise E_q[log q(x, z) − log r(z|x) + β_s U(x)],
an upper bound on KL(q(x) ‖ p_βs) up to log Z, on the model's own reparameterised samples,
with U and forces from OpenMM; β_s tempered, :class:`cvflow.config.TemperingConfig`) →
**sample** → **analysis**. No MD is run.

Bounds (``tempering.csv``): with L = log q(x, z) − log r(z|x) + β_s U(x) on the model's
samples, −E[L] ≤ log Z_βs ≤ ½ log E[e^{−2L}] (the ELBO and the χ² upper bound, CUBO), and
log E[e^{−L}] estimates log Z_βs. Units: nm, kJ/mol, log-densities in nats of nm⁻ᵈ.
"""
from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch

from . import artifacts as art, stage_weights
from .config import Config, ConfigError, dump_config
from .energy import energy, regularised
from .generative import GenerativeRun, prepare_output_dir, stage_md_dir
from .internal import wrap_angle
from .models.vae import VAE
from .progress import log
from .report import phi_psi_degrees
from .sampler import derive_seed
from .stop import StopRequested, stop_requested
from .train import TrainingError

LAPLACE_Z_DRAWS = 8          # z per frame in the Laplace precision (a Monte Carlo over r(z|x))
GAMMA_A0 = GAMMA_B0 = 1e-6   # the ARD precisions' Gamma hyperprior (nearly flat in log α; cg.ard_b0)


# -- the VAE's space ---------------------------------------------------------------------------
class CGSpace:
    """Configurations ↔ the VAE's vectors v: x = mean + scale · v (toys: (n, 2); molecules:
    (n, N, 3) after centring and Kabsch rotation onto ``reference``; one scale).

    log|dx/dv| = Σ log scale over the coordinates, so log q(x) = log q(v) − that.
    """

    def __init__(self, mean: np.ndarray, scale: np.ndarray, reference: np.ndarray | None = None):
        self.mean = np.asarray(mean, np.float64).reshape(-1)
        self.scale = np.broadcast_to(np.asarray(scale, np.float64), self.mean.shape).copy()
        self.reference = None if reference is None else np.asarray(reference, np.float64)

    @property
    def dim(self) -> int:
        return len(self.mean)

    @property
    def log_det(self) -> float:
        """log|dx/dv|."""
        return float(np.log(self.scale).sum())

    @classmethod
    def fit(cls, x: np.ndarray | None, w: np.ndarray | None, toy: bool, structure: np.ndarray | None = None):
        """From frames (weighted mean; toys: each coordinate's weighted standard deviation,
        molecules: one global one). Without frames: the unit map (toys) or the structure."""
        if toy:
            if x is None:
                return cls(np.zeros(2), np.ones(2))
            m, s = _weighted_moments(x, w)
            return cls(m, np.maximum(s, 1e-3))
        ref = (x[0] if x is not None else structure).astype(np.float64)
        ref = ref - ref.mean(0)
        if x is None:
            return cls(ref.reshape(-1), 0.05, ref)
        v = cls(ref.reshape(-1), 1.0, ref).align(x).reshape(len(x), -1)
        m, s = _weighted_moments(v, w)
        return cls(m, float(np.sqrt(np.mean(s ** 2))), ref)

    def align(self, x: np.ndarray) -> np.ndarray:
        """Molecules: frames (n, N, 3) centred and rotated onto the reference."""
        from .features import kabsch_rotation
        xt = torch.as_tensor(np.asarray(x, np.float64))
        xt = xt - xt.mean(1, keepdim=True)
        return (xt @ kabsch_rotation(xt, torch.as_tensor(self.reference))).numpy()

    def to_v(self, x: np.ndarray) -> np.ndarray:
        flat = (x if self.reference is None else self.align(x)).reshape(len(x), -1)
        return (flat - self.mean) / self.scale

    def to_x(self, v):
        """v (n, dim) → configurations (toys (n, 2); molecules (n, N, 3)); numpy or torch."""
        if isinstance(v, torch.Tensor):
            flat = torch.as_tensor(self.mean) + torch.as_tensor(self.scale) * v.double()
        else:
            flat = self.mean + self.scale * np.asarray(v, np.float64)
        return flat if self.reference is None else flat.reshape(len(v), -1, 3)

    def forward(self, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """v → (configurations, log|dx/dv| per sample), differentiable."""
        return self.to_x(v), torch.full((len(v),), self.log_det, dtype=torch.float64)

    def periodic(self) -> None:
        """No periodic features (Cartesian or toy coordinates)."""
        return None

    def params(self) -> dict:
        return {"kind": "cartesian", "mean": self.mean.tolist(), "scale": self.scale.tolist(),
                "reference": None if self.reference is None else self.reference.tolist()}

    @classmethod
    def from_params(cls, p: dict, zmatrix=None):
        if p.get("kind") == "internal":
            return InternalSpace.from_params(p, zmatrix)
        return cls(p["mean"], p["scale"], p["reference"])


class InternalSpace:
    """A molecule's internal coordinates (:mod:`cvflow.internal`) ↔ the VAE's v, for
    training from the energy alone: v = ((b − b₀)/s_b, (a − a₀)/s_a, t − t₀) for the free
    bonds, the angles and the torsions, around the structure's values (b₀, a₀, t₀), with
    ``bond_scale`` nm and ``angle_scale`` rad; bonds that the system constrains are held at
    their length. A Gaussian decoder on v then starts near the structure instead of at
    arbitrary torsions. v → x is onto the shapes (the rigid-body motion removed), with
    log|dx/dv| = Σ (2 log|b| + log|sin a|) + Σ log s (a bond or an angle that leaves its
    range maps onto a valid shape too; its local Jacobian is still exact, so log q(x) is
    bounded below and the reverse-KL objective stays an upper bound).
    """

    def __init__(self, zmatrix, structure: np.ndarray, constraints: dict, bond_scale: float = 0.01,
                 angle_scale: float = 0.1):
        from .flows import MoleculeCoordinates
        self.zmatrix = zmatrix
        self.structure = np.asarray(structure, np.float64)
        self.constraints = dict(constraints)
        b, a, t = (q[0] for q in zmatrix.to_internal(torch.as_tensor(self.structure[None])))
        pairs = MoleculeCoordinates.bond_pairs(zmatrix)
        fixed = np.array([constraints.get(tuple(sorted(p)), np.nan) for p in pairs], float)
        self.free = torch.as_tensor(np.isnan(fixed))
        self.b0 = torch.where(self.free, b, torch.as_tensor(np.nan_to_num(fixed)))
        self.a0, self.t0 = a, t
        self.sb, self.sa = float(bond_scale), float(angle_scale)
        self.n_free = int(self.free.sum())
        self.reference = None

    @property
    def dim(self) -> int:
        return self.n_free + len(self.a0) + len(self.t0)

    def forward(self, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        v = v.double()
        nb, na = self.n_free, len(self.a0)
        bonds = self.b0.expand(len(v), -1).clone()
        bonds[:, self.free] = self.b0[self.free] + self.sb * v[:, :nb]
        angles = self.a0 + self.sa * v[:, nb:nb + na]
        tors = self.t0 + v[:, nb + na:]
        x, _ = self.zmatrix.to_cartesian(bonds, angles, tors)
        logdet = ((2 * torch.log(bonds.abs())).sum(-1) + torch.log(torch.sin(angles).abs()).sum(-1)
                  + nb * math.log(self.sb) + na * math.log(self.sa))
        return x, logdet

    def to_x(self, v):
        x = self.forward(torch.as_tensor(v))[0]
        return x if isinstance(v, torch.Tensor) else x.numpy()

    def to_v(self, x: np.ndarray) -> np.ndarray:
        b, a, t = self.zmatrix.to_internal(torch.as_tensor(np.asarray(x, np.float64)))
        dt = wrap_angle(t - self.t0)
        return torch.cat([(b[:, self.free] - self.b0[self.free]) / self.sb, (a - self.a0) / self.sa, dt], 1).numpy()

    def periodic(self) -> np.ndarray:
        """The torsions (the last features of v) are periodic."""
        return np.arange(self.dim) >= self.n_free + len(self.a0)

    def params(self) -> dict:
        return {"kind": "internal", "structure": self.structure.tolist(),
                "constraints": [[i, j, d] for (i, j), d in self.constraints.items()],
                "bond_scale": self.sb, "angle_scale": self.sa}

    @classmethod
    def from_params(cls, p: dict, zmatrix) -> "InternalSpace":
        cons = {(int(i), int(j)): float(d) for i, j, d in p["constraints"]}
        return cls(zmatrix, np.array(p["structure"]), cons, p["bond_scale"], p["angle_scale"])


def _weighted_moments(x: np.ndarray, w: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Weighted mean and standard deviation of the rows of x (uniform weights if None)."""
    w = np.ones(len(x)) if w is None else np.asarray(w, float)
    w = w / w.sum()
    m = (w[:, None] * x).sum(0)
    return m, np.sqrt((w[:, None] * (x - m) ** 2).sum(0))


# -- the ARD prior and the Laplace posterior of the decoder ----------------------------------
def decoder_weights(model: VAE) -> list[torch.nn.Parameter]:
    """The decoder's weight matrices (the ARD prior's parameters; biases have none)."""
    return [m.weight for m in model.decoder.net if isinstance(m, torch.nn.Linear)]


def ard_update(weights: list[torch.Tensor], b0: float = GAMMA_B0) -> list[torch.Tensor]:
    """Each weight's precision α = (a₀ + ½) / (b₀ + ½ θ²), the mode of its Gamma posterior
    given θ (MAP-II, a Student-t prior on θ: sparsity; ``b0`` caps α at (a₀ + ½)/b₀)."""
    return [(GAMMA_A0 + 0.5) / (b0 + 0.5 * w.detach() ** 2) for w in weights]


def laplace_output_layer(model: VAE, v: torch.Tensor, w: torch.Tensor, alpha_out: torch.Tensor,
                         seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The Gaussian posterior of the decoder mean's output layer [W | b] (D, H + 1).

    With the rest of θ at its MAP, the log-likelihood Σ_j w_j E_r[log q(v_j | z)] is
    quadratic in row d of the mean layer, with precision Σ_j w_j E_r[h̃ h̃ᵀ / σ_d²] (h̃: the
    last hidden layer at z, and a 1 for the bias); the prior adds diag(α_d, ε). Returns the
    MAP rows (D, H + 1) and the Cholesky factors of the covariances (D, H + 1, H + 1)."""
    g = torch.Generator().manual_seed(seed)
    d = model.n_features
    last = model.decoder.net[-2]
    trunk = model.decoder.net[:-2]
    with torch.no_grad():
        mu, logvar = model.encode(v)
        prec = torch.zeros(d, last.in_features + 1, last.in_features + 1, dtype=torch.float64)
        for _ in range(LAPLACE_Z_DRAWS):
            z = mu + torch.exp(0.5 * logvar) * torch.randn(mu.shape, generator=g)
            h = trunk(model.decoder_input(z)).double()
            ht = torch.cat([h, torch.ones(len(h), 1, dtype=torch.float64)], 1)
            inv_var = torch.exp(-model.decode(z)[1]).double()                    # (n, D)
            prec += torch.einsum("n,nd,ni,nj->dij", w.double(), inv_var, ht, ht) / LAPLACE_Z_DRAWS
        diag = torch.cat([alpha_out.double(), torch.full((d, 1), 1e-6, dtype=torch.float64)], 1)
        prec += torch.diag_embed(diag)
        cov = torch.linalg.inv(prec)
        cov = 0.5 * (cov + cov.transpose(1, 2))
        chol = torch.linalg.cholesky(cov)
        rows = torch.cat([last.weight[:d].double(), last.bias[:d, None].double()], 1)
    return rows, chol


def set_output_rows(model: VAE, rows: torch.Tensor) -> None:
    """Put rows [W | b] (D, H + 1) into the decoder mean's output layer."""
    d = model.n_features
    last = model.decoder.net[-2]
    with torch.no_grad():
        last.weight[:d] = rows[:, :-1].to(last.weight.dtype)
        last.bias[:d] = rows[:, -1].to(last.bias.dtype)


# -- the run -------------------------------------------------------------------------------------
class CGRun(GenerativeRun):
    """One ``cvflow cg`` directory (see the module docstring).

    Parameters
    ----------
    cfg : Config
        With a ``cg`` section.
    out_dir : Path
    from_run : Path, optional
        A finished cvflow run: its frames and weights train the model (forward KL).
        Without it the model learns from the energy alone (reverse KL).
    """

    command = "cvflow cg"

    def __init__(self, cfg: Config, out_dir: Path, from_run: Path | None = None, progress=None):
        platform = cfg.cg.platform if cfg.cg is not None else "Reference"
        super().__init__(cfg, out_dir, from_run, progress, "cg", 40_000, platform)
        self.cgc = cfg.cg
        self.mode = "data" if from_run is not None else "energy"
        if self.mode == "data" and self.cgc is not None and self.cgc.prior_components > 1:
            raise ConfigError(f"cg.prior_components: {self.cgc.prior_components} (a mixture prior) is for "
                              f"--no-data; training on frames (--from) uses N(0, I)")
        if self.mode == "energy" and self.cgc is not None and self.cgc.ensemble > 1:
            raise ConfigError(f"cg.ensemble: {self.cgc.ensemble} (bootstrap members on the frames) is for "
                              f"--from; --no-data trains one model on the energy")
        self._member = 0  # the ensemble member being trained (cg.ensemble)

    def run(self) -> dict:
        if self.mode == "data":
            self._stage("data", self._data)
        self._stage("train", self._train)
        if self.mode == "data":
            self._stage("posterior", self._posterior)
        self._stage("sample", self._sample)
        info = self._stage("analysis", self._analyse)
        from .cg_report import write_cg_report
        return self._with_report(info, write_cg_report)

    # -- data ----------------------------------------------------------------------------------
    def _data(self) -> dict:
        parts, weights, sources, stage_of = [], [], [], []
        stages = self._run_frames(self.from_run, self.cgc.frames)
        for k, (stage, x, w) in enumerate(stages):
            if self.cgc.frame_weights == "uniform":
                w = np.ones(len(w))
            parts.append(x)
            weights.append(w / w.sum() * len(w))
            sources.append(f"{self.from_run.name}/{stage}")
            stage_of.append(np.full(len(w), k))
        x, w, stage_of = np.concatenate(parts), np.concatenate(weights), np.concatenate(stage_of)
        n_all = len(x)
        n = self.cgc.n_frames
        if n is not None:
            if n > n_all:
                raise ConfigError(f"cg.n_frames: {n} frames asked for; {self.from_run} has {n_all}")
            if self.cgc.frame_offset == 0:
                pick = np.linspace(0, n_all - 1, n).round().astype(int)
            else:  # the same spacing, shifted by a fraction of it: another, disjoint subset
                pick = np.floor((np.arange(n) + self.cgc.frame_offset) * n_all / n).astype(int)
            x, w, stage_of = x[pick], w[pick], stage_of[pick]
        if w.sum() <= 0:
            raise ConfigError(f"cg.n_frames: the {len(w)} frames picked from {self.from_run} all have weight 0")
        w = w / w.sum() * len(w)
        training = w
        info = {}
        if self.cgc.frame_weights == "biased":  # the model learns the frames as sampled; its samples get w
            info["stage_factors"], per_frame = self._stage_factors(stages, np.bincount(stage_of, minlength=len(stages)))
            training = per_frame[pick] if n is not None else per_frame
            training = training / training.mean()
        art.write_npz(self.out / "data.npz", positions=x, weights=w, training_weights=training)
        from .dataset import effective_sample_size
        ess = effective_sample_size(w / w.sum())
        log.info(f"cg data: {len(x)} of {n_all} frames from {'; '.join(sources)} (ESS {ess:.0f})")
        return {"frames": int(len(x)), "frames_available": int(n_all), "ess": float(ess), "sources": sources, **info}

    def _stage_factors(self, stages, picked: np.ndarray) -> tuple[list[dict], np.ndarray]:
        """frame_weights: biased — each stage's reweighting factor as a function of its CV
        (:mod:`cvflow.stage_weights`), from all of the stage's frames, with the stage's share
        of the picked frames, written to ``reweighting.npz``; and every frame's likelihood
        weight (1, or tempered by ``cg.weight_exponent``)."""
        from .fes import CZARStats
        from .workflow import cv_values
        factors, info, per_frame = [], [], []
        for (stage, x, w), count in zip(stages, picked):
            cv = self.stage_cv(self.from_run, stage)
            czar = stage_md_dir(self.from_run, stage) / "czar.npz"
            grid = CZARStats.load(czar).grid if cv is not None and czar.exists() else None
            xi = None if cv is None else cv_values(cv, self.cv_input(x))
            f = stage_weights.stage_factor(cv, xi, w, count / picked.sum(), grid)
            per_frame.append(stage_weights.tempered_weights(f, xi, len(w), self.cgc.weight_exponent))
            factors.append(f)
            info.append({"stage": stage, "cv": None if cv is None else str(cv), "share": f.share,
                         "bins_visited": None if f.ratio is None else int((f.ratio > 0).sum()),
                         "bins": None if f.grid is None else int(np.prod(f.grid.bins))})
        stage_weights.save(factors, self.out)
        return info, np.concatenate(per_frame)

    # -- the ensemble (cg.ensemble) ------------------------------------------------------------------
    def member_path(self, name: str, k: int = 0) -> Path:
        """Member k's file: ``name`` for the first (the only one without an ensemble), and
        ``stem_k.suffix`` for the others (``cg_1.pt``, ``posterior_1.npz``, ...)."""
        if k == 0:
            return self.out / name
        p = Path(name)
        return self.out / f"{p.stem}_{k}{p.suffix}"

    def member_weights(self, d, k: int) -> np.ndarray:
        """Member k's likelihood weights, mean 1: the frames' training weights, each times an
        Exp(1) draw of the member's own when ``cg.ensemble`` > 1 (the Bayesian bootstrap: a
        draw of the frames' Dirichlet posterior weights, so that the members differ as data
        sets of the same size could)."""
        w = np.asarray(training_weights(d), np.float64)
        if self.cgc.ensemble > 1:
            w = w * np.random.default_rng(derive_seed(self.seed, 9, k)).exponential(size=len(w))
        return w / w.mean()

    def _member_seed(self, k: int, *keys: int) -> int:
        """A seed of member k: member 0's are the single model's."""
        return derive_seed(self.seed, *keys) if k == 0 else derive_seed(self.seed, *keys, 1000 + k)

    # -- the model ---------------------------------------------------------------------------------
    def space(self) -> CGSpace:
        if self.mode == "data":
            d = np.load(self.out / "data.npz")
            return CGSpace.fit(d["positions"], training_weights(d), self.bundle.is_toy)
        if not self.bundle.is_toy:
            return InternalSpace(self.zmatrix, self.bundle.positions, self.constraints())
        return CGSpace.fit(None, None, True)

    def build_model(self, space: CGSpace) -> VAE:
        torch.manual_seed(self._member_seed(self._member, 0))
        c = self.cgc
        # the decoder gain (see VAE) serves the reverse KL, whose mode boundaries must sharpen
        energy_mode = self.mode == "energy"
        model = VAE(space.dim, list(c.hidden), c.latent, c.activation, "identity", decoder_gain=energy_mode,
                    prior_components=c.prior_components if energy_mode else 1,
                    prior_separation=c.prior_separation).double()
        model.set_periodic(space.periodic(), c.torsion_sigma_max)
        return model

    # -- training ------------------------------------------------------------------------------------
    def _train(self) -> dict:
        """Train the model, or with ``cg.ensemble`` each member in turn (a member already
        trained before an interruption is kept)."""
        members = self.cgc.ensemble  # 1 with --no-data (refused otherwise in __init__)
        space = self.space()  # one space for every member: they model the same frames
        infos = []
        for k in range(members):
            self._member = k
            infos.append(self._train_member(space))
        self._member = 0
        info = dict(infos[0])
        if members > 1:
            info["ensemble"] = [{"steps": i["steps"], "wall_s": i["wall_s"]} for i in infos]
            info["wall_s"] = float(sum(i["wall_s"] for i in infos))
            log.info(f"cg training: {members} ensemble members in {info['wall_s']:.0f} s")
        return info

    def _train_member(self, space: CGSpace) -> dict:
        final = self.member_path("cg.pt", self._member)
        if final.exists():  # trained before an interruption: its record is in the file
            saved = torch.load(final, weights_only=False)
            if "info" in saved:
                return saved["info"]
        model = self.build_model(space)
        opt = torch.optim.Adam(self._param_groups(model), lr=self.cgc.learning_rate)
        state = {"step": 0, "history": [], "levels": [], "beta": self.cgc.tempering.beta_start, "alpha": None,
                 "level_step": 0}
        ckpt_path = self.member_path("checkpoint.pt", self._member)
        if ckpt_path.exists():
            ckpt = torch.load(ckpt_path, weights_only=False)
            model.load_state_dict(ckpt["model"])
            opt.load_state_dict(ckpt["optimizer"])
            state = ckpt["state"]
            self.bridge.evaluations, self.bridge.nonfinite = ckpt["evaluations"], ckpt["nonfinite"]
            log.info(f"cg: resuming training{self._member_label()} at step {state['step']}")
        t0 = time.perf_counter()
        if self.mode == "data":
            self._train_data(model, opt, space, state)
        else:
            self._train_energy(model, opt, space, state)
        wall = time.perf_counter() - t0
        cols = ["step", "loss", "kl_weight" if self.mode == "data" else "beta_fraction"]
        art.write_csv(self.member_path("training.csv", self._member), cols,
                      np.array(state["history"], float).reshape(-1, 3),
                      comments=["loss: minus the weighted ELBO per frame (data; nats) or the reverse-KL objective "
                                "E[log q(x,z) - log r(z|x) + beta_s U] (energy; nats)"])
        info = {"mode": self.mode, "steps": int(state["step"]), "wall_s": wall,
                "energy_evaluations": int(self.bridge.evaluations), "nonfinite_energies": int(self.bridge.nonfinite)}
        if self.mode == "energy":
            info["level_states"] = state.get("level_states", [])
            art.write_csv(self.out / "tempering.csv",
                          ["level", "step", "beta_fraction", "elbo", "log_z", "cubo", "kl_estimate"],
                          np.array(state["levels"], float).reshape(-1, 7),
                          comments=["at beta_s = beta_fraction * beta, after the level's steps: elbo <= log Z_beta_s "
                                    "<= cubo (nats, of the configurations in nm); kl_estimate: the KL of the step to "
                                    "the next level"])
            info["levels"] = len(state["levels"])
        with art.atomic_path(self.member_path("cg.pt", self._member)) as tmp:
            torch.save({"model": model.state_dict(), "space": space.params(), "alpha": state["alpha"],
                        "cg": dump_config(self.cfg)["cg"], "mode": self.mode, "info": info}, tmp)
        return info

    def _member_label(self) -> str:
        return f" (ensemble member {self._member})" if self.cgc.ensemble > 1 else ""  # --from only

    def _param_groups(self, model: VAE) -> list[dict]:
        """The optimiser's groups: the mixture prior's weights (if any) at prior_lr_scale times
        the learning rate. Adam moves a parameter by about the learning rate per step, and a
        mode's logit must travel ~5 (a weight of 1 %) while β_s rises."""
        prior = [] if model.prior is None else [model.prior.logits]
        rest = [p for p in model.parameters() if all(p is not q for q in prior)]
        return [{"params": rest, "lr_scale": 1.0}] + ([{"params": prior, "lr_scale": self.cgc.prior_lr_scale}]
                                                      if prior else [])

    def _checkpoint(self, model, opt, state):
        with art.atomic_path(self.member_path("checkpoint.pt", self._member)) as tmp:
            torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "state": state,
                        "evaluations": self.bridge.evaluations, "nonfinite": self.bridge.nonfinite}, tmp)

    def _after_step(self, model, opt, state, total: int, report, text: str):
        """Checkpoint, SIGTERM and progress after each optimiser step."""
        step = state["step"]
        if step % self.cgc.checkpoint_every == 0:
            self._checkpoint(model, opt, state)
        if stop_requested():
            self._checkpoint(model, opt, state)
            raise StopRequested(f"cg training{self._member_label()}: stopped at step {step}; checkpoint "
                                f"written to {self.member_path('checkpoint.pt', self._member)}")
        if report is not None:
            report(min(step, total), total, text)

    def _fail(self, model, opt, state, what: str):
        self._checkpoint(model, opt, state)
        raise TrainingError(f"cg training{self._member_label()}: {what} at step {state['step']}; the last "
                            f"good state is in {self.member_path('checkpoint.pt', self._member)}")

    def learning_rate(self, step: int) -> float:
        """--from: constant through the KL warm-up, then (``lr_schedule: cosine``) a cosine
        to 0 at the last step, so that the final decoder is not one noisy step's."""
        c = self.cgc
        if c.lr_schedule == "constant" or step < c.kl_warmup:
            return c.learning_rate
        return 0.5 * c.learning_rate * (1 + math.cos(math.pi * (step - c.kl_warmup) / max(1, c.steps - c.kl_warmup)))

    def _train_data(self, model: VAE, opt, space: CGSpace, state: dict) -> None:
        c = self.cgc
        d = np.load(self.out / "data.npz")
        v = torch.as_tensor(space.to_v(d["positions"]))
        w = torch.as_tensor(self.member_weights(d, self._member), dtype=torch.float64)
        # the prior's weight against the data: uneven weights are worth fewer frames (the
        # frames' own weights: a bootstrap member's draws stand for the same data set)
        n = kish_ess(training_weights(d))
        weights = decoder_weights(model)
        alpha = state["alpha"] or [torch.full_like(p, 1e-2) for p in weights]
        label = f", ensemble member {self._member} of 0-{c.ensemble - 1}" if c.ensemble > 1 else ""
        report = self.progress.steps(f"cg training (ELBO{label})") if self.progress else None
        while state["step"] < c.steps:
            step = state["step"]
            torch.manual_seed(self._member_seed(self._member, 1, step))
            kl_w = 1.0 if c.kl_warmup == 0 else min(1.0, (step + 1) / c.kl_warmup)
            for group in opt.param_groups:
                group["lr"] = self.learning_rate(step) * group["lr_scale"]
            idx = torch.multinomial(w, min(c.batch_size, max(len(w), 1) * 4), replacement=True)
            nll = model.neg_elbo(v[idx], kl_w).mean()
            prior = sum(0.5 * (a * p ** 2).sum() for a, p in zip(alpha, weights)) / n if c.ard else 0.0
            loss = nll + prior
            if not torch.isfinite(loss):
                self._fail(model, opt, state, "the loss is not finite")
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 100.0)
            opt.step()
            state["step"] = step + 1
            if c.ard and state["step"] % c.ard_every == 0:
                alpha = ard_update(weights, c.ard_b0)
            state["alpha"] = [a.clone() for a in alpha]
            state["history"].append((step, float(nll.detach()), kl_w))
            self._after_step(model, opt, state, c.steps, report, f"-ELBO {float(nll.detach()):.3f}")

    def _draw(self, model: VAE, space: CGSpace, n: int, beta: float, stratified: bool = False) -> dict:
        """n samples of q(x, z) and what every objective needs of them, computed once: z, v,
        log q(v, z), log|dx/dv|, the reduced energies u = U/kT, the tempered energy β_s u
        regularised (the cut applies to β_s u: at small β_s nothing is cut), and the draws'
        weights w (``stratified``: the mixture prior's strata; averages are then of w · f)."""
        z, v, log_q, w = model.sample_joint(n, stratified)
        x, log_det = space.forward(v)
        u = energy(x, self.bridge) / self.kT
        reg = regularised(beta * u, beta * self._u_ref + self.cgc.energy_cut)
        return {"z": z, "v": v, "log_q": log_q, "log_det": log_det, "u": u, "reg": reg, "w": w}

    def _loss(self, model: VAE, space: CGSpace, beta: float):
        """The reverse-KL loss of one step (see ``cg.entropy``): a tensor, or (the decoder's
        loss, the encoder's) where the two are trained on different objectives."""
        c = self.cgc
        d = self._draw(model, space, c.batch_size, beta, stratified=True)
        z, v, w = d["z"], d["v"], d["w"]
        if c.entropy == "encoder_bound":  # the paper's L = log q(v, z) − log|dx/dv| − log r(z|v) + β_s U
            return (w * (d["log_q"] - d["log_det"] - model.log_r(z, v) + d["reg"])).mean()
        if c.entropy == "quadrature":
            # the exact log q(x) over a 1-D latent (the reverse KL itself); the encoder, which
            # the entropy then does not need, fits q(z|x) on the model's samples
            log_qx = model.log_marginal_quadrature(v) - d["log_det"]
            return (w * (log_qx + d["reg"])).mean() - model.log_r(z.detach(), v.detach()).mean()
        # importance_weighted: the entropy's bound with iw_samples draws of r besides the
        # generating z (VAE.log_marginal_upper): an upper bound for any encoder, so the
        # decoder minimises it with the encoder held fixed, and the encoder fits the
        # decoder's inverse on z drawn from N(0, encoder_prior_scale² I) (wider than the
        # prior: a rare mode's latents are seen as often as the rest; this tightens the
        # bound there, where a bound fitted to q alone stays loose and starves the mode),
        # or, under a mixture prior, from every component equally, widened the same way
        log_qx = model.log_marginal_upper(z, v, c.iw_samples) - d["log_det"]
        with torch.no_grad():
            z_wide = c.encoder_prior_scale * torch.randn_like(z)
            if model.prior is not None:
                m = model.prior.means
                z_wide = z_wide + m[torch.randint(len(m), (len(z),))].to(z.dtype)
            xm, xlv = model.decode(z_wide)
            v_wide = xm + torch.exp(0.5 * xlv) * torch.randn_like(xm)
        return (w * (log_qx + d["reg"])).mean(), -model.log_r(z_wide, v_wide).mean()

    def _train_energy(self, model: VAE, opt, space: CGSpace, state: dict) -> None:
        t = self.cgc.tempering
        with torch.no_grad():
            self._u_ref = float(self.bridge(self.bundle.positions[None])[0][0]) / self.kT
        report = self.progress.steps("cg training (reverse KL)") if self.progress else None
        while True:
            beta = state["beta"]
            at_target = beta >= 1.0
            first = not state["levels"]
            n_steps = t.final_steps if at_target else (t.initial_steps or t.steps_per_level) if first else t.steps_per_level
            while state["level_step"] < n_steps:
                step = state["step"]
                torch.manual_seed(derive_seed(self.seed, 1, step))
                lr = self.cgc.learning_rate
                if at_target and self.cgc.lr_schedule == "cosine":  # the final steps: a cosine to 0
                    lr *= 0.5 * (1 + math.cos(math.pi * state["level_step"] / max(1, n_steps)))
                for group in opt.param_groups:
                    group["lr"] = lr * group["lr_scale"]
                loss = self._loss(model, space, beta)
                enc_loss = None
                if isinstance(loss, tuple):  # (the decoder's loss, the encoder's)
                    loss, enc_loss = loss
                if not torch.isfinite(loss):
                    self._fail(model, opt, state, f"the reverse-KL objective is not finite (beta_s = {beta:.3g} beta)")
                opt.zero_grad()
                if enc_loss is None:
                    loss.backward()
                else:
                    loss.backward(inputs=model.decoder_parameters())
                    enc_loss.backward(inputs=list(model.encoder.parameters()) + list(model.encoder_logvar.parameters()))
                torch.nn.utils.clip_grad_norm_(model.parameters(), 100.0)
                opt.step()
                state["step"] = step + 1
                state["level_step"] += 1
                state["history"].append((step, float(loss.detach()), beta))
                self._after_step(model, opt, state, state["step"] + n_steps - state["level_step"], report,
                                 f"level {len(state['levels'])} beta_s {beta:.3g} beta, objective {float(loss.detach()):.3f}")
            # the level's bounds and the next inverse temperature
            torch.manual_seed(derive_seed(self.seed, 2, len(state["levels"])))
            with torch.no_grad():
                d = self._draw(model, space, t.estimate_samples, beta)
                plain = d["log_q"] - d["log_det"] - model.log_r(d["z"], d["v"]) + beta * d["u"]
            plain, u = plain.numpy(), d["u"].numpy()
            ok = np.isfinite(plain)
            elbo = float(-plain[ok].mean()) if ok.any() else -math.inf
            lw = np.where(ok, -plain, -np.inf)
            log_z = float(_logmeanexp(lw))
            cubo = float(0.5 * _logmeanexp(2 * lw))
            cut = (self._u_ref, self.cgc.energy_cut)  # the tilt as training sees it (regularised)
            new = 1.0 if at_target else next_beta(beta, u, t.kl_threshold, *cut)
            kl_step = tilt_kl(u, new - beta, beta, *cut)
            state["levels"].append((len(state["levels"]), state["step"], beta, elbo, log_z, cubo, kl_step))
            pops = self._populations(space, model)
            if model.prior is not None:
                pops = {**pops, **{f"prior_weight_{k}": float(p) for k, p in enumerate(model.prior.weights.detach())}}
            state.setdefault("level_states", []).append(pops)
            log.debug(f"cg level {len(state['levels'])}: beta_s {beta:.3g} beta, ELBO {elbo:.3f} <= log Z "
                      f"{log_z:.3f} <= CUBO {cubo:.3f}; next {new:.3g} (KL {kl_step:.3f})"
                      + "".join(f"; P({k}) {v:.4f}" if not k.startswith("prior_weight_")
                                else f"; prior weight {k[13:]} {v:.4f}" for k, v in pops.items()))
            if at_target:
                break
            if len(state["levels"]) >= t.max_levels:
                raise TrainingError(f"cg tempering: beta_s reached only {beta:.3g} beta after {t.max_levels} levels "
                                    f"(cg.tempering.max_levels); raise kl_threshold or max_levels")
            state["beta"], state["level_step"] = new, 0
            self._checkpoint(model, opt, state)

    def _populations(self, space: CGSpace, model: VAE, n: int = 2000) -> dict[str, float]:
        """The states' populations in n of the model's samples (the tempering log)."""
        if not (self.cgc.states if self.bundle.is_toy else self.cfg.states):
            return {}
        with torch.no_grad():
            _, v, _, _ = model.sample_joint(n)
        member = self.membership(space.to_x(v.numpy()), self.cgc.states)
        return {k: float(m.mean()) for k, m in member.items()}

    def load_model(self, k: int = 0) -> tuple[VAE, CGSpace, dict]:
        """The trained model (ensemble member k), its space and its saved record."""
        saved = torch.load(self.member_path("cg.pt", k), weights_only=False)
        space = CGSpace.from_params(saved["space"], self.zmatrix)
        model = self.build_model(space)
        model.load_state_dict(saved["model"])
        return model.eval(), space, saved

    # -- the Laplace posterior (data) ----------------------------------------------------------------
    def _posterior(self) -> dict:
        infos = [self._member_posterior(k) for k in range(self.cgc.ensemble)]
        return {**infos[0], **({"ensemble": len(infos)} if len(infos) > 1 else {})}

    def _member_posterior(self, k: int) -> dict:
        model, space, saved = self.load_model(k)
        d = np.load(self.out / "data.npz")
        v = torch.as_tensor(space.to_v(d["positions"]))
        w = torch.as_tensor(self.member_weights(d, k), dtype=torch.float64)
        # the likelihood of the frames the data are worth: the Kish ESS of the weights and,
        # with cg.correlated_frames, divided by the statistical inefficiency of the frames'
        # latent series (consecutive MD frames are correlated). With frame_weights: biased
        # the model fits every frame, but its predictions are weighted means (its samples
        # carry the reweighting factors), which the reweighting factors' ESS limits: the
        # same count
        g = 1.0
        if self.cgc.correlated_frames:
            with torch.no_grad():
                g = statistical_inefficiency(model.encoder(v).numpy())
        n_eff = kish_ess(d["weights"]) / g
        w = w / w.sum() * n_eff
        alpha_out = (saved["alpha"][-1][: model.n_features] if self.cgc.ard and saved["alpha"] is not None
                     else torch.full((model.n_features, model.decoder.net[-2].in_features), 1e-2))
        rows, chol = laplace_output_layer(model, v, w, alpha_out.double(), self._member_seed(k, 3))
        art.write_npz(self.member_path("posterior.npz", k), rows=rows.numpy(), chol=chol.numpy(),
                      n_eff=np.float64(n_eff))
        sd = torch.sqrt(torch.diagonal(chol @ chol.transpose(1, 2), dim1=1, dim2=2))
        pruned = [float((a > 1e4).float().mean()) for a in saved["alpha"]] if saved["alpha"] else []
        return {"parameters": int(rows.numel()), "mean_posterior_sd": float(sd.mean()),
                "ard_pruned_fraction": pruned, "statistical_inefficiency": g, "independent_frames": n_eff}

    # -- samples -------------------------------------------------------------------------------------
    def _sample(self) -> dict:
        c = self.cgc
        members = c.ensemble
        models = [self.load_model(k) for k in range(members)]
        space = models[0][1]
        draws = c.posterior_draws if self.mode == "data" else 1
        per = int(math.ceil(c.samples / draws))
        g = torch.Generator().manual_seed(derive_seed(self.seed, 4))
        if self.mode == "data":
            posts = [np.load(self.member_path("posterior.npz", k)) for k in range(members)]
            rows = [torch.as_tensor(p["rows"]) for p in posts]
            chol = [torch.as_tensor(p["chol"]) for p in posts]
            # posterior_noise: marginal — the decoder's noise scale known only up to one common
            # factor, which the frames determine as ν = their effective count: the output layer's
            # posterior is then a Student-t with ν degrees of freedom (the normal–inverse-gamma
            # result of Bayesian linear regression), a scale mixture of the Laplace Gaussian
            nu = float(posts[0]["n_eff"]) if c.posterior_noise == "marginal" else None
            chi2 = np.random.default_rng(derive_seed(self.seed, 7))
        biased = self.mode == "data" and c.frame_weights == "biased"
        drawn = per * (c.oversample if biased else 1)
        factors = stage_weights.load(self.out) if biased else None
        resample_rng = np.random.default_rng(derive_seed(self.seed, 8))
        xs, draw_of, zs, kept = [], [], [], []
        with torch.no_grad():
            for s in range(draws):
                k = s % members  # an equal mixture of the members' posteriors
                model = models[k][0]
                if self.mode == "data":
                    eps = torch.randn(rows[k].shape, generator=g, dtype=torch.float64)
                    if nu is not None:  # Student-t: × √(ν / χ²_ν)
                        eps = eps * math.sqrt(nu / chi2.chisquare(nu))
                    set_output_rows(model, rows[k] + (chol[k] @ eps[..., None])[..., 0])
                z = model.sample_prior(drawn, g)
                xm, xlv = model.decode(z)
                vs = xm + torch.exp(0.5 * xlv) * torch.randn(xm.shape, generator=g, dtype=torch.float64)
                x, z = space.to_x(vs.numpy()), z.numpy()
                if biased:  # the model draws the frames' (biased) ensemble: resample by the run's weights
                    x, z, stats = self._reweight_samples(x, z, factors, per, resample_rng)
                    kept.append(stats)
                xs.append(x)
                zs.append(z)
                draw_of.append(np.full(per, s))
        x = np.concatenate(xs)
        f = self.write_samples(x)
        art.write_npz(self.out / "samples_latent.npz", z=np.concatenate(zs), draw=np.concatenate(draw_of))
        info = {"samples": int(len(x)), "draws": draws, "files": [f, "samples_latent.npz"]}
        if members > 1:
            info["ensemble"] = members
        if biased:
            info["reweighting"] = {"drawn_per_draw": drawn, "kept_per_draw": per,
                                   "ess_fraction": float(np.mean([k[0] for k in kept])),
                                   "unreached_fraction": float(np.mean([k[1] for k in kept]))}
            log.info(f"cg samples: {drawn} per posterior draw resampled to {per} by the run's weights (ESS "
                     f"{info['reweighting']['ess_fraction']:.1%} of them; "
                     f"{info['reweighting']['unreached_fraction']:.1%} in bins no frame reached, dropped)")
        return info

    def _reweight_samples(self, x: np.ndarray, z: np.ndarray, factors, n: int, rng) -> tuple:
        """n of the samples x (and their latents z), resampled by p/p_pool
        (:func:`cvflow.stage_weights.log_factor`); and (their ESS fraction, the fraction
        in bins no stage reached)."""
        from .workflow import cv_values
        frames = self.cv_input(x)
        log_w, unreached = stage_weights.log_factor(factors, lambda cv: cv_values(cv, frames), len(x),
                                                    self.cgc.weight_exponent)
        if unreached.all():
            raise TrainingError(f"cg sampling: none of {len(x)} samples lies in a bin of the CV that the run's "
                                f"frames reached; the model does not describe the frames")
        pick = stage_weights.systematic_resample(log_w, n, rng)
        return x[pick], z[pick], (kish_ess(np.exp(log_w - log_w.max())) / len(x), float(unreached.mean()))

    # -- analysis ------------------------------------------------------------------------------------
    def _analyse(self) -> dict:
        x = self.samples()
        draw = np.load(self.out / "samples_latent.npz")["draw"]
        info = {"mode": self.mode, "samples": int(len(x)), "kT_kj_per_mol": self.kT,
                "intervals": ("95% credible intervals over the decoder's posterior draws"
                              + (f" of {self.cgc.ensemble} bootstrap ensemble members" if self.cgc.ensemble > 1 else ""))
                if self.mode == "data" else "95% intervals of the Monte Carlo error (bootstrap over 20 blocks of samples)"}
        obs = self.observables(x)
        info["observables"] = {k: interval(v, draw, self.mode) for k, v in obs.items()}
        member = self.membership(x, self.cgc.states)
        if member:
            info["states"] = {k: interval(m.astype(float), draw, self.mode) for k, m in member.items()}
        if self.mode == "data":
            self._frames_check(info)
        if self.bundle.is_toy:
            info["exact"] = self._toy_exact(x, member)
        else:
            info["phi_psi"] = self._phi_psi_check(x)
        art.write_json(self.out / "cg.json", info)
        return info

    def _frames_check(self, info: dict) -> None:
        """What the training frames say by themselves, beside each prediction (``frames``: the
        frames' reweighted mean and its standard errors, :func:`weighted_mean_se`), with a
        warning where the model's interval lies more than 3 delta-method errors from it: the
        model does not reproduce its own data there (a minor state dropped, for example),
        which no posterior draw of the output layer accounts for."""
        d = np.load(self.out / "data.npz")
        x, w = d["positions"], d["weights"]
        per_frame = dict(self.observables(x))
        member = self.membership(x, self.cgc.states) or {}
        groups = [("observables", per_frame), ("states", {k: m.astype(float) for k, m in member.items()})]
        for group, values in groups:
            for k, v in values.items():
                if k not in info.get(group, {}):
                    continue
                own = weighted_mean_se(v, w)
                pred = info[group][k]
                pred["frames"] = own
                gap = max(pred["low"] - own["mean"], own["mean"] - pred["high"], 0.0)
                if own["se"] > 0 and gap > 3 * own["se"]:  # se = 0: every frame alike, nothing to test
                    label = f"P({k})" if group == "states" else k
                    log.warning(f"cg: the model's {label} {pred['mean']:.4g} [{pred['low']:.4g}, {pred['high']:.4g}] "
                                f"is {gap / own['se']:.1f} standard errors from its training frames' own "
                                f"{own['mean']:.4g} ± {own['se']:.2g}: the model does not reproduce its data there")

    def observables(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Per-sample observables: x and y of a toy; a molecule's radius of gyration (nm,
        all atoms, unweighted, as MDTraj's ``compute_rg``)."""
        if self.bundle.is_toy:
            return {"x": x[:, 0], "y": x[:, 1], "x_squared": x[:, 0] ** 2}
        c = x - x.mean(1, keepdims=True)
        return {"rg_nm": np.sqrt((c ** 2).sum(-1).mean(-1))}

    def _toy_exact(self, x: np.ndarray, member) -> dict:
        """Quadrature of exp(−U/kT) on a grid around the samples: log Z, the exact mean and
        standard deviation of x and y, the states' probabilities, the x-marginal, and the
        KL(q ‖ p) of the model (log q by quadrature over a 1-D latent, else by importance
        sampling with the encoder)."""
        lo = np.minimum(x.min(0), -3.0) - 1.0
        hi = np.maximum(x.max(0), 3.0) + 1.0
        n = 400
        gx, gy = np.linspace(lo[0], hi[0], n), np.linspace(lo[1], hi[1], n)
        X, Y = np.meshgrid(gx, gy, indexing="ij")
        pts = np.column_stack([X.ravel(), Y.ravel()])
        u = self.bridge(pts)[0] / self.kT
        cell = (gx[1] - gx[0]) * (gy[1] - gy[0])
        m = np.nanmin(u)
        p = np.exp(-(u - m))
        log_z = float(np.log(p.sum() * cell) - m)
        p = p / p.sum()
        exact = {"log_z": log_z, "grid": [lo.tolist(), hi.tolist(), n]}
        for k, c in (("x", pts[:, 0]), ("y", pts[:, 1])):
            mean = float((p * c).sum())
            exact[f"{k}_mean"], exact[f"{k}_std"] = mean, float(np.sqrt((p * (c - mean) ** 2).sum()))
        if member:
            exact["states"] = {k: float(p[self.membership(pts, {k: self.cgc.states[k]})[k]].sum())
                               for k in member}
        # the x-marginal: exact against the samples' histogram (and its JS divergence)
        # bins of 4 grid columns each, edges between grid points (no aliasing of the grid)
        dx = gx[1] - gx[0]
        edges = gx[0] - dx / 2 + 4 * dx * np.arange(n // 4 + 1)
        px = p.reshape(n, n).sum(1).reshape(n // 4, 4).sum(1)
        qx = np.histogram(x[:, 0], bins=edges)[0].astype(float)
        qx /= qx.sum()
        exact["x_marginal"] = {"edges": edges.tolist(), "exact": px.tolist(), "model": qx.tolist(),
                               "js_nats": js_divergence(px, qx)}
        model, space, _ = self.load_model()
        torch.manual_seed(derive_seed(self.seed, 5))
        sub = x[: min(len(x), 4000)]
        with torch.no_grad():  # a 1-D latent: log q(x) by quadrature over z (exact); else importance
            v = torch.as_tensor(space.to_v(sub))  # sampling with the encoder (a lower bound: KL biased low)
            log_q = (model.log_marginal_quadrature(v, points=4096) if model.latent == 1
                     else model.log_marginal(v, k=256)).numpy() - space.log_det
        log_p = -self.bridge(sub)[0] / self.kT - log_z
        exact["kl_q_to_p_nats"] = float(np.mean(log_q - log_p))
        exact["kl_method"] = "quadrature over z" if model.latent == 1 else "importance sampling, 256 encoder draws"
        return exact

    def _phi_psi_check(self, x: np.ndarray) -> dict | None:
        """The generated (φ, ψ) histogram against the training frames' reweighted one
        (Jensen–Shannon divergence in nats, 36 × 36 bins), when the molecule has φ and ψ."""
        import mdtraj as md
        top = self.bundle.mdtraj_topology()
        gen = phi_psi_degrees(md.Trajectory(x.astype(np.float32), top))
        if gen is None:
            return None
        out = {"bins": 36, "generated": phi_psi_histogram(*gen).tolist()}
        if self.mode == "data":
            d = np.load(self.out / "data.npz")
            ref = phi_psi_degrees(md.Trajectory(d["positions"].astype(np.float32), top))
            h = phi_psi_histogram(*ref, weights=d["weights"])
            out["frames"] = h.tolist()
            out["js_to_frames_nats"] = js_divergence(h.ravel(), np.asarray(out["generated"]).ravel())
        return out


# -- helpers ---------------------------------------------------------------------------------------
def statistical_inefficiency(series: np.ndarray) -> float:
    """g = 1 + 2 Σ_k ρ_k of a time series (n,) or (n, d) (the largest over its columns), with
    Sokal's window (stop at the first k ≥ 5 τ(k)); n/g is the number of independent samples."""
    x = np.asarray(series, float).reshape(len(series), -1)
    n = len(x)
    if n < 4:
        return 1.0
    best = 1.0
    for col in x.T:
        c = col - col.mean()
        var = (c ** 2).mean()
        if var <= 0:
            continue
        f = np.fft.rfft(c, 2 * n)
        acf = np.fft.irfft(f * np.conj(f))[:n] / (var * np.arange(n, 0, -1))
        tau = 1.0
        for k in range(1, n):
            tau += 2 * acf[k]
            if k >= 5 * tau:
                break
        best = max(best, min(tau, n / 2))
    return float(best)


def training_weights(data) -> np.ndarray:
    """The frames' weights in the likelihood: ``training_weights`` of ``data.npz`` (all 1
    with frame_weights: biased), or, in a directory written before it, the weights."""
    return data["training_weights"] if "training_weights" in data.files else data["weights"]


def kish_ess(w) -> float:
    """Kish's effective sample size (Σw)² / Σw² of frame weights: what a weighted data set
    is worth in the Bayesian treatment (the ARD prior's scale, the Laplace precision)."""
    from .dataset import effective_sample_size
    return effective_sample_size(torch.as_tensor(w, dtype=torch.float64).numpy())


def weighted_mean_se(values, w) -> dict:
    """The weighted (self-normalised) mean of per-frame ``values`` and two standard errors,
    both for independent frames: ``se``, the delta-method error of a self-normalised
    importance-sampling mean, √(Σ w̃ᵢ² (vᵢ − v̄)²) with w̃ = w / Σw (Owen, *Monte Carlo theory,
    methods and examples*, eq. 9.8), right also where the values follow the weights (a
    state's population, whose frames carry weights of their own); and ``se_kish``, the
    weighted standard deviation over √ESS (the Kish ESS (Σw)²/Σw² counted as independent
    frames), which assumes they do not."""
    v, w = np.asarray(values, float), np.asarray(w, float)
    w = w / w.sum()
    m = float((w * v).sum())
    ess = kish_ess(w)
    return {"mean": m, "se": float(np.sqrt((w ** 2 * (v - m) ** 2).sum())),
            "se_kish": float(np.sqrt((w * (v - m) ** 2).sum() / ess)), "ess": ess}


def _logmeanexp(a: np.ndarray) -> float:
    a = np.asarray(a, float)
    m = np.max(a)
    return float(m + np.log(np.mean(np.exp(a - m)))) if np.isfinite(m) else -math.inf


def tilt_kl(u: np.ndarray, d_beta: float, beta: float = 0.0, u_ref: float | None = None,
            cut: float | None = None) -> float:
    """KL(q ‖ q̃) between samples' distribution q and q̃ ∝ q·e^{−t}: ⟨t⟩ + log⟨e^{−t}⟩ (≥ 0;
    reduced energies u = U/kT of q's samples, those not finite left out). The tilt is
    t = Δβ U, or, with ``cut``, the change of the energy that training at β' = β + Δβ
    actually sees, reg(β' u) − reg(β u) with reg log-capped above β u_ref + cut (as in
    training): a few clashing samples, whose cost training caps, then do not hold the
    schedule back (alone they would make the step Δβ ~ threshold / ⟨u⟩ over the outliers)."""
    u = np.asarray(u, float)
    u = u[np.isfinite(u)]
    if len(u) == 0 or d_beta <= 0:
        return 0.0
    if cut is None:
        t = d_beta * u
    else:  # the same regularisation as training's (cvflow.energy.regularised)
        b1 = beta + d_beta
        ut = torch.as_tensor(u)
        t = (regularised(b1 * ut, b1 * u_ref + cut) - regularised(beta * ut, beta * u_ref + cut)).numpy()
    return float(t.mean() + _logmeanexp(-t))


def next_beta(beta: float, u: np.ndarray, threshold: float, u_ref: float | None = None,
              cut: float | None = None) -> float:
    """The largest β' in (β, 1] (fractions of β) with tilt_kl(u, β' − β) ≤ threshold, by
    bisection on log(β' − β) (the KL grows with the step)."""
    def kl(d):
        return tilt_kl(u, d, beta, u_ref, cut)
    if kl(1.0 - beta) <= threshold:
        return 1.0
    lo, hi = math.log(max(beta * 1e-6, 1e-300)), math.log(1.0 - beta)
    if kl(math.exp(lo)) > threshold:
        return beta + math.exp(lo)
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if kl(math.exp(mid)) <= threshold:
            lo = mid
        else:
            hi = mid
    return min(1.0, beta + math.exp(lo))


def interval(values: np.ndarray, draw: np.ndarray, mode: str) -> dict:
    """The mean of ``values`` over the samples, with a 95 % interval: over the posterior
    draws (``data``: each draw's mean), or over a bootstrap of 20 blocks (``energy``)."""
    values = np.asarray(values, float)
    mean = float(values.mean())
    if mode == "data":
        per = np.array([values[draw == s].mean() for s in np.unique(draw)])
    else:
        blocks = np.array_split(values, 20)
        rng = np.random.default_rng(0)
        bm = np.array([b.mean() for b in blocks])
        per = np.array([bm[rng.integers(len(bm), size=len(bm))].mean() for _ in range(500)])
    lo, hi = np.percentile(per, [2.5, 97.5])
    return {"mean": mean, "low": float(lo), "high": float(hi), "sd": float(per.std())}


def js_divergence(p: np.ndarray, q: np.ndarray) -> float:
    """Jensen–Shannon divergence (nats) between two histograms (normalised here)."""
    p = np.asarray(p, float).ravel()
    q = np.asarray(q, float).ravel()
    p, q = p / p.sum(), q / q.sum()
    m = 0.5 * (p + q)

    def kl(a, b):
        nz = a > 0
        return float((a[nz] * np.log(a[nz] / b[nz])).sum())
    return 0.5 * kl(p, m) + 0.5 * kl(q, m)


def phi_psi_histogram(phi, psi, weights=None, bins: int = 36) -> np.ndarray:
    edges = np.linspace(-180, 180, bins + 1)
    h = np.histogram2d(phi, psi, bins=[edges, edges], weights=weights)[0]
    return h / h.sum()


def prepare_cg_dir(cfg: Config, out: Path, resume: bool) -> None:
    """Refuse a directory with results without ``--resume`` and a changed cg section with it."""
    prepare_output_dir(cfg, out, resume, "cg")


def format_cg(info: dict) -> list[str]:
    """Lines for the terminal."""
    lines = [f"{info['samples']:,} generated configurations ({info['mode']}); {info['intervals']}"]
    def own(v):
        f = v.get("frames")
        return f"; frames {f['mean']:.4g} ± {f['se']:.2g}" if f else ""
    for k, v in info.get("observables", {}).items():
        lines.append(f"{k}: {v['mean']:.4g} [{v['low']:.4g}, {v['high']:.4g}]{own(v)}")
    for k, v in (info.get("states") or {}).items():
        lines.append(f"P({k}): {v['mean']:.4g} [{v['low']:.4g}, {v['high']:.4g}]{own(v)}")
    ex = info.get("exact")
    if ex:
        lines.append(f"exact (quadrature): x mean {ex['x_mean']:.4g}, std {ex['x_std']:.4g}; "
                     f"KL(q||p) {ex['kl_q_to_p_nats']:.4f} nats")
    pp = info.get("phi_psi")
    if pp and "js_to_frames_nats" in pp:
        lines.append(f"(phi, psi) JS divergence to the frames: {pp['js_to_frames_nats']:.4f} nats")
    return lines
