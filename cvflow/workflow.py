"""The loop: sample → learn a CV → eABF on it → reweight → learn again, until the CV
stops changing (Belkacemi, Gkeka, Lelièvre & Stoltz, JCTC 18, 2022); then production.

Each stage runs only if the manifest does not list it as finished, so ``--resume``
continues from the last finished stage (and MD from its last checkpoint).
"""
from __future__ import annotations

import functools
import platform as _platform
import time
from pathlib import Path

import numpy as np
import yaml

from . import __version__
from . import artifacts as art
from .config import (Config, ConfigError, check_loop_config, dump_config, input_files, kept_input,
                     recorded_config)
from .convergence import SCORES, bootstrap_threshold
from .dataset import (effective_sample_size, expand_frames, make_features, normalised_weights,
                      stage_log_weights)
from .export import export_cv
from .features import featurize
from .fes import Grid
from .progress import Progress, log
from .sampler import derive_seed, last_positions, load_frames, md_threads, run_segment
from .stop import check_stop
from .system import SystemBundle, build_system, choose_platform, saved_atom_indices, usable_cores
from .train import (TrainResult, bootstrap_member, bootstrap_workers, encode, load_result, process_map,
                    save_result, train_model)
from .units import kT

#: config keys that may change on --resume (run length only)
RUN_LENGTH_KEYS = {("md", "steps"), ("convergence", "production_steps"), ("convergence", "max_iterations"),
                   ("convergence", "production_frozen_steps"), ("convergence", "production_frozen_min_transitions"),
                   ("convergence", "production_frozen_max_steps"), ("output",)}
#: config keys that choose where and how fast it runs, not what it computes: they may change
#: on --resume (a cluster job resumes on another node, with another GPU or none)
EXECUTION_KEYS = {("md", "platform"), ("md", "threads"), ("md", "pin"), ("md", "pin_offset"),
                  ("model", "threads"), ("model", "device"),
                  ("convergence", "bootstrap", "workers"), ("execution", "backend"),
                  ("execution", "scheduler"), ("execution", "workers")}
EXECUTION_PREFIXES = {("execution", "cluster")}


# an iteration's part in confirming a stop (convergence.confirm), in words
CONFIRMATION_TEXT = {"awaiting": "the stop waits for one more iteration to confirm it",
                     "confirmed": "confirms the previous iteration's stop",
                     "refuted": "does not confirm the previous iteration's stop"}


def score_text(entry: dict) -> str:
    """An iteration's convergence check in words, scores to 3 decimals."""
    if entry.get("regscore") is None:
        return "first CV trained (no previous CV to compare with)"
    floored = " (floored: the bootstrap networks disagree)" if entry.get("threshold_floored") else ""
    verdict = "passed" if entry.get("passed") else "not passed"
    if entry.get("not_counted"):
        verdict += f" (not counted: {entry['not_counted']})"
    if entry.get("confirmation"):
        verdict += f"; {CONFIRMATION_TEXT[entry['confirmation']]}"
    return f"regscore {entry['regscore']:.3f}, threshold {entry['threshold']:.3f}{floored}: {verdict}"


def iteration_dir(run_dir: Path, i: int) -> Path:
    return Path(run_dir) / f"iter_{i:03d}"


def library_versions() -> dict:
    """The versions of what computes a run's numbers (recorded in config.resolved.yaml)."""
    import mdtraj
    import numba
    import numpy
    import openmm
    import scipy
    import torch
    versions = {"cvflow": __version__, "openmm": str(openmm.__version__), "torch": str(torch.__version__),
                "numpy": str(numpy.__version__), "scipy": str(scipy.__version__), "numba": str(numba.__version__),
                "mdtraj": str(mdtraj.__version__), "python": _platform.python_version()}
    try:
        from .bias.plumed import plumed_version
        versions["plumed"] = plumed_version()
    except Exception:
        versions["plumed"] = None
    return versions


def recorded_version_changes(config_path) -> list[str]:
    """Where the config is a run's ``config.resolved.yaml``: the libraries whose version
    differs from the one that run recorded (``"torch 2.13.0+cpu → 2.14.0"``), since the same
    config and seed give the same numbers only with the same versions and threads."""
    import yaml
    from .config import is_resolved_record
    try:
        data = yaml.safe_load(Path(config_path).read_text())
    except (OSError, yaml.YAMLError):
        return []
    if not isinstance(data, dict) or not is_resolved_record(data):
        return []
    now = library_versions()
    return [f"{k} {v} → {now.get(k)}" for k, v in (data.get("versions") or {}).items() if k in now and now[k] != v]


THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS",
                    "OPENMM_CPU_THREADS")


def execution_record(cfg: Config) -> dict:
    """Where and with how many threads a run computes (config.resolved.yaml). None of it
    changes the numbers on the Reference platform (tests/test_loop.py holds one thread
    against torch's default to the bit); OpenMM's CPU platform gives the same trajectory
    twice only on one thread (md.threads, else OPENMM_CPU_THREADS, else every core; pinned
    with md.pin: one unless md.threads says more)."""
    import os
    import torch
    from .train import training_device
    threads = cfg.model.threads or torch.get_num_threads()
    return {"host": _platform.node(), "machine": _platform.machine(), "usable_cores": usable_cores(),
            "torch_threads": int(threads), "md_threads": md_threads(cfg.md), "md_pin": cfg.md.pin,
            "training_device": str(training_device(cfg.model.device)),
            "bootstrap_workers": cfg.convergence.bootstrap.workers,
            "env": {k: os.environ.get(k) for k in THREAD_VARIABLES}}


def _flatten(d, prefix=()):
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, prefix + (k,)))
        else:
            out[prefix + (k,)] = v
    return out


def config_differences(old: dict, new: dict, run_dir: Path | None = None) -> list[str]:
    """Keys whose values differ, other than run length. With ``run_dir``, an input file
    that is the run directory's copy of the recorded one (:func:`keep_inputs`) is no change."""
    a, b = _flatten(old), _flatten(new)
    diffs = []
    for key in sorted(set(a) | set(b)):
        if key in RUN_LENGTH_KEYS or key in EXECUTION_KEYS or key[:1] == ("output",) \
                or key[:2] in EXECUTION_PREFIXES:
            continue
        if run_dir is not None and isinstance(a.get(key), str) and isinstance(b.get(key), str) and \
                Path(b[key]).resolve() == kept_input(Path(run_dir).resolve(), ".".join(key), Path(a[key])):
            continue
        if a.get(key) != b.get(key):
            diffs.append(f"{'.'.join(key)}: {a.get(key)!r} -> {b.get(key)!r}")
    return diffs


