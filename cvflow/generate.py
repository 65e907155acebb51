"""``cvflow generate``: train a Boltzmann generator, sample it, reweight the samples.

Stages (each recorded in ``manifest.json`` when done, so ``--resume`` continues at the first
missing one; training itself resumes from ``checkpoint.pt``):

1. **data**: the frames that train the flow by maximum likelihood, with weights: a finished
   cvflow run's production frames and ``production/weights.npy`` (``--from RUN_DIR``), a file
   (``generator.data``), or short unbiased MD runs (``generator.md``), pooled. → ``data.npz``
2. **train**: the loss ``ml_weight``·ML + k(t)·KL (see :class:`cvflow.config.GeneratorConfig`):
   ML = −Σ w log q(x) / Σ w on the frames (minibatches drawn ∝ w); KL = E_q[βU(x) + log q(x)]
   on the flow's own samples, whose energy and forces come from OpenMM
   (:mod:`cvflow.energy`). → ``generator.pt``, ``training.csv``
3. **sample**: ``generator.samples`` one-shot samples x ~ q and their log-weights
   log w = −βU(x) − log q(x) (−inf where U is not finite). → ``samples.npy`` (toys) or
   ``samples.dcd`` + ``topology.pdb`` (molecules), ``log_weights.npy``
4. **analysis**: Kish's effective sample size of the weights, and the free energies of the
   states (``generator.states`` for toys, ``states`` for molecules) with bootstrap errors.
   → ``generate.json``; plots in ``report/``.

Units: positions nm, energies kJ/mol, kT = k_B · md.temperature.
"""
from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch

from . import artifacts as art
from .config import Config, ConfigError, dump_config
from .dataset import effective_sample_size, normalised_weights
from .energy import energy, regularised
from .flows import BoltzmannGenerator, MoleculeCoordinates, ToyCoordinates, coordinates_from_params
from .generative import GenerativeRun, prepare_output_dir
from .progress import log
from .sampler import derive_seed, load_frames, run_segment
from .stop import StopRequested, stop_requested
from .train import TrainingError
from .units import KB as KB_KJ_PER_MOL_K

SAMPLE_CHUNK = 10_000


