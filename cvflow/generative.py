"""What the generative commands share (``cvflow generate``, issue 20; ``cvflow cg``, issue 21).

A :class:`GenerativeRun` is one output directory: the system and its OpenMM energy bridge
(:mod:`cvflow.energy`, built once per run), a manifest of finished stages (``--resume``
continues at the first missing one), the frames and weights of a finished cvflow run
(``--from RUN_DIR``), the samples written as NumPy (toys) or DCD + topology (molecules), and
the states they fall in. The subclasses define the stages and the model.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from . import artifacts as art
from .config import Config, ConfigError, dump_config, recorded_config
from .energy import OpenMMEnergy
from .internal import ZMatrix
from .sampler import derive_seed, load_frames
from .system import build_system, toy_positions
from .units import KB as KB_KJ_PER_MOL_K


class GenerativeRun:
    """The shared part of one generative run directory.

    Parameters
    ----------
    cfg : Config
    out_dir : Path
    from_run : Path, optional
        A finished cvflow run whose frames and weights are training data.
    section : str
        The config section of the command (``generator`` or ``cg``); it must be present.
    seed_key : int
        Where this command's seeds branch off the config's root seed.
    """

    command = "cvflow generate"

    def __init__(self, cfg: Config, out_dir: Path, from_run: Path | None, progress, section: str, seed_key: int,
                 platform: str = "Reference"):
        if getattr(cfg, section) is None:
            raise ConfigError(f"{section}: the config has no {section} section (see the README, '{self.command}')")
        self.cfg = cfg
        self.out = Path(out_dir)
        self.from_run = Path(from_run) if from_run is not None else None
        self.progress = progress
        self.bundle = build_system(cfg.system, "all")
        if self.bundle.box is not None:
            raise ConfigError(f"{self.command} works on toys and on molecules in vacuum or implicit solvent; "
                              f"this system has {self.bundle.n_atoms:,} atoms in a periodic box")
        self.kT = KB_KJ_PER_MOL_K * cfg.md.temperature
        self.manifest = art.Manifest(self.out)
        # where the training data come from (--from RUN, or none), written with the first
        # stage: a --resume from another source would mix two models' stages
        source = str(self.from_run.resolve()) if self.from_run is not None else None
        recorded = self.manifest.data.get("source", source)
        if recorded != source:
            def text(s):
                return f"--from {s}" if s else "without --from"
            raise ConfigError(f"--out: {self.out} was made {text(recorded)}; this command runs {text(source)}")
        self.manifest.data["source"] = source
        self.bridge = OpenMMEnergy(self.bundle, platform=platform)
        self.zmatrix = None if self.bundle.is_toy else ZMatrix.from_topology(self.bundle.mdtraj_topology())
        self.seed = derive_seed(cfg.seed, seed_key)

    def _stage(self, name: str, fn):
        if self.manifest.done(name):
            return self.manifest.get(name)
        self.manifest.current(name)
        info = fn()
        self.manifest.mark(name, info)
        self.manifest.current(None)
        return info

    def _with_report(self, info: dict, write) -> dict:
        """``info`` with the paths of the plots that ``write(self)`` makes; a failing plot
        is a warning, never a lost result."""
        try:
            info["report"] = [str(p.relative_to(self.out)) for p in write(self)]
        except Exception as e:
            from .config import one_line
            from .progress import log
            log.warning(f"report: plots not written ({one_line(e)})")
        return info

    def _as_config(self, frames: np.ndarray) -> np.ndarray:
        """Frames (n, n_atoms, 3) → a toy's (n, 2) or a molecule's (n, N, 3)."""
        frames = np.asarray(frames, np.float64)
        if self.bundle.is_toy:
            return frames.reshape(len(frames), -1, 3)[:, 0, :2] if frames.shape[-1] == 3 else frames.reshape(-1, 2)
        return frames

    def _run_frames(self, run_dir: Path, frames: str = "production") -> list[tuple[str, np.ndarray, np.ndarray]]:
        """(stage, frames, weights) of a finished run: production; or (``frames: all``)
        every iteration and production; or (``initial``) iteration 0 alone, the stage biased
        on the config's initial CV (``bias.cv``); each with its ``weights.npy``."""
        from .sampler import saved_atoms_of
        stages = [("production", stage_md_dir(run_dir, "production"), run_dir / "production" / "weights.npy")]
        if not (stages[0][1] / "segment.json").exists() or not stages[0][2].exists():
            raise ConfigError(f"--from: {run_dir} has no finished production (production/weights.npy); "
                              f"finish the run with cvflow run --resume first")
        if frames == "initial":
            stages = [("iter_000", stage_md_dir(run_dir, "iter_000"), run_dir / "iter_000" / "weights.npy")]
        elif frames == "all":
            its = sorted(p for p in run_dir.glob("iter_[0-9][0-9][0-9]") if (p / "weights.npy").exists())
            stages = [(p.name, stage_md_dir(run_dir, p.name), p / "weights.npy") for p in its] + stages
        out = []
        for name, md_dir, wpath in stages:
            if not wpath.exists():
                raise ConfigError(f"--from: {run_dir}/{name} has no weights.npy (the stage is not finished)")
            saved = saved_atoms_of(md_dir)
            if saved is not None and len(saved) != self.bundle.n_atoms:
                raise ConfigError(f"--from: {run_dir}/{name} saved {len(saved)} of the system's "
                                  f"{self.bundle.n_atoms} atoms (md.save_atoms); {self.command} needs every atom")
            x = load_frames(md_dir, self.bundle)
            w = np.load(wpath).astype(np.float64)
            if len(w) != len(x) or (not self.bundle.is_toy and x.shape[1] != self.bundle.n_atoms):
                raise ConfigError(f"--from: {run_dir}/{name}: {len(x)} frames of {x.shape[1]} atoms and "
                                  f"{len(w)} weights; the system has {self.bundle.n_atoms} atoms")
            out.append((name, self._as_config(x), w))
        return out

    def stage_cv(self, run_dir: Path, stage: str) -> Path | None:
        """The CV that biased a stage of a finished run (None: the stage was unbiased), as
        the loop chose it: production's is the run's final CV, iteration k's (k ≥ 1) is
        ``iter_{k-1}/cv.pt``, iteration 0's the initial CV recorded in the manifest
        (``cv_used``: ``bias.cv``, or a composed one written into ``iter_000``)."""
        if stage == "production":
            candidates = [run_dir / art.read_json(run_dir / "summary.json")["final_cv"]]
        else:
            used = art.Manifest(run_dir).data["stages"].get(f"{stage}/md", {}).get("cv_used")
            if used is None:
                return None
            k, used = int(stage.split("_")[1]), Path(used)
            candidates = ([run_dir / f"iter_{k - 1:03d}" / "cv.pt"] if k > 0
                          else [used] * used.is_absolute() + [run_dir / stage / used.name])
        for candidate in candidates:
            if candidate.exists():
                return candidate
        raise ConfigError(f"--from: {run_dir}/{stage} was biased on {candidates[0]}, which is gone; the "
                          f"samples' weights (frame_weights: biased) need that CV file")

    def cv_input(self, x: np.ndarray) -> np.ndarray:
        """Configurations as a CV file takes them: a toy's (n, 2) → (n, 1, 3), z = 0."""
        return toy_positions(x) if self.bundle.is_toy else x

    def constraints(self) -> dict:
        """The system's constraints {(i, j): length in nm}."""
        from openmm import unit as u
        out = {}
        s = self.bundle.system
        for c in range(s.getNumConstraints()):
            i, j, d = s.getConstraintParameters(c)
            out[tuple(sorted((int(i), int(j))))] = float(d.value_in_unit(u.nanometer))
        return out

    def write_samples(self, x: np.ndarray, stem: str = "samples") -> str:
        """Write configurations: ``stem.npy`` (toys, (n, 2)) or ``stem.dcd`` with ``topology.pdb``."""
        if self.bundle.is_toy:
            art.write_npy(self.out / f"{stem}.npy", x)
            return f"{stem}.npy"
        from .sampler import write_trajectory
        write_trajectory(self.out, self.bundle, x, name=f"{stem}.dcd")
        return f"{stem}.dcd"

    def samples(self, stem: str = "samples") -> np.ndarray:
        """The samples: (n, 2) for toys, (n, N, 3) nm for molecules."""
        if self.bundle.is_toy:
            return np.load(self.out / f"{stem}.npy")
        from .sampler import read_dcd
        return read_dcd(self.out / f"{stem}.dcd", self.out / "topology.pdb").xyz.astype(np.float64)

    def membership(self, x: np.ndarray, toy_states) -> dict[str, np.ndarray] | None:
        """Which configurations ``x`` are in each state: toys by the x/y boxes ``toy_states``,
        molecules by the config's ``states``."""
        if self.bundle.is_toy:
            if not toy_states:
                return None
            out = {}
            for name, box in toy_states.items():
                inside = np.ones(len(x), bool)
                for c, b in ((0, box.x), (1, box.y)):
                    if b is not None:
                        inside &= (x[:, c] >= b[0]) & (x[:, c] <= b[1])
                out[name] = inside
            return out
        if not self.cfg.states:
            return None
        import mdtraj as md
        from .states import state_membership
        traj = md.Trajectory(np.asarray(x, np.float32), self.bundle.mdtraj_topology())
        return state_membership(traj, self.cfg.states)