def _checkpoint_steps(run_dir: Path) -> dict[str, int]:
    """The MD stages of a run directory with a checkpoint past step 0: {stage dir: step}."""
    out = {}
    for prog in sorted(Path(run_dir).glob("**/ckpt/progress.json")):
        try:
            step = int(art.read_json(prog)["step"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if step > 0:
            out[str(prog.parent.parent.relative_to(run_dir))] = step
    return out


KEEP_INPUT_MAX_BYTES = 256 * 2 ** 20  # larger input files are recorded, not copied


def keep_inputs(cfg: Config, run_dir: Path) -> None:
    """Copy every input file the config names (PDB, CV, references, saddle frames) into
    ``RUN_DIR/inputs/KEY/NAME``, once: ``cvflow report``, ``export`` and ``--resume`` from
    ``config.resolved.yaml`` use the copy when the file is no longer where the run found it
    (:func:`cvflow.config.with_kept_inputs`), so a run directory moved to another machine
    still holds what it needs. A file over :data:`KEEP_INPUT_MAX_BYTES` (a long trajectory
    of saddle frames or generator data) is not copied into every run: its path, size and
    SHA-256 go to ``inputs/KEY/NAME.source.json`` instead, with a warning."""
    import hashlib
    import shutil
    for key, src in input_files(cfg):
        dest = kept_input(run_dir, key, src)
        source = dest.with_name(dest.name + ".source.json")
        if dest.is_file() or source.is_file() or not src.is_file():
            continue
        dest.parent.mkdir(parents=True, exist_ok=True)
        size = src.stat().st_size
        if size > KEEP_INPUT_MAX_BYTES:
            digest = hashlib.sha256()
            with open(src, "rb") as f:
                for block in iter(lambda: f.read(2 ** 20), b""):
                    digest.update(block)
            art.write_json(source, {"key": key, "path": str(src), "bytes": size, "sha256": digest.hexdigest()})
            log.warning(f"inputs: {key} ({src}, {size / 2 ** 20:,.0f} MiB) is over the "
                        f"{KEEP_INPUT_MAX_BYTES / 2 ** 20:,.0f} MiB a run directory copies; its path and "
                        f"SHA-256 are kept in {source.relative_to(run_dir)}, so a moved run needs it where it was")
            continue
        with art.atomic_path(dest) as tmp:
            shutil.copyfile(src, tmp)


def run_dir_state(run_dir: Path) -> str:
    """``missing``, ``empty``, ``foreign`` (files that are not a cvflow run's), ``stranded``
    (a cvflow run that computed nothing: it stopped at start-up) or ``started``."""
    run_dir = Path(run_dir)
    if not run_dir.exists():
        return "missing"
    names = [p.name for p in run_dir.iterdir()]
    if not names:
        return "empty"
    if "manifest.json" not in names and "config.resolved.yaml" not in names:
        return "foreign"
    manifest = art.Manifest(run_dir)
    if manifest.data.get("stages") or _checkpoint_steps(run_dir) or any(run_dir.glob("**/segment.json")):
        return "started"
    return "stranded"


def resume_point(run_dir: Path) -> str:
    """Where a resumed run goes on from, in words: the stage, and the step of its checkpoint."""
    manifest = art.Manifest(run_dir)
    done = list(manifest.data.get("stages", {}))
    current = manifest.data.get("current")
    ckpts = _checkpoint_steps(run_dir)
    where = f"stage {current}" if current else (f"after stage {done[-1]}" if done else "the start")
    steps = [f"{k} at step {v:,}" for k, v in ckpts.items() if not (Path(run_dir) / k / "segment.json").exists()]
    return where + (f" (checkpoint: {', '.join(steps)})" if steps else "") + f"; {len(done)} stage(s) finished"


def _clear_stranded(run_dir: Path) -> None:
    """Remove what a run that stopped at start-up left (nothing computed: no stage finished,
    no MD step past 0), so that the directory can be used again."""
    import shutil
    for p in Path(run_dir).iterdir():
        if p.is_dir() and (p.name.startswith("iter_") or p.name in ("production", "inputs")):
            shutil.rmtree(p)
        elif p.name in ("manifest.json", "config.resolved.yaml", "blowup.json"):
            p.unlink()


def prepare_run_dir(cfg: Config, run_dir: Path, resume: bool) -> dict:
    """Refuse a directory with results without ``resume``; with it, refuse a changed config
    (run length and where it runs may change). A directory that a run left at start-up,
    with nothing computed, is cleared and used again. ``--resume`` on a directory that
    does not exist, or holds no run, is refused (a typo in ``--out`` would otherwise start
    afresh). Writes ``config.resolved.yaml`` (config with defaults, seeds, versions)."""
    run_dir = Path(run_dir)
    resolved_path = run_dir / "config.resolved.yaml"
    current = dump_config(cfg)
    state = run_dir_state(run_dir)
    if state in ("stranded", "started") and art.is_live(run_dir):
        raise ConfigError(f"output: another cvflow process is working on {run_dir}: {art.liveness(run_dir)}; "
                          f"wait for it, or stop it first")
    if resume and state in ("missing", "empty"):
        raise ConfigError(f"--resume: nothing to resume in {run_dir} ("
                          f"{'no such directory' if state == 'missing' else 'it is empty'}); "
                          f"check --out, or run without --resume to start")
    if state == "foreign":
        raise ConfigError(f"output: {run_dir} is not empty and holds no cvflow run; choose another output directory")
    if state == "stranded":
        log.info(f"{run_dir}: a run stopped there before computing anything; starting afresh")
        _clear_stranded(run_dir)
    elif state == "started":
        if not resume:
            raise ConfigError(f"output: run directory {run_dir} is not empty; use --resume to continue it "
                              f"or choose another output directory")
        if resolved_path.exists():
            recorded = recorded_config(yaml.safe_load(resolved_path.read_text())["config"])
            diffs = config_differences(recorded, current, run_dir)
            if diffs:
                raise ConfigError(f"--resume: the config differs from the one recorded in {resolved_path}: "
                                  + "; ".join(diffs[:5]))
        log.info(f"resuming {run_dir} from {resume_point(run_dir)}")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise ConfigError(f"output: cannot write to {run_dir}: {e.strerror}") from None
    keep_inputs(cfg, run_dir)
    seeds = {"root": cfg.seed}
    for i in range(cfg.convergence.max_iterations):
        seeds[f"iter_{i:03d}"] = {"md": derive_seed(cfg.seed, i, 0), "train": derive_seed(cfg.seed, i, 1),
                                  "bootstrap": derive_seed(cfg.seed, i, 2)}
    seeds["production"] = {"md": derive_seed(cfg.seed, 10_000, 0)}
    resolved = {"config": current, "seeds": seeds, "versions": library_versions(), "execution": execution_record(cfg)}
    art.write_text(resolved_path, yaml.safe_dump(resolved, sort_keys=False))
    return resolved


class Workflow:
    """Runs the stages of one cvflow run directory."""

    def __init__(self, cfg: Config, run_dir: Path, progress: Progress | None = None, engine: str | None = None):
        check_loop_config(cfg)
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.progress = progress or Progress(interactive=False)
        self.manifest = art.Manifest(self.run_dir)
        self.bundle: SystemBundle = build_system(cfg.system, cfg.features.atoms)
        if cfg.execution.backend == "local":  # MD runs here: check its platform before the run directory
            choose_platform(cfg.md.platform, self.bundle.n_atoms, self.bundle.system)
        self.features = make_features(self.bundle, cfg.features)  # on every atom: the exported CV's
        # the atoms that frames hold (md.save_atoms; None: all), and the features read from them
        self.saved = saved_atom_indices(self.bundle, cfg.md.save_atoms)
        self.frame_features = make_features(self.bundle, cfg.features, self.saved)
        top = self.bundle.mdtraj_topology() if not self.bundle.is_toy else None
        self.frame_topology = top.subset(self.saved) if self.saved is not None else top
        self.beta = 1.0 / kT(cfg.md.temperature)
        from .bias import resolve_engine
        self.engine = engine or resolve_engine(cfg.bias.engine, cfg.execution.walkers, cfg.bias.stride)
        self.executor = None  # a Dask client, opened when walkers > 1
        self._pooled_features: dict[int, np.ndarray] = {}  # per earlier iteration (training_data: pooled)
        from .states import check_states
        check_states(cfg, self.bundle)  # a bad selection fails now, not after the first MD
        ts = cfg.model.transition_states
        self.ts_file_features = None  # read now, so that a bad file fails before any MD
        if ts is not None and ts.source == "file":
            from .transition_states import file_frames
            self.ts_file_features = featurize(file_frames(ts.file, self.bundle), self.features)

    # -- stages -----------------------------------------------------------------------------
    def _stage(self, name: str, fn):
        if self.manifest.done(name):
            return self.manifest.get(name)
        check_stop(f"before stage {name}")
        self.manifest.current(name)
        log.info(f"stage {name}")
        info = fn()
        self.manifest.mark(name, info)
        return info

    def run(self) -> dict:
        try:
            return self._run()
        finally:
            if self.executor is not None:
                self.executor.close()
                self.executor = None

    def _run(self) -> dict:
        cfg = self.cfg
        t_start = time.perf_counter()
        iterations = []
        converged = False
        prev = None  # info of the previous iteration's training stage
        for i in range(cfg.convergence.max_iterations):
            it_dir = iteration_dir(self.run_dir, i)
            t0 = time.perf_counter()
            md_info = self._stage(f"iter_{i:03d}/md", lambda: self._md(i, it_dir, prev))
            tr_info = self._stage(f"iter_{i:03d}/train", lambda: self._train(i, it_dir, prev, md_info))
            ck_info = self._stage(f"iter_{i:03d}/check", lambda: self._check(i, it_dir, prev, tr_info))
            entry = {"index": i, "regscore": ck_info.get("regscore"), "threshold": ck_info.get("threshold"),
                     "regscore_per_output": ck_info.get("regscore_per_output"),
                     "bootstrap_quantile": ck_info.get("bootstrap_quantile"),
                     "threshold_floored": ck_info.get("threshold_floored"), "passed": ck_info.get("passed"),
                     "not_counted": ck_info.get("not_counted"), "confirmation": ck_info.get("confirmation"),
                     "fes_regions": md_info.get("fes_regions"), "reweighting": tr_info.get("reweighting"),
                     "recoveries": md_info.get("recoveries", []), "states": tr_info.get("states"),
                     "cv": f"iter_{i:03d}/cv.pt", "fes": md_info.get("fes"), "frames": md_info["frames"],
                     "steps": md_info["steps"], "ess": tr_info.get("ess"),
                     "ess_warning": bool(tr_info.get("ess_warning", False)),
                     "walkers_failed": [w["index"] for w in md_info.get("walkers", []) if w["status"] != "done"],
                     "wall_seconds": md_info["wall_seconds"] + tr_info["wall_seconds"] + ck_info["wall_seconds"],
                     # where the time went, per part of the iteration
                     "seconds": {"md": md_info["wall_seconds"], "reweight": tr_info.get("reweight_seconds"),
                                 "training": tr_info.get("training_seconds"),
                                 "regscore": ck_info.get("regscore_seconds"),
                                 "bootstrap": ck_info.get("bootstrap_seconds")}}
            iterations.append(entry)
            log.info(f"iteration {i}: {score_text(entry)} ({time.perf_counter() - t0:.1f} s)")
            prev = tr_info
            if ck_info.get("converged"):
                converged = True
                break
        final_cv = f"iter_{iterations[-1]['index']:03d}/cv.pt"
        prod = self._stage("production/md", lambda: self._production(prev))
        if cfg.convergence.production_frozen_steps:
            prod = {**prod, "frozen": self._stage("production/frozen", lambda: self._production_frozen(prev))}
        analysis = self._stage("production/analysis", lambda: self._analyse_production(prev))
        if analysis.get("states"):
            from .states import format_states
            for line in format_states(analysis["states"]):
                log.info(f"production states: {line.strip()}")
        last = iterations[-1]
        summary = {"converged": converged,
                   # how the stop was decided: the last iteration's score against an unfloored threshold
                   "convergence": {"rule": f"regscore ({cfg.convergence.score}, weakest output) >= bootstrap "
                                           f"threshold, threshold not floored, "
                                           + ("not warm-started from an unbiased iteration's network, "
                                              if cfg.model.warm_start else "")
                                           + f"{cfg.convergence.consecutive} time(s) in a row"
                                           + (", then confirmed by one more iteration (its bootstrap networks "
                                              "agree, its regscore against the passing CV at least "
                                              f"{cfg.convergence.bootstrap.min_threshold})"
                                              if cfg.convergence.confirm else ""),
                                   "regscore": last["regscore"], "threshold": last["threshold"],
                                   "threshold_floored": last["threshold_floored"],
                                   "iterations": len(iterations)},
                   "iterations": iterations, "final_cv": final_cv,
                   "final_fes": prod["frozen"]["fes"] if "frozen" in prod else prod.get("fes"),
                   "final_fes_reweighted": analysis.get("fes_reweighted"),
                   "production": prod, "production_analysis": analysis,
                   "states": analysis.get("states"),
                   "engine": self.engine, "wall_seconds_this_session": time.perf_counter() - t_start}
        art.write_json(self.run_dir / "summary.json", summary)
        self.manifest.current(None)
        return summary

    def _grid_for(self, info) -> Grid:
        if self.cfg.bias.grid is not None:
            return Grid.from_dims(self.cfg.bias.grid)
        return Grid.from_list(info["grid"])

    def _segment(self, out: Path, steps: int, seed: int, cv_path, grid, engine: str, prev_md: Path | None,
                 label: str, **bias_start) -> dict:
        """One MD stage: a single segment started from the last frame of ``prev_md``, or
        ``execution.walkers`` walkers started from frames of ``prev_md`` spread over the CV.
        ``bias_start`` (one walker): :func:`run_segment`'s ``bias_start`` and ``freeze``."""
        cfg = self.cfg
        frames = load_frames(prev_md, self.bundle) if prev_md is not None else np.zeros((0, self.bundle.n_atoms, 3))
        if cfg.execution.walkers == 1:
            start = frames[-1] if len(frames) else None
            if start is not None and self.saved is not None:  # frames without every atom
                start = last_positions(prev_md, self.bundle)
            res = run_segment(cfg, self.bundle, out, steps, seed, cv_path=cv_path, grid=grid, engine=engine,
                              start_positions=start,
                              progress=self.progress.md(label, cfg.md.timestep), label=label, **bias_start)
            return res.to_dict()
        from .walkers import Executor, run_walkers, spread_starts
        if self.executor is None:
            self.executor = Executor(cfg)
        xi = self._cv(cv_path, frames) if cv_path is not None and len(frames) else None
        starts = spread_starts(frames, xi, cfg.execution.walkers)
        res = run_walkers(cfg, self.bundle, out, steps, seed, cv_path=cv_path, grid=grid, engine=engine,
                          starts=starts, label=label, executor=self.executor)
        info = res.to_dict()
        info["walkers"] = art.read_json(out / "segment.json").get("walkers", [])
        return info

    def _md(self, i: int, it_dir: Path, prev) -> dict:
        cfg = self.cfg
        seed = derive_seed(cfg.seed, i, 0)
        cv_path, grid, engine = None, None, "none"
        if i == 0 and cfg.bias.cv is not None:
            from .initial_cv import initial_grid, resolve_initial_cv
            cv_path = resolve_initial_cv(cfg, self.bundle, it_dir)
            grid, engine = initial_grid(cfg, self.bundle, cv_path), self.engine
        elif i > 0:
            cv_path, grid, engine = self.run_dir / prev["cv"], self._grid_for(prev), self.engine
        prev_md = iteration_dir(self.run_dir, i - 1) / "md" if i > 0 else None
        info = self._segment(it_dir / "md", cfg.md.steps, seed, cv_path, grid, engine, prev_md, f"iteration {i} MD")
        info["biased"] = engine != "none"
        info["fes"] = f"iter_{i:03d}/md/fes.csv" if engine != "none" else None
        info["cv_used"] = str(cv_path) if cv_path is not None else None
        return info

    def _data(self, it_dir: Path):
        frames = load_frames(it_dir / "md", self.bundle)
        return frames, featurize(frames, self.frame_features)

    def _cv(self, cv_path, frames: np.ndarray) -> np.ndarray:
        """A CV file on this run's frames (of the saved atoms)."""
        return cv_values(cv_path, frames, self.saved, self.bundle.n_atoms)

    def _weights(self, i: int, it_dir: Path, md_info, xi: np.ndarray | None, n: int) -> tuple[np.ndarray, dict]:
        """Normalised Boltzmann weights of a biased iteration's frames by ``bias.reweighting``
        (``extended``: ŵ ∝ e^{−βA(λ)}/ρ̃(λ); ``czar``: the paper's ŵ ∝ e^{−βF(ξ_{i−1}(x))}, with
        ``xi`` the biasing CV on the frames), else uniform; and how many frames had no free
        energy (left out with weight 0)."""
        if not md_info["biased"] or not self.cfg.model.reweight:
            return np.full(n, 1.0 / n), {}
        from .train import TrainingError
        logw, info = stage_log_weights(it_dir / "md", self.beta, self.cfg.bias.reweighting, xi,
                                       divide_by_histogram=False)
        if info.get("note"):
            log.info(f"iteration {i} reweighting: {info['estimator']} ({info['note']})")
        along = "A(λ) of the extended variable" if info.get("estimator") == "extended" else "CZAR free energy"
        if info["frames_without_free_energy"] == n:
            raise TrainingError(f"iteration {i} reweighting: no frame has a free energy ({along}) "
                                f"(all {n} lie outside the sampled grid of {it_dir / 'md'})")
        if info["frames_without_free_energy"]:
            log.warning(f"iteration {i} reweighting: {info['frames_without_free_energy']} of {n} frames "
                        f"({100 * info['fraction_without_free_energy']:.1f}%) lie outside the main connected "
                        f"region of the {along} (or outside its grid) and get weight 0")
        w = normalised_weights(logw)
        if not np.all(np.isfinite(w)):
            raise TrainingError(f"iteration {i}: weights are not finite")
        return w, info

    def _train(self, i: int, it_dir: Path, prev, md_info) -> dict:
        cfg = self.cfg
        t0 = time.perf_counter()
        frames, x = self._data(it_dir)
        prev_cv = md_info.get("cv_used")
        t_w = time.perf_counter()
        # the biasing CV on the frames, once, for the weights and the states
        ts = cfg.model.transition_states
        need_xi = cfg.model.reweight or cfg.states or (ts is not None and ts.source == "barrier")
        xi = self._cv(prev_cv, frames) if md_info["biased"] and need_xi else None
        w, w_info = self._weights(i, it_dir, md_info, xi, len(frames))
        t_w = time.perf_counter() - t_w
        ess = effective_sample_size(w)
        if ess < cfg.convergence.min_ess_fraction * len(w):
            log.warning(f"iteration {i}: effective sample size {ess:.0f} of {len(w)} frames is low")
        art.write_npy(it_dir / "weights.npy", w)
        states = self._states(frames, it_dir / "md", xi)
        x_ts, ts_info = self._transition_states(i, it_dir, md_info, frames, x, xi)
        t_t = time.perf_counter()
        x_train, w_train = self._training_set(i, x, w)
        result = train_model(x_train, w_train, cfg.model, derive_seed(cfg.seed, i, 1),
                             progress=self.progress.train(f"iter {i} training"), label=f"iteration {i} training",
                             extra=x_ts, extra_weight=ts.weight if ts is not None else 0.0,
                             init=self._warm_start(i, prev))
        save_result(result, it_dir / "model.pt")
        t_t = time.perf_counter() - t_t
        how = "early stop" if result.epochs_run < cfg.model.epochs else "the epoch limit"
        log.info(f"iteration {i} training: {result.epochs_run} of at most {cfg.model.epochs} epochs ({how}), "
                 f"best validation loss {result.best_val:.4g}, {t_t:.1f} s")
        if len(result.start_losses) > 1:
            log.info(f"iteration {i} training: {len(result.start_losses)} starts, validation losses "
                     + ", ".join(f"{v:.4g}" for v in result.start_losses) + "; the lowest kept")
        art.write_csv(it_dir / "training.csv", ["epoch", "train_loss", "val_loss"], np.array(result.history),
                      comments=["weighted mean squared reconstruction error, normalised features"])
        export_cv(self.features, result.mean, result.std, result.model.encoder, self.bundle.n_atoms,
                  it_dir / "cv.pt", check_positions=expand_frames(frames[:: max(1, len(frames) // 50)], self.saved,
                                                                  self.bundle.n_atoms))
        from .cvstats import gradient_stats
        from .fastcv import load_cv
        cv_stats = gradient_stats(load_cv(it_dir / "cv.pt", self.bundle.n_atoms), frames, saved=self.saved)
        art.write_json(it_dir / "cv_stats.json", cv_stats)
        z = encode(result, x)
        decoder = self._export_decoder(result, it_dir, x, w, z)
        grid = self._grid_from_values(z)
        from .bias.plumed import export_plumed
        export_plumed(cfg, self.bundle, it_dir / "cv.pt", Grid.from_list(grid), it_dir / "plumed")
        return {"cv": f"iter_{i:03d}/cv.pt", "grid": grid, "ess": ess, "frames": len(frames),
                "ess_warning": bool(ess < cfg.convergence.min_ess_fraction * len(w)),
                "best_val_loss": result.best_val, "start_val_losses": result.start_losses,
                "epochs": result.epochs_run, "reweighting": w_info,
                "states": states, "cv_gradient": cv_stats, "decoder": decoder, "transition_states": ts_info,
                "reweight_seconds": t_w, "training_seconds": t_t, "wall_seconds": time.perf_counter() - t0}

    def _training_set(self, i: int, x: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """What iteration ``i`` trains on (``model.training_data``): its own frames and
        weights, or (``pooled``) also those of the earlier biased iterations, each
        iteration's normalised weights scaled by its Kish ESS (an iteration whose weight
        sits on few frames counts less), normalised over all. Unbiased iterations are not
        pooled: their frames have not left the starting basin, so their uniform weights
        (ESS = all frames) would make that basin outweigh the rest."""
        if self.cfg.model.training_data == "iteration" or i == 0:
            return x, w
        xs, ws = [], []
        for k in range(i):
            d = iteration_dir(self.run_dir, k)
            if md_unbiased(d):
                continue
            wk = np.load(d / "weights.npy")
            if k not in self._pooled_features:  # read once per process, not once per iteration and stage
                self._pooled_features[k] = self._data(d)[1]
            xs.append(self._pooled_features[k])
            ws.append(wk / wk.sum() * effective_sample_size(wk))
        xs.append(x)
        ws.append(w / w.sum() * effective_sample_size(w))
        w_all = np.concatenate(ws)
        return np.concatenate(xs), w_all / w_all.sum()

    def _warm_start(self, i: int, prev) -> TrainResult | None:
        """The previous iteration's network, which iteration ``i``'s (and its bootstrap's)
        starts from with ``model.warm_start``; None otherwise."""
        if not self.cfg.model.warm_start or prev is None:
            return None
        path = iteration_dir(self.run_dir, last_train_index(prev)) / "model.pt"
        if not path.exists():
            raise ConfigError(f"model.warm_start: {path} is missing, so iteration {i} has no network to start "
                              "from; run the config into a new output directory")
        return load_result(path, self.cfg.model)

    def _transition_states(self, i: int, it_dir: Path, md_info, frames, x, xi):
        """The features of this iteration's transition-state frames (``model.transition_states``)
        and what was used, also written to ``transition_states.json`` (and the features to
        ``transition_states.npy``, which the bootstrap reads). ``(None, None)`` without them."""
        ts = self.cfg.model.transition_states
        if ts is None:
            return None, None
        from .transition_states import barrier_frames
        if ts.source == "file":
            x_ts = self.ts_file_features
            info = {"source": "file", "file": str(ts.file), "frames": len(x_ts)}
        elif xi is None:
            x_ts = np.zeros((0, x.shape[1]))
            info = {"source": "barrier", "frames": 0,
                    "note": "this iteration's MD was not biased, so there is no free energy along a CV yet"}
        else:
            idx, info = barrier_frames(xi, it_dir / "md" / "fes.csv", self.beta, ts,
                                       np.random.default_rng(derive_seed(self.cfg.seed, i, 3)))
            x_ts = x[idx]
            info.update(frames=int(len(idx)), frame_indices=idx.tolist())
            if not len(idx):
                log.warning(f"iteration {i}: no barrier of at least {ts.prominence_kT:g} kT in the free energy "
                            "along the previous CV; trained without transition-state frames")
        info["weight"] = ts.weight
        log.info(f"iteration {i}: {info['frames']} transition-state frame(s) ({ts.source}), weight {ts.weight:g}")
        art.write_npy(it_dir / "transition_states.npy", x_ts)
        art.write_json(it_dir / "transition_states.json", info)
        return x_ts, {k: v for k, v in info.items() if k != "frame_indices"}

    def _export_decoder(self, result, it_dir: Path, x: np.ndarray, w: np.ndarray, z: np.ndarray) -> dict | None:
        """``iter_NNN/decoder.pt`` (z → reconstructions (n, K, n_features), feature units) and
        the share of the (weighted) frames that each decoder reconstructs best."""
        model = result.model
        dec = model.decoder_module()
        if dec is None:
            return None
        from .export import export_decoder
        loaded = export_decoder(dec, result.mean, result.std, model.n_decoders, it_dir / "decoder.pt",
                                check_z=z[:: max(1, len(z) // 50)])
        import torch
        with torch.no_grad():
            rec = loaded(torch.as_tensor(z)).numpy()
        best = ((rec - x[:, None, :]) ** 2).sum(-1).argmin(1)
        share = [float(w[best == k].sum() / w.sum()) for k in range(model.n_decoders)]
        return {"file": f"{it_dir.name}/decoder.pt", "decoders": model.n_decoders, "weight_share": share}

    def _grid_from_values(self, z: np.ndarray) -> dict:
        """Grid over the CV's observed range with a margin, inside the model's ``cv_range``."""
        from .models import MODELS
        b = self.cfg.bias
        low, high = MODELS[self.cfg.model.kind].cv_range_for(self.cfg.model)
        lo, hi = z.min(0), z.max(0)
        span = np.maximum(hi - lo, 1e-3)
        lo = np.maximum(lo - b.grid_margin * span, low)
        hi = np.minimum(hi + b.grid_margin * span, high)
        return Grid(lo, hi, [b.bins] * len(lo)).to_list()

    def _check(self, i: int, it_dir: Path, prev, tr_info) -> dict:
        t0 = time.perf_counter()
        metrics = {"index": i, "ess": tr_info["ess"], "ess_warning": tr_info.get("ess_warning", False),
                   "frames": tr_info["frames"], "best_val_loss": tr_info["best_val_loss"]}
        if i == 0 or prev is None:
            metrics.update(regscore=None, threshold=None, converged=False)
        else:
            frames, x = self._data(it_dir)
            t_r = time.perf_counter()
            old = self._cv(self.run_dir / prev["cv"], frames)
            new = self._cv(it_dir / "cv.pt", frames)
            per_output = SCORES[self.cfg.convergence.score](old, new)
            score = float(per_output.min())
            t_r = time.perf_counter() - t_r
            t_b = time.perf_counter()
            thr = self._threshold(i, it_dir, x, prev)
            metrics.update(regscore=score, regscore_per_output=per_output.tolist(), **thr,
                           regscore_seconds=t_r, bootstrap_seconds=time.perf_counter() - t_b)
            metrics.update(self._stop_rule(i, score, thr, prev))
        metrics["wall_seconds"] = time.perf_counter() - t0
        art.write_json(it_dir / "metrics.json", metrics)
        return metrics

    def _stop_rule(self, i: int, score: float, thr: dict, prev) -> dict:
        """An iteration passes when its regscore reaches the threshold and the threshold was
        not floored: a floored threshold means the bootstrap networks disagree, so the CV is
        not yet determined by the data, and that never counts as convergence. With
        ``model.warm_start``, a pass also needs the network it started from to have been
        trained on biased frames (:meth:`_warm_start_unbiased`). The run has converged after
        ``convergence.consecutive`` passes in a row; with ``convergence.confirm``, once one
        more iteration confirms them (:meth:`_confirms`)."""
        c = self.cfg.convergence
        reached = bool(score >= thr["threshold"])
        floored = bool(thr.get("threshold_floored", False))
        unbiased_start = self._warm_start_unbiased(prev)
        passed = reached and not floored and not unbiased_start
        before = {}
        if i > 0:
            prev_metrics = iteration_dir(self.run_dir, i - 1) / "metrics.json"
            if prev_metrics.exists():
                before = art.read_json(prev_metrics)
        in_a_row = int(before.get("passes_in_a_row", 0)) + 1 if passed else 0
        out = {"passed": passed, "passes_in_a_row": in_a_row, "converged": bool(in_a_row >= c.consecutive)}
        if c.confirm and before.get("confirmation") == "awaiting":
            ok = self._confirms(i, score, floored)
            out.update(converged=ok, confirmation="confirmed" if ok else "refuted")
        elif c.confirm and out["converged"]:
            out.update(converged=False, confirmation="awaiting")
            if i + 1 >= c.max_iterations:
                log.warning(f"iteration {i}: passed, but convergence.confirm needs one more iteration and "
                            f"convergence.max_iterations ({c.max_iterations}) leaves none: not converged")
        if floored and reached:
            log.warning(f"iteration {i}: regscore {score:.4f} reaches the floored threshold, but the bootstrap "
                        "networks disagree (their quantile is below the floor): not converged")
        if unbiased_start and reached:
            out["not_counted"] = "warm start from unbiased"
            log.info(f"iteration {i}: regscore {score:.4f} reaches the threshold, but this iteration's network "
                     f"and its bootstrap's started from iteration {last_train_index(prev)}'s, which was trained "
                     "on unbiased frames only: a pass is counted from the next iteration on (model.warm_start)")
        return out

    def _confirms(self, i: int, score: float, floored: bool) -> bool:
        """Whether iteration ``i``, biased on the CV that passed, confirms the stop
        (``convergence.confirm``): its bootstrap networks agree (the threshold was not
        floored) and its CV agrees with the one that passed at least to
        ``convergence.bootstrap.min_threshold``. Not the threshold itself, which near
        convergence a good CV misses half the time."""
        floor = self.cfg.convergence.bootstrap.min_threshold
        ok = not floored and score >= floor
        if not ok:
            why = ("its bootstrap networks disagree (threshold floored)" if floored
                   else f"its regscore {score:.3f} against the CV that passed is below {floor}")
            log.warning(f"iteration {i}: does not confirm iteration {i - 1}'s stop: {why}; the new frames "
                        "overturn that CV, so the loop goes on")
        return ok

    def _warm_start_unbiased(self, prev) -> bool:
        """Whether this iteration's networks warm-started (``model.warm_start``) from a network
        that was trained on the frames of an unbiased MD only.

        Then the new network and every bootstrap network begin at the old CV, and when the
        first biased frames do not pull them away (on alanine dipeptide, when eABF on the
        unbiased CV barely reached C7ax: 1–5% of the frames), the regscore and the threshold
        both measure how little fine-tuning moves a network, not whether the CV is right.
        Measured: seeds 5 and 8 of ``configs/ala2-paper.yaml`` stopped there, seed 8 with a
        ΔF 12.7 kJ/mol off (README, "Early stops")."""
        if not self.cfg.model.warm_start or prev is None:
            return False
        return md_unbiased(iteration_dir(self.run_dir, last_train_index(prev)))

    def _threshold(self, i: int, it_dir: Path, x: np.ndarray, prev) -> dict:
        """The convergence threshold for iteration ``i`` and, with ``auto``, how it was found:
        the pairwise bootstrap scores, their quantile and whether the floor
        (``convergence.bootstrap.min_threshold``) replaced it. Keys as in metrics.json.
        The bootstrap networks train as the iteration's did (on its training set, from the
        same warm start) and are compared on iteration ``i``'s frames ``x``, as the regscore is."""
        cfg = self.cfg
        if cfg.convergence.threshold != "auto":
            return {"threshold": float(cfg.convergence.threshold), "bootstrap_scores": None}
        x_train, w_train = self._training_set(i, x, np.load(it_dir / "weights.npy"))
        bs = cfg.convergence.bootstrap
        ts_path = it_dir / "transition_states.npy"
        x_ts = np.load(ts_path) if cfg.model.transition_states is not None and ts_path.exists() else None
        train_fn = functools.partial(bootstrap_member, model_cfg=cfg.model, label=f"iteration {i} bootstrap",
                                     extra=x_ts, extra_weight=cfg.model.transition_states.weight if x_ts is not None
                                     else 0.0, init=self._warm_start(i, prev))
        rng = np.random.default_rng(derive_seed(cfg.seed, i, 2))
        workers = bootstrap_workers(bs.workers, bs.repeats, x_train.size)
        log.info(f"iteration {i} bootstrap: training {bs.repeats} networks on {bs.fraction:.0%} subsets "
                 f"of {len(x_train):,} frames ({workers} process{'es' if workers > 1 else ''})")
        # trained on the training set, compared on this iteration's frames as the regscore is
        args = (train_fn, x_train, w_train, bs.repeats, bs.fraction, bs.quantile, rng)
        kw = dict(eval_x=x, method=cfg.convergence.score)
        if workers == 1:
            quantile, scores = bootstrap_threshold(*args, **kw)
        else:
            with process_map(workers, label=f"iteration {i} bootstrap") as pmap:
                quantile, scores = bootstrap_threshold(*args, map_fn=pmap, **kw)
        floored = quantile < bs.min_threshold
        if floored:
            log.warning(f"iteration {i}: the bootstrap quantile {quantile:.3f} is below "
                        f"convergence.bootstrap.min_threshold; the threshold is {bs.min_threshold} "
                        f"(pairwise scores {np.round(scores, 3).tolist()})")
        return {"threshold": max(quantile, bs.min_threshold), "bootstrap_quantile": quantile,
                "threshold_floored": bool(floored), "bootstrap_scores": scores.tolist()}

    def _frame_weights(self, seg_dir: Path, xi: np.ndarray | None, n: int) -> tuple[np.ndarray, str]:
        """A segment's frames' normalised weights, reweighted by ``bias.reweighting`` when the
        segment was biased on ξ (``xi``: its values on the frames; None for an unbiased
        segment; see :func:`cvflow.dataset.stage_log_weights`), and the estimator's name:
        extended, czar, frozen (exact) or unbiased."""
        if xi is None:
            return np.full(n, 1.0 / n), "unbiased"
        logw, info = stage_log_weights(seg_dir, self.beta, self.cfg.bias.reweighting, xi)
        w = normalised_weights(logw) if np.isfinite(logw).any() else np.full(n, 1.0 / n)
        return w, info.get("estimator", self.cfg.bias.reweighting)

    def _states(self, frames: np.ndarray, seg_dir: Path, xi: np.ndarray | None, weighted=None):
        """Populations and free energies of the config's ``states`` on a segment's frames,
        weighted by ``weighted`` ((weights, estimator)) or by :meth:`_frame_weights`. None
        when no states are configured."""
        if not self.cfg.states:
            return None
        w, estimator = weighted if weighted is not None else self._frame_weights(seg_dir, xi, len(frames))
        from .states import TRANSITION_DWELL_PS
        res = self._state_free_energies(self._membership(frames), w)
        res["transition_dwell_ps"] = TRANSITION_DWELL_PS
        res["ess"] = effective_sample_size(w)
        res["weights"] = estimator  # extended, czar, frozen (exact) or unbiased
        return res

    def _membership(self, frames: np.ndarray) -> dict[str, np.ndarray]:
        """Which of the config's states each frame is in (:func:`cvflow.states.state_membership`)."""
        import mdtraj as md
        from .states import state_membership
        return state_membership(md.Trajectory(frames.astype(np.float32), self.frame_topology), self.cfg.states)

    def _state_free_energies(self, member: dict[str, np.ndarray], w: np.ndarray) -> dict:
        """:func:`cvflow.states.state_free_energies` with the run's bootstrap seed and dwell:
        the production's analysis and the frozen stage's drift decision see the same numbers."""
        from .states import state_free_energies
        return state_free_energies(member, w, 1.0 / self.beta, seed=derive_seed(self.cfg.seed, 20_000),
                                   min_dwell=self._min_dwell())

    def _min_dwell(self) -> int:
        """Frames in a row that make a stay in a state (:data:`cvflow.states.TRANSITION_DWELL_PS`)."""
        from .states import TRANSITION_DWELL_PS
        return max(1, int(round(TRANSITION_DWELL_PS / (self.cfg.md.timestep * self.cfg.md.report_interval))))

    def _analyse_production(self, last_train) -> dict:
        """Production frames reweighted (``production/weights.npy``), the free energy along
        the final CV as their histogram (``production/fes_reweighted.csv``, beside the stage's
        CZAR ``fes.csv``: right in the end bins where the CV folds, see
        :func:`cvflow.fes.histogram_free_energy`) and the states' free energies."""
        from .fes import write_histogram_fes
        out = self.run_dir / "production"
        md_dir = production_md_dir(self.run_dir)
        frames = load_frames(md_dir, self.bundle)
        xi = self._cv(self.run_dir / last_train["cv"], frames)
        w, estimator = self._frame_weights(md_dir, xi, len(frames))
        art.write_npy(out / "weights.npy", w)
        write_histogram_fes(out / "fes_reweighted.csv", self._grid_for(last_train), xi, w, 1.0 / self.beta, estimator)
        states = self._states(frames, md_dir, xi, (w, estimator))
        if states is not None:
            art.write_json(out / "states.json", states)
            from .states import FEW_TRANSITIONS, drifts, weightless_half_hint
            ref = states["reference_state"]
            hint = self._sample_longer_hint()
            for k, d in states["delta_f"].items():
                why = []
                if d.get("error_note"):
                    why.append(f"its error is undetermined ({d['error_note']})")
                if d.get("transitions", FEW_TRANSITIONS) < FEW_TRANSITIONS:
                    why.append(f"it rests on {d['transitions']} transition(s) between them in {len(frames):,} frames")
                if drifts(d):
                    h1, h2 = d["halves"]
                    shares = " and ".join(f"{x:.2g}" for x in states.get("halves_weight", []))
                    why.append(f"it drifts: {h1:.2f} kJ/mol on the first half of the frames and {h2:.2f} on the "
                               f"second, {d['halves_z']:.1f} standard errors apart (a state held through one half; "
                               f"the halves' shares of the weight: {shares})")
                if why:
                    stuck = weightless_half_hint(states) if drifts(d) else None
                    log.warning(f"production: ΔF({k} − {ref}): {'; '.join(why)}; {stuck or hint}")
        return {"weights": "production/weights.npy", "weights_estimator": estimator, "states": states,
                "fes_reweighted": "production/fes_reweighted.csv"}

    def _sample_longer_hint(self) -> str:
        """What to change when the production's ΔF rests on too few transitions: its length,
        or, when the frozen stage declined to go on (its rate says even
        ``production_frozen_max_steps`` falls short), that cap or a CV that separates the states."""
        c = self.cfg.convergence
        if not c.production_frozen_steps:
            return "sample longer before trusting it (convergence.production_steps)"
        if not c.production_frozen_min_transitions:
            return ("sample longer before trusting it (convergence.production_frozen_steps, or "
                    "production_frozen_min_transitions to go on until enough)")
        seg = self.run_dir / "production" / "frozen" / "segment.json"
        checks = (art.read_json(seg).get("extension") or {}).get("checks", []) if seg.exists() else []
        # a check is recorded only when transitions fell short; one that kept the length
        # below the cap declined because the rate says even the cap is too short
        last = checks[-1] if checks else {}
        if last and last.get("to") == last.get("steps") and last["steps"] < c.frozen_max_steps():
            return ("the frozen stage did not go on, since at its rate even convergence.production_frozen_max_steps "
                    "falls short: the final CV may not separate these states (check the Ramachandran or state "
                    "plots in the report), or raise that maximum")
        return "sample longer before trusting it (convergence.production_frozen_max_steps)"

    def _production(self, last_train) -> dict:
        """The production's eABF on the final CV, from the last frame of its iteration."""
        prev_md = iteration_dir(self.run_dir, last_train_index(last_train)) / "md"
        return self._production_segment(last_train, adaptive_production_dir(self.run_dir), prev_md,
                                        self.cfg.convergence.production_steps, 0, "production MD")

    def _production_frozen(self, last_train) -> dict:
        """``production_frozen_steps`` more steps from the end of the production's eABF,
        with its bias frozen: the frames whose exact weights give the states' free energies."""
        prev_md = adaptive_production_dir(self.run_dir)
        if not (prev_md / "bias_state.npz").exists():
            raise ConfigError(f"convergence.production_frozen_steps: {prev_md} has no bias_state.npz: an older "
                              "cvflow ran that production and kept no bias to freeze; set "
                              "production_frozen_steps: 0 to resume this run, or run it into a new directory")
        extend = self._frozen_extension if self.cfg.convergence.production_frozen_min_transitions else None
        out = self.run_dir / "production" / "frozen"
        info = self._production_segment(last_train, out, prev_md, self.cfg.convergence.production_frozen_steps, 1,
                                        "production MD, frozen bias", bias_start=prev_md / "bias_state.npz",
                                        freeze=True, extend=extend,
                                        refreeze_every=self.cfg.convergence.production_frozen_refreeze)
        info = {**info, **frozen_levels_summary(out / "frozen_bias.npz", kT(self.cfg.md.temperature))}
        extension = art.read_json(out / "segment.json").get("extension")
        return {**info, "extension": extension} if extension else info

    def _frozen_extension(self, frames: np.ndarray, steps: int, logw: np.ndarray | None = None) -> tuple[int, str | None]:
        """The frozen stage's length in all, after ``steps`` steps and their ``frames``
        (``convergence.production_frozen_min_transitions``; :func:`cvflow.states.frozen_extension`);
        with enough transitions, it still goes on while a ΔF drifts, by the frames' exact
        weights ``logw`` (:func:`cvflow.states.drift_extension`)."""
        from .states import drift_extension, frozen_extension, state_transitions
        c, m = self.cfg.convergence, self.cfg.md
        member = self._membership(frames)
        counts = state_transitions(member, self._min_dwell())
        reference = next(iter(self.cfg.states))
        new, note = frozen_extension(counts, steps, c.production_frozen_min_transitions, c.frozen_max_steps(),
                                     m.report_interval, reference=reference)
        if new == steps and logw is not None and len(logw) == len(frames):
            states = self._state_free_energies(member, np.exp(logw - logw.max()))
            longer, why = drift_extension(states["delta_f"], steps, c.frozen_max_steps(), m.report_interval,
                                          reference=reference)
            if why is not None:
                new, note = longer, why if note is None else f"{note}; but {why}"
        if note is not None:
            (log.info if new > steps else log.warning)(f"production MD, frozen bias: {note}")
        return new, note

    def _production_segment(self, last_train, out: Path, prev_md: Path, steps: int, part: int, label: str,
                            **bias_start) -> dict:
        info = self._segment(out, steps, derive_seed(self.cfg.seed, 10_000, part), self.run_dir / last_train["cv"],
                             self._grid_for(last_train), self.engine, prev_md, label, **bias_start)
        info["fes"] = str((out / "fes.csv").relative_to(self.run_dir))
        info["cv"] = last_train["cv"]
        return info


def frozen_levels_summary(record: Path, kt: float) -> dict:
    """For ``summary.json``: the frozen biases' fill as set, the highest fill as applied and
    the highest level at which λ's weighted basins joined, in kT
    (:meth:`cvflow.bias.native.NativeEABF.freeze`); empty for a record without levels."""
    if not record.exists():
        return {}
    d = np.load(record)
    if "levels" not in d.files or not np.isfinite(d["levels"][:, 1]).any():
        return {}
    levels = d["levels"] / kt
    fill = float(d["fill"]) / kt
    top = lambda col: float(np.nanmax(col)) if np.isfinite(col).any() else None  # noqa: E731
    return {"fill_kT": fill if np.isfinite(fill) else None, "fill_applied_kT": top(levels[:, 2]),
            "basins_join_kT": top(levels[:, 1])}


def adaptive_production_dir(run_dir: Path) -> Path:
    """Production's eABF stage: ``production/md/``, laid out as an iteration's ``md/``
    (``production/`` itself in run directories that earlier versions wrote)."""
    legacy = Path(run_dir) / "production"
    return legacy if (legacy / "segment.json").exists() else legacy / "md"


def production_md_dir(run_dir: Path) -> Path:
    """The production MD whose frames ``production/weights.npy`` weighs and whose free
    energy is the run's final one: ``production/frozen/`` when the run has a frozen stage
    (``convergence.production_frozen_steps``), else the eABF stage
    (:func:`adaptive_production_dir`)."""
    frozen = Path(run_dir) / "production" / "frozen"
    return frozen if (frozen / "segment.json").exists() else adaptive_production_dir(run_dir)


def md_unbiased(it_dir: Path) -> bool:
    """Whether an iteration's finished MD ran without a bias (its ``md/segment.json``)."""
    seg = Path(it_dir) / "md" / "segment.json"
    return seg.exists() and art.read_json(seg).get("engine", "none") == "none"


def last_train_index(tr_info) -> int:
    return int(Path(tr_info["cv"]).parent.name.split("_")[1])


def cv_values(cv_path, frames: np.ndarray, saved: np.ndarray | None = None, n_atoms: int | None = None) -> np.ndarray:
    """A TorchScript CV evaluated on frames ``(n, n_atoms, 3)`` → ``(n, d)``.

    cvflow's learned CVs take a batch; any other CV is called frame by frame. Frames of the
    ``saved`` atoms only (``md.save_atoms``) are put back into positions of all ``n_atoms``
    (the others at the origin: a CV file reads only its own atoms) a chunk at a time.
    """
    import torch
    from .fastcv import cv_format
    m = torch.jit.load(str(cv_path), map_location="cpu").eval()
    fmt = cv_format(m)
    dtype = torch.float64 if fmt else torch.float32
    chunk = 4096 if saved is None else 256
    out = []
    with torch.inference_mode():
        for i in range(0, len(frames), chunk):
            part = expand_frames(frames[i:i + chunk], saved, n_atoms)
            if fmt == "aligned-mlp/1":
                out.append(m(torch.as_tensor(part, dtype=dtype)).double().numpy().reshape(len(part), -1))
            else:
                out.append(np.array([m(torch.as_tensor(f, dtype=dtype)).double().numpy() for f in part])
                           .reshape(len(part), -1))
    return np.concatenate(out) if out else np.zeros((0, 1))