class GenerateRun(GenerativeRun):
    """One ``cvflow generate`` directory.

    Parameters
    ----------
    cfg : Config
        With a ``generator`` section.
    out_dir : Path
    from_run : Path, optional
        A finished cvflow run whose production frames and weights are training data.
    """

    command = "cvflow generate"

    def __init__(self, cfg: Config, out_dir: Path, from_run: Path | None = None, progress=None):
        platform = cfg.generator.platform if cfg.generator is not None else "Reference"
        super().__init__(cfg, out_dir, from_run, progress, "generator", 30_000, platform)
        self.gen = cfg.generator

    # -- the stages ------------------------------------------------------------------------
    def run(self) -> dict:
        g = self.gen
        if g.ml_weight > 0 and self.from_run is None and g.data is None and not g.md:
            raise ConfigError("generator.ml_weight > 0 needs training frames: --from RUN_DIR, generator.data "
                              "or generator.md (or set generator.ml_weight: 0 for training by KL alone)")
        self._stage("data", self._data)
        self._stage("train", self._train)
        self._stage("sample", self._sample)
        info = self._stage("analysis", self._analyse)
        from .generate_report import write_generate_report
        return self._with_report(info, write_generate_report)

    # -- 1. data ---------------------------------------------------------------------------
    def _data(self) -> dict:
        parts, weights, sources = [], [], []
        if self.from_run is not None:
            for stage, x, w in self._run_frames(self.from_run, self.gen.frames):
                if self.gen.frame_weights == "uniform":
                    w = np.ones(len(w))
                parts.append(x)
                weights.append(w / w.sum() * len(w))
                sources.append(f"{self.from_run.name}/{stage} ({len(x)} frames, {self.gen.frame_weights})")
        if self.gen.data is not None:
            x = self._file_frames(self.gen.data)
            parts.append(x)
            weights.append(np.ones(len(x)))
            sources.append(f"{self.gen.data} ({len(x)} frames)")
        for k, spec in enumerate(self.gen.md):
            x = self._md_frames(k, spec)
            parts.append(x)
            weights.append(np.ones(len(x)))
            sources.append(f"md[{k}]: {spec.steps} steps ({len(x)} frames)")
        if parts:
            x = np.concatenate(parts)
            w = np.concatenate(weights)
        else:
            x = self._as_config(self.bundle.positions[None])
            w = np.zeros(1)  # the structure only: for the coordinate transform, not for ML
        art.write_npz(self.out / "data.npz", positions=x, weights=w)
        log.info(f"generator data: {len(x) if parts else 0} frames from " + ("; ".join(sources) or "none"))
        return {"frames": int(len(x)) if parts else 0, "sources": sources}

    def _file_frames(self, path: Path) -> np.ndarray:
        if self.bundle.is_toy:
            x = np.load(path) if path.suffix == ".npy" else np.loadtxt(path, ndmin=2)
            if x.ndim != 2 or x.shape[1] != 2:
                raise ConfigError(f"generator.data: {path} holds an array of shape {x.shape}; a toy takes rows x, y")
            return x.astype(np.float64)
        if path.suffix == ".npy":
            x = np.load(path)
        else:
            import mdtraj as md
            try:
                x = md.load(str(path), top=self.bundle.mdtraj_topology()).xyz
            except Exception as e:
                from .config import one_line
                raise ConfigError(f"generator.data: MDTraj cannot read {path}: {one_line(e, 120)}") from None
        if x.ndim != 3 or x.shape[1:] != (self.bundle.n_atoms, 3):
            raise ConfigError(f"generator.data: {path} has frames of shape {x.shape[1:]}; the system has "
                              f"{self.bundle.n_atoms} atoms")
        return x.astype(np.float64)

    def _md_frames(self, k: int, spec) -> np.ndarray:
        start = None
        if spec.start is not None:
            start = np.zeros((1, 3))
            start[0, :2] = spec.start
        seg = self.out / "data" / f"md_{k}"
        prog = self.progress.md(f"generator data md[{k}]", self.cfg.md.timestep) if self.progress else None
        run_segment(self.cfg, self.bundle, seg, spec.steps, derive_seed(self.cfg.seed, 30_001, k), engine="none",
                    start_positions=start, progress=prog, label=f"generator md[{k}]")
        return self._as_config(load_frames(seg, self.bundle))

    # -- 2. training -----------------------------------------------------------------------
    def build_model(self, coord_params: dict | None = None) -> BoltzmannGenerator:
        """The flow, with its coordinate transform fitted on the data (or as recorded)."""
        if coord_params is None:
            d = np.load(self.out / "data.npz")
            x, w = d["positions"], d["weights"]
            has = w.sum() > 0
            if self.bundle.is_toy:
                coords = ToyCoordinates.fit(x if has else None, w if has else None)
            else:
                coords = MoleculeCoordinates.fit(self.zmatrix, self.constraints(), x, w if has else None)
        else:
            coords = coordinates_from_params(coord_params, self.zmatrix)
        g = self.gen
        torch.manual_seed(derive_seed(self.seed, 0))
        return BoltzmannGenerator(coords, g.transforms, g.hidden, g.bins)

    def schedule(self, step: int, with_ml: bool = True) -> tuple[float, float]:
        """(KL weight, KL temperature in K) at optimiser step ``step``; without ML (no
        frames, or ml_weight 0) the KL starts at once (``kl_start`` is ML's head start)."""
        g = self.gen
        start = g.kl_start if with_ml else 0
        if g.kl_weight == 0 or step < start:
            return 0.0, self.cfg.md.temperature
        frac = 1.0 if g.kl_ramp == 0 else min(1.0, (step - start + 1) / g.kl_ramp)
        t = self.cfg.md.temperature
        if g.temperature_start is not None:
            t = g.temperature_start + frac * (t - g.temperature_start)
        return g.kl_weight * frac, t

    def learning_rate(self, step: int) -> float:
        """Constant, or (``cosine``) constant until the KL ramp ends, then a cosine to 0."""
        g = self.gen
        hold = min((g.kl_start if g.ml_weight > 0 else 0) + g.kl_ramp, g.steps - 1)
        if g.lr_schedule == "constant" or step < hold:
            return g.learning_rate
        return 0.5 * g.learning_rate * (1 + math.cos(math.pi * (step - hold) / max(1, g.steps - hold)))

    def reduced_energy(self, x: torch.Tensor, temperature: float) -> torch.Tensor:
        """U(x)/kT at ``temperature``, differentiable (OpenMM forces), float64."""
        return energy(x.double(), self.bridge) / (KB_KJ_PER_MOL_K * temperature)

    def _train(self) -> dict:
        g = self.gen
        d = np.load(self.out / "data.npz")
        x_data, w_data = d["positions"], d["weights"]
        use_ml = g.ml_weight > 0 and w_data.sum() > 0
        ckpt_path = self.out / "checkpoint.pt"
        if ckpt_path.exists():
            ckpt = torch.load(ckpt_path, weights_only=False)
            model = self.build_model(ckpt["coordinates"])
            model.load_state_dict(ckpt["model"])
            start, history = ckpt["step"], ckpt["history"]
            self.bridge.evaluations, self.bridge.nonfinite = ckpt["evaluations"], ckpt["nonfinite"]
            log.info(f"generator: resuming training at step {start} of {g.steps}")
        else:
            model = self.build_model()
            start, history, ckpt = 0, [], None
        opt = torch.optim.Adam(model.parameters(), lr=g.learning_rate)
        if ckpt is not None:
            opt.load_state_dict(ckpt["optimizer"])
        with torch.no_grad():
            y_data, ld_data = model.coordinates.to_flow(torch.as_tensor(x_data))
        y_data = y_data.float()
        w_t = torch.as_tensor(np.maximum(w_data, 0.0), dtype=torch.float64)
        # the energy scale of the cut: the lowest energy of the frames (or the structure)
        with torch.no_grad():
            e_ref = float(np.nanmin(self.bridge(x_data[: min(len(x_data), 2000)])[0]))
        if not math.isfinite(e_ref):
            raise ConfigError("generator: the training frames (or the system's structure) have no finite energy")
        t0 = time.perf_counter()
        evals0, esec0 = self.bridge.evaluations, self.bridge.seconds
        report = self.progress.steps("generator training") if self.progress else None
        for step in range(start, g.steps):
            torch.manual_seed(derive_seed(self.seed, 1, step))
            k_kl, temp = self.schedule(step, use_ml)
            for group in opt.param_groups:
                group["lr"] = self.learning_rate(step)
            loss = torch.zeros((), dtype=torch.float64)
            ml = kl = float("nan")
            if use_ml:
                idx = torch.multinomial(w_t, g.batch_size, replacement=True)
                ml_t = -(model.log_prob_flow(y_data[idx]).double() + ld_data[idx]).mean()
                loss = loss + g.ml_weight * ml_t
                ml = ml_t.item()
            if k_kl > 0:
                x, log_q = model.sample(g.batch_size)
                u = self.reduced_energy(x, temp)
                u_ref = e_ref / (KB_KJ_PER_MOL_K * temp)
                kl_t = (regularised(u, u_ref + g.energy_cut) + log_q).mean()
                loss = loss + k_kl * kl_t
                kl = kl_t.item()
            if not torch.isfinite(loss):
                self._checkpoint(model, opt, step, history)
                raise TrainingError(f"generator training: the loss is not finite at step {step} (ML {ml:.4g}, "
                                    f"KL {kl:.4g}); the last good state is in {ckpt_path}")
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 100.0)
            opt.step()
            history.append((step, ml, kl, loss.item(), k_kl, temp))
            if (step + 1) % g.checkpoint_every == 0 and step + 1 < g.steps:
                self._checkpoint(model, opt, step + 1, history)
            if stop_requested() and step + 1 < g.steps:
                self._checkpoint(model, opt, step + 1, history)
                raise StopRequested(f"generator training: stopped at step {step + 1}; checkpoint written to "
                                    f"{ckpt_path}")
            if report is not None:
                report(step + 1, g.steps, f"ML {ml:.3f} KL {kl:.3f} (weight {k_kl:.2f}, {temp:.0f} K)")
        train_s = time.perf_counter() - t0
        art.write_csv(self.out / "training.csv", ["step", "ml", "kl", "loss", "kl_weight", "temperature"],
                      np.array(history, float).reshape(-1, 6),
                      comments=["ml: -<log q(x)> on the frames (nats); kl: <beta U + log q> on the flow's samples "
                                "(nats, at the temperature of that step)"])
        with art.atomic_path(self.out / "generator.pt") as tmp:
            torch.save({"model": model.state_dict(), "coordinates": model.coordinates.params(),
                        "generator": dump_config(self.cfg)["generator"]}, tmp)
        self._checkpoint(model, opt, g.steps, history)
        last = history[-1] if history else (0, float("nan"), float("nan"), float("nan"), 0, 0)
        n_nonfinite = self.bridge.nonfinite
        if n_nonfinite:
            log.info(f"generator training: {n_nonfinite} proposed configurations had no finite energy "
                     f"(given the cut value, no force)")
        return {"steps": g.steps, "wall_s": train_s, "final_ml": last[1], "final_kl": last[2],
                "energy_evaluations": int(self.bridge.evaluations), "nonfinite_energies": int(n_nonfinite),
                "energy_evaluations_this_process": int(self.bridge.evaluations - evals0),
                "energy_seconds_this_process": self.bridge.seconds - esec0,
                "energy_fraction_of_training": (self.bridge.seconds - esec0) / max(train_s, 1e-9)}

    def _checkpoint(self, model, opt, step, history):
        with art.atomic_path(self.out / "checkpoint.pt") as tmp:
            torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step,
                        "history": history, "coordinates": model.coordinates.params(),
                        "evaluations": self.bridge.evaluations, "nonfinite": self.bridge.nonfinite}, tmp)

    def load_model(self) -> BoltzmannGenerator:
        saved = torch.load(self.out / "generator.pt", weights_only=False)
        model = self.build_model(saved["coordinates"])
        model.load_state_dict(saved["model"])
        return model.eval()

    # -- 3. samples ------------------------------------------------------------------------
    def _sample(self) -> dict:
        g = self.gen
        model = self.load_model()
        torch.manual_seed(derive_seed(self.seed, 2))
        xs, logw, us = [], [], []
        evals0, bad0 = self.bridge.evaluations, self.bridge.nonfinite
        t0 = time.perf_counter()
        with torch.no_grad():
            for start in range(0, g.samples, SAMPLE_CHUNK):
                n = min(SAMPLE_CHUNK, g.samples - start)
                x, log_q = model.sample(n)
                u = self.bridge(x.numpy())[0] / self.kT
                lw = -u - log_q.numpy()
                lw[~np.isfinite(lw)] = -np.inf
                xs.append(x.numpy())
                logw.append(lw)
                us.append(u)
        x = np.concatenate(xs)
        logw = np.concatenate(logw)
        art.write_npy(self.out / "log_weights.npy", logw)
        art.write_npy(self.out / "reduced_energies.npy", np.concatenate(us))
        self.write_samples(x)
        return {"samples": int(len(x)), "wall_s": time.perf_counter() - t0,
                "energy_evaluations": int(self.bridge.evaluations - evals0),
                "nonfinite_energies": int(self.bridge.nonfinite - bad0),
                "files": ["samples.npy" if self.bundle.is_toy else "samples.dcd", "log_weights.npy"]}

    # -- 4. analysis -----------------------------------------------------------------------
    def _analyse(self) -> dict:
        logw = np.load(self.out / "log_weights.npy")
        finite = np.isfinite(logw)
        if not finite.any():
            raise TrainingError("generator sampling: no sample has a finite energy; train longer or check the "
                                "system")
        w = normalised_weights(logw)
        ess = effective_sample_size(w)
        info = {"samples": int(len(w)), "ess": ess, "ess_fraction": ess / len(w),
                "ess_per_100k": ess / len(w) * 1e5, "finite_weights": int(finite.sum()),
                "kT_kj_per_mol": self.kT, "flow": {"library": "zuko", "version": _zuko_version(),
                                                   "kind": "NSF" if self.bundle.is_toy else "NCSF (coupling)"}}
        member = self.state_membership()
        if member:
            from .states import state_free_energies
            res = state_free_energies(member, w, self.kT, blocks=100, resamples=self.gen.bootstrap,
                                      seed=derive_seed(self.seed, 3))
            res["units"] = ("kJ/mol; delta_f = F(state) - F(reference_state); errors: bootstrap standard deviation "
                            "over 100 blocks of the (independent) samples")
            res["delta_f_kT"] = {k: {"value": v["value"] / self.kT, "error": v["error"] / self.kT}
                                 for k, v in res["delta_f"].items()}
            info["states"] = res
        train, samp = self.manifest.get("train"), self.manifest.get("sample")
        info["energy_evaluations"] = train["energy_evaluations"] + samp["energy_evaluations"]
        info["wall_s"] = {"training": train["wall_s"], "sampling": samp["wall_s"]}
        art.write_json(self.out / "generate.json", info)
        return info

    def state_membership(self) -> dict[str, np.ndarray] | None:
        """Which samples are in each state (``generator.states`` boxes for toys, ``states``
        for molecules)."""
        if self.bundle.is_toy and not self.gen.states or not self.bundle.is_toy and not self.cfg.states:
            return None
        return self.membership(self.samples(), self.gen.states)


def _zuko_version() -> str:
    import zuko
    return getattr(zuko, "__version__", "?")


def prepare_generate_dir(cfg: Config, out: Path, resume: bool) -> None:
    """Refuse a directory with results without ``--resume``, and a changed generator,
    system or seed with it; record the config."""
    prepare_output_dir(cfg, out, resume, "generator", ("zuko",))


def format_generate(info: dict) -> list[str]:
    """Lines for the terminal."""
    lines = [f"{info['samples']:,} samples, ESS {info['ess']:,.0f} ({100 * info['ess_fraction']:.1f}%)"]
    st = info.get("states")
    if st:
        from .states import format_states
        lines += [ln.strip() for ln in format_states(st)]
    return lines