def stage_md_dir(run_dir: Path, stage: str) -> Path:
    """The MD directory of a finished run's stage: ``iter_NNN/md``, or production's
    (:func:`cvflow.workflow.production_md_dir`: the frozen stage when there is one)."""
    from .workflow import production_md_dir
    return production_md_dir(run_dir) if stage == "production" else Path(run_dir) / stage / "md"


def prepare_output_dir(cfg: Config, out: Path, resume: bool, section: str, packages: tuple[str, ...] = ()) -> None:
    """Refuse a directory with results without ``--resume``, and a changed ``section``,
    system, MD settings or seed with it; record the config and the package versions."""
    import openmm
    import torch
    import yaml
    out = Path(out)
    resolved = out / "config.resolved.yaml"
    current = dump_config(cfg)
    has = out.exists() and any(out.iterdir())
    if resume and not (out / "manifest.json").exists():
        raise ConfigError(f"--resume: nothing to resume in {out}; run without --resume to start")
    if has and not resume:
        raise ConfigError(f"--out: {out} is not empty; use --resume to continue it or choose another directory")
    if resume and resolved.exists():
        recorded = recorded_config(yaml.safe_load(resolved.read_text())["config"])
        for key in ("seed", "system", section, "md"):
            if recorded.get(key) != current.get(key):
                raise ConfigError(f"--resume: {key} differs from the one recorded in {resolved}")
    out.mkdir(parents=True, exist_ok=True)
    versions = {"torch": str(torch.__version__), "openmm": str(openmm.__version__)}
    for name in packages:
        import importlib
        versions[name] = str(getattr(importlib.import_module(name), "__version__", "?"))
    art.write_text(resolved, yaml.safe_dump({"config": current, "versions": versions,
                                             "threads": torch.get_num_threads()}, sort_keys=False))
