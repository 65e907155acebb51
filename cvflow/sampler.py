"""One MD segment: OpenMM Langevin dynamics, optionally with an eABF bias, checkpointed.

A segment writes into its own directory:

- ``traj.dcd`` + ``topology.pdb`` (molecules) or ``traj.npy`` (toys): frames at steps 0,
  ``md.report_interval``, ... (``frame_steps.npy``), in nm; the DCD header carries the times;
- ``colvar.csv``: step, time (ps), ξ, λ, at the same steps as the frames (row i is frame i);
- ``fes.csv`` and ``czar.npz``: the CZAR free energy and its additive statistics;
- ``bias_state.npz`` (native engine): the bias at the end, from which a later segment on
  the same CV can go on (:func:`run_segment`'s ``bias_start``); ``frozen_bias.npz`` when the
  bias was frozen (the static B(λ) and walls that weight the frames exactly);
- ``state.xml`` (portable) and ``checkpoint.chk`` (exact restart, platform-bound);
- ``segment.json``: written last; its presence means the segment is finished.

While it runs, ``ckpt/`` holds the latest checkpoint, and ``chunks/`` the frames since
the start, so that a killed segment resumes from its last checkpoint, not its start.
"""
from __future__ import annotations

import contextlib
import functools
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import openmm as mm
from openmm import app
from openmm import unit as u

from . import artifacts as art
from .bias.native import BlowUpError, NativeEABF
from .config import Config, one_line
from .fes import Grid, write_fes
from .progress import log
from .stop import StopRequested, install_signal_handlers, stop_requested  # noqa: F401 (re-exported)
from .system import (SystemBundle, choose_platform, clone_system, confine_toy, cpu_reproducible,
                     platform_properties, saved_atom_indices)
from .units import kT


@dataclass
class SegmentResult:
    out_dir: Path
    steps: int
    frames: int
    wall_seconds: float
    steps_per_second: float
    platform: str
    engine: str
    fes_regions: dict | None = None  # CZARStats.region_summary() of a biased segment
    recoveries: list | None = None  # blow-ups recovered from, with a softer coupling
    threads: int | None = None  # the CPU platform's thread count (None on other platforms)
    cores: list | None = None  # the cores its threads were pinned to (md.pin), else None

    def to_dict(self) -> dict:
        return {"steps": self.steps, "frames": self.frames, "wall_seconds": self.wall_seconds,
                "steps_per_second": self.steps_per_second, "platform": self.platform, "engine": self.engine,
                "fes_regions": self.fes_regions, "recoveries": self.recoveries or [], "md_threads": self.threads,
                "md_cores": self.cores}


BIAS_GROUP = 31
FORCE_FIELD_GROUPS = (1 << BIAS_GROUP) - 1  # every force group but the bias's
ALL_GROUPS = -1  # OpenMM's "every force group"
CHUNKS = "chunks"  # a segment's frames (frames_*, steps_*) and CV rows since its start, while it runs


@functools.lru_cache(maxsize=None)
def _say_once(message: str) -> None:
    log.info(message)


def finished_segment(out_dir: Path) -> SegmentResult | None:
    """The result recorded in ``out_dir/segment.json`` when that segment has finished."""
    marker = Path(out_dir) / "segment.json"
    if not marker.exists():
        return None
    d = art.read_json(marker)
    return SegmentResult(Path(out_dir), d["steps"], d["frames"], d["wall_seconds"], d["steps_per_second"],
                         d["platform"], d["engine"], d.get("fes_regions"), d.get("recoveries"), d.get("md_threads"),
                         d.get("md_cores"))


def derive_seed(root: int, *keys: int) -> int:
    """A seed in [1, 2³¹−1] derived from the root seed and integer keys (OpenMM treats 0 as random)."""
    state = np.random.SeedSequence([int(root), *[int(k) for k in keys]]).generate_state(1)[0]
    return int(state) % (2**31 - 2) + 1


def coupling_kappa(cfg: Config, bundle: SystemBundle, cv_path, grid: Grid, particles) -> float:
    """κ for eABF on the CV in ``cv_path``: ``bias.kappa``, or with ``auto`` kT/h² bounded by
    the stable κ of :mod:`cvflow.cvstats` when the training stage recorded the CV's gradients
    in ``cv_stats.json`` beside it."""
    from .cvstats import stable_kappa
    stats_file = Path(cv_path).parent / "cv_stats.json"
    stable = None
    if cfg.bias.kappa == "auto" and cfg.bias.max_omega_dt is not None and stats_file.exists():
        st = art.read_json(stats_file)
        masses = [bundle.system.getParticleMass(int(i)).value_in_unit(u.dalton) for i in particles]
        # with a bias stride k the coupling's force acts as an impulse every k steps: its
        # stability is that of a time step k times as long
        stable = stable_kappa(st["grad_max"], min(m for m in masses if m > 0), cfg.md.timestep * cfg.bias.stride,
                              cfg.bias.max_omega_dt)
    return cfg.bias.kappa_for(grid.widths, kT(cfg.md.temperature), stable)


def make_bias(cfg: Config, bundle: SystemBundle, cv_path, grid: Grid, seed: int) -> NativeEABF:
    """The native eABF bias on the CV in ``cv_path``."""
    from .cvcheck import checked_cv
    cv = checked_cv(cv_path, bundle)
    b = cfg.bias
    kappa = coupling_kappa(cfg, bundle, cv_path, grid, cv.particles)
    log.debug(f"eABF coupling: kappa {kappa:.4g} kJ/mol/cv^2 on {Path(cv_path).name}"
              + (f"; the bias every {b.stride} steps" if b.stride > 1 else ""))
    return NativeEABF(cv, grid, kappa=kappa, mass=b.ext_mass(kappa), friction=b.friction,
                      temperature=cfg.md.temperature, timestep=cfg.md.timestep,
                      fullsamples=b.fullsamples, seed=seed, report_interval=cfg.md.report_interval,
                      wall_kappa=b.wall_kappa, projection_interval=b.projection_interval, stride=b.stride,
                      freeze_fill=frozen_fill(cfg))


def frozen_fill(cfg: Config) -> float | None:
    """The height (kJ/mol) up to which a frozen bias flattens λ's free energy
    (``convergence.production_frozen_fill_kT``; None: all of it)."""
    fill = cfg.convergence.production_frozen_fill_kT
    return None if fill is None else fill * kT(cfg.md.temperature)


def _note_fill(bias: NativeEABF, label: str, said: bool) -> bool:
    """Say when a freeze raised the frozen bias's fill above
    ``convergence.production_frozen_fill_kT``: a warning the first time in a stage (``said``
    False), the debug log after. Returns whether it has been said."""
    if not bias.fill_raised:
        return said
    cut, joins, fill = bias.frozen_levels[-1] / bias.kT
    (log.debug if said else log.warning)(
        f"{label}: the basins of λ that hold 99.9% of its weight (up to {cut:.1f} kT) join only at "
        f"{joins:.1f} kT, over convergence.production_frozen_fill_kT ({bias.freeze_fill / bias.kT:.3g}); "
        f"the frozen bias fills up to {fill:.1f} kT so that it does not leave that barrier")
    return True


def md_threads(md_cfg) -> int | None:
    """The CPU platform's thread count for ``md``: ``md.threads``; 1 when unset and pinned
    (``md.pin``); else None, OpenMM's default (every core, or ``OPENMM_CPU_THREADS``)."""
    return md_cfg.threads or (1 if md_cfg.pin else None)


def pinned_cores(md_cfg, slot: int = 0) -> list[int] | None:
    """The cores an MD segment's threads are pinned to with ``md.pin`` (else None): as many
    as its threads, from ``md.pin_offset + slot × threads``, among the cores this process may
    use, wrapping around (``slot``: a walker's worker, so that walkers side by side get
    cores of their own)."""
    if not md_cfg.pin or not hasattr(os, "sched_setaffinity"):
        return None
    allowed = sorted(os.sched_getaffinity(0))
    n = min(md_threads(md_cfg), len(allowed))
    start = md_cfg.pin_offset + slot * n
    return sorted({allowed[(start + i) % len(allowed)] for i in range(n)})


@contextlib.contextmanager
def _pinned(cores: list[int] | None):
    """Run the calling thread, and the threads it starts (OpenMM's CPU platform starts its
    own when the Context is made), on ``cores``; the thread's own cores again afterwards."""
    if cores is None:
        yield
        return
    old = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cores)
    try:
        yield
    finally:
        os.sched_setaffinity(0, old)


def run_segment(cfg: Config, bundle: SystemBundle, out_dir: Path, steps: int, seed: int,
                cv_path: Path | None = None, grid: Grid | None = None, engine: str = "native",
                start_positions: np.ndarray | None = None, progress=None, label: str = "md",
                bias_start: Path | None = None, freeze: bool = False, pin_slot: int = 0,
                extend=None, refreeze_every: int = 0) -> SegmentResult:
    """Run (or resume) one segment of ``steps`` MD steps into ``out_dir`` (see
    :func:`_run_segment`); with ``md.pin`` on the CPU platform, on the cores of
    :func:`pinned_cores` (``pin_slot``: a walker's worker)."""
    cores = None
    if cfg.md.pin and choose_platform(cfg.md.platform, bundle.n_atoms, bundle.system).getName() == "CPU":
        cores = pinned_cores(cfg.md, pin_slot)
    with _pinned(cores):
        return _run_segment(cfg, bundle, out_dir, steps, seed, cv_path, grid, engine, start_positions, progress,
                            label, bias_start, freeze, cores, extend, refreeze_every)


def _run_segment(cfg: Config, bundle: SystemBundle, out_dir: Path, steps: int, seed: int,
                 cv_path: Path | None, grid: Grid | None, engine: str, start_positions: np.ndarray | None,
                 progress, label: str, bias_start: Path | None, freeze: bool,
                 cores: list[int] | None, extend=None, refreeze_every: int = 0) -> SegmentResult:
    """Run (or resume) one segment of ``steps`` MD steps into ``out_dir``.

    Parameters
    ----------
    engine : {"native", "plumed", "none"}
        ``none`` runs unbiased (``cv_path`` may still be given to record ξ).
    start_positions : (n_atoms, 3) array, nm, optional
        Defaults to the system's positions.
    progress : callable(step, total), optional
    bias_start : path, optional
        A segment's ``bias_state.npz`` (native engine, the same CV and grid): λ and the ABF
        statistics go on from it.
    freeze : bool
        Freeze the bias at the start (:meth:`cvflow.bias.native.NativeEABF.freeze`): the
        segment runs under a static bias, and its frames get exact weights.
    refreeze_every : int
        With ``freeze``: every this many steps (a multiple of ``md.report_interval``), the
        bias is frozen again from the statistics gathered so far, the frozen stage's
        included (:meth:`cvflow.bias.native.NativeEABF.freeze`); 0: never.
    extend : callable(frames, steps, log_weights) -> (steps, note), optional
        Called when the segment reaches its length, with its frames so far (of the saved
        atoms) and, under a frozen bias, their exact log weights (else None): the length it
        should have in all (more to go on) and a line that says why (or None). Its
        decisions are kept in ``extension.json``, so a resumed segment runs to the extended
        length, and in ``segment.json`` (``extension``).
    """
    out_dir = Path(out_dir)
    done_marker = out_dir / "segment.json"
    finished = finished_segment(out_dir)
    if finished is not None:
        return finished
    out_dir.mkdir(parents=True, exist_ok=True)
    md_cfg = cfg.md
    bias = None
    system = clone_system(bundle.system)
    if engine == "native":
        if cv_path is None or grid is None:
            raise ValueError("the native engine needs a CV file and a grid")
        bias = make_bias(cfg, bundle, cv_path, grid, derive_seed(seed, 1))
    elif engine == "plumed":
        from .bias.plumed import make_plumed_bias
        bias = make_plumed_bias(cfg, bundle, cv_path, grid, derive_seed(seed, 1), out_dir)
    if bias is not None:
        # the bias in a force group of its own, so that the force field's energy can be read
        # (to catch non-finite energies) without calling the bias, which would advance λ
        force = bias.make_force()
        force.setForceGroup(BIAS_GROUP)
        system.addForce(force)
    integrator = mm.LangevinMiddleIntegrator(md_cfg.temperature * u.kelvin, md_cfg.friction / u.picosecond,
                                             md_cfg.timestep * u.picosecond)
    integrator.setRandomNumberSeed(derive_seed(seed, 0))
    platform = choose_platform(md_cfg.platform, bundle.n_atoms, bundle.system)
    sim = app.Simulation(bundle.topology, system, integrator, platform,
                         platform_properties(platform, md_threads(md_cfg)))
    ckpt_dir = out_dir / "ckpt"
    chunk_dir = out_dir / CHUNKS
    chunk_dir.mkdir(exist_ok=True)
    progress_file = ckpt_dir / "progress.json"
    recoveries_file = out_dir / "recoveries.json"
    recoveries = art.read_json(recoveries_file) if recoveries_file.exists() else []
    confine_toy(sim.context, bundle, md_cfg.timestep)
    saved = saved_atom_indices(bundle, md_cfg.save_atoms)
    keep = slice(None) if saved is None else saved
    extension_file = out_dir / "extension.json"
    extension = art.read_json(extension_file) if extension_file.exists() else {"from_steps": steps, "checks": []}
    steps = max(steps, int(extension.get("steps", steps)))
    step = 0
    fill_said = False  # whether a freeze's raised fill has been said (a warning once a stage)
    if progress_file.exists():
        step = _restore_checkpoint(sim, bias, ckpt_dir, chunk_dir)
    else:
        if bias_start is not None:
            bias.continue_from(np.load(bias_start))
        if freeze:
            bias.freeze()
            fill_said = _note_fill(bias, label, fill_said)
        start = bundle.positions if start_positions is None else start_positions
        sim.context.setPositions(start * u.nanometer)
        if bundle.box is not None:
            sim.context.setPeriodicBoxVectors(*(bundle.box * u.nanometer))
        sim.context.setVelocitiesToTemperature(md_cfg.temperature * u.kelvin, derive_seed(seed, 2))
        sim.context.setStepCount(0)
        # a checkpoint at step 0, with the frame at step 0: a blow-up before the first
        # interval can recover from it
        pos0 = sim.context.getState(getPositions=True).getPositions(asNumpy=True).value_in_unit(u.nanometer)
        _write_checkpoint(sim, bias, ckpt_dir, chunk_dir, 0, [np.asarray(pos0)[keep]], [0])
    if platform.getName() == "CPU" and not cpu_reproducible(platform, md_threads(md_cfg)):
        _say_once("OpenMM's CPU platform on more than one thread does not give the same trajectory twice; "
                  "md.threads: 1 makes runs reproducible")
    log.debug(f"{label}: {steps:,} steps on {platform.getName()} from step {step:,}, seed {seed}, "
              f"engine {engine}, into {out_dir}")
    report = md_cfg.report_interval
    frames: list[np.ndarray] = []
    frame_steps: list[int] = []
    pos = np.zeros((bundle.n_atoms, 3))
    t0 = time.perf_counter()
    start_step = step
    last_ckpt = step
    runaway = runaway_distance(bundle)
    while step < steps:
        if refreeze_every and bias.is_frozen and step % refreeze_every == 0 and step > bias.last_freeze_step:
            bias.freeze(step)  # (a resume from the checkpoint at this step freezes it again, alike)
            log.debug(f"{label}: the bias frozen again at step {step:,}, from its statistics so far")
            fill_said = _note_fill(bias, label, fill_said)
        n = min(report - step % report, steps - step)
        reason = None
        try:
            advance(sim.integrator, step, n, 1 if bias is None else bias.stride)
        except Exception as e:  # an exception in a force (OpenMM, or a bias): a blow-up
            reason = f"{type(e).__name__} during steps {step + 1}-{step + n}: {one_line(e, 200)}"
        step += n
        if bias is not None and bias.error:
            reason = bias.error  # names the exact step
        if reason is None:
            # the energy of the force field only: evaluating the bias here, outside the integrator,
            # would advance λ and break bit-for-bit resume
            state = sim.context.getState(getPositions=True, getEnergy=True, groups=FORCE_FIELD_GROUPS)
            state._getVectorAsNumpy(mm.State.Positions, pos)
            spread = np.abs(pos - pos.mean(0)).max()  # NaN when a position is not finite
            if not np.isfinite(spread):
                reason = f"non-finite positions at step {step}"
            elif spread > runaway:
                reason = f"runaway positions at step {step} (an atom {spread:.3g} nm from the centre)"
            elif not math.isfinite(state.getPotentialEnergy().value_in_unit(u.kilojoule_per_mole)):
                reason = f"non-finite potential energy at step {step}"
        if reason is not None:
            _record_blowup(out_dir, chunk_dir, step, last_ckpt, reason, frames, frame_steps)
            if bias is not None and hasattr(bias, "soften") and len(recoveries) < md_cfg.recovery.attempts:
                old_kappa = bias.kappa
                step = last_ckpt = _restore_checkpoint(sim, bias, ckpt_dir, chunk_dir)
                bias.soften(md_cfg.recovery.kappa_factor)
                recoveries.append({"step": int(step), "reason": reason, "resumed_from_step": int(last_ckpt),
                                   "kappa_before": old_kappa, "kappa_after": bias.kappa})
                art.write_json(recoveries_file, recoveries)
                # the softer coupling is part of the state from here on: checkpoint it at once
                _write_checkpoint(sim, bias, ckpt_dir, chunk_dir, step, [], [])
                frames, frame_steps = [], []
                log.warning(f"{label}: {reason}; recovered: restarted from the checkpoint at step {last_ckpt} "
                            f"with a softer coupling, kappa {old_kappa:.4g} -> {bias.kappa:.4g} kJ/mol/cv^2 "
                            f"(recovery {len(recoveries)} of at most {md_cfg.recovery.attempts})")
                continue
            tried = (f" after {len(recoveries)} recoveries with a softer coupling" if recoveries else "")
            kept = f"the last good state is the checkpoint at step {last_ckpt} in {ckpt_dir}"
            raise BlowUpError(f"{label}: {reason}{tried}; {kept}; frames up to step "
                              f"{frame_steps[-1] if frame_steps else last_ckpt} saved in {chunk_dir}")
        if step == steps and extend is not None:
            so_far = _concat(chunk_dir, "frames")
            if frames:
                so_far = np.concatenate([so_far.reshape(-1, *frames[0].shape), np.array(frames)])
            steps_so_far = np.concatenate([_concat(chunk_dir, "steps"), np.asarray(frame_steps, float)])
            new, note = extend(so_far, steps, _frozen_log_weights(bias, chunk_dir, steps_so_far))
            if note is not None:
                extension["checks"] = [c for c in extension["checks"] if c["steps"] != steps]
                extension["checks"].append({"steps": int(steps), "to": int(max(new, steps)), "note": note})
            if new > steps:
                extension["steps"] = steps = int(new)
            if note is not None:
                art.write_json(extension_file, extension)
        # frames at steps 0, report, ..., steps - report: the steps at which the bias records
        # ξ and λ in colvar.csv (it sees the positions of step s when it computes the force
        # that moves them on), so that trajectory frame i and colvar row i are one configuration
        if step % report == 0 and step < steps:
            frames.append(pos[keep].copy())
            frame_steps.append(step)
        stop = stop_requested()
        if step - last_ckpt >= md_cfg.checkpoint_interval or step == steps or stop:
            _write_checkpoint(sim, bias, ckpt_dir, chunk_dir, step, frames, frame_steps)
            frames, frame_steps = [], []
            last_ckpt = step
            if stop:
                raise StopRequested(f"{label}: stopped at step {step}; checkpoint written to {ckpt_dir}")
        if progress is not None:
            progress(step, steps)
    wall = time.perf_counter() - t0
    n_frames, regions = _finalize(cfg, bundle, sim, bias, out_dir, chunk_dir, saved)
    threads = int(platform.getPropertyValue(sim.context, "Threads")) if platform.getName() == "CPU" else None
    result = SegmentResult(out_dir, steps, n_frames, wall, (steps - start_step) / max(wall, 1e-9),
                           platform.getName(), engine, regions, recoveries, threads, cores)
    info = result.to_dict()
    info["saved_atoms"] = {"selection": md_cfg.save_atoms or "default",
                           "count": int(bundle.n_atoms if saved is None else len(saved)),
                           "of": int(bundle.n_atoms), "file": None if saved is None else "saved_atoms.npy"}
    if extension["checks"]:
        info["extension"] = extension
    art.write_json(done_marker, info)
    extension_file.unlink(missing_ok=True)  # its record is in segment.json now
    # finished: the restart files are in the segment itself (checkpoint.chk, state.xml)
    shutil.rmtree(ckpt_dir, ignore_errors=True)
    shutil.rmtree(chunk_dir, ignore_errors=True)
    return result


def advance(integrator, step: int, n: int, stride: int = 1) -> None:
    """``n`` MD steps from step ``step``. With a bias ``stride`` k > 1 the bias's force group
    is integrated only at the steps that are multiples of k (where the bias applies k times
    its force, :class:`cvflow.bias.native.NativeEABF`), and left out of the steps between, so
    that OpenMM does not call it there: one Python callback per k steps."""
    if stride == 1:
        integrator.step(n)
        return
    set_groups, md_step = integrator.setIntegrationForceGroups, integrator.step  # bound once: a hot loop
    end = step + n
    head = min(end, -(-step // stride) * stride) - step  # up to the next multiple of the stride
    if head > 0:
        set_groups(FORCE_FIELD_GROUPS)
        md_step(head)
        step += head
    cycles, tail = divmod(end - step, stride)
    for _ in range(cycles):  # a bias step, then stride − 1 steps of the force field alone
        set_groups(ALL_GROUPS)
        md_step(1)
        set_groups(FORCE_FIELD_GROUPS)
        md_step(stride - 1)
    if tail:
        set_groups(ALL_GROUPS)
        md_step(1)
        if tail > 1:
            set_groups(FORCE_FIELD_GROUPS)
            md_step(tail - 1)
    set_groups(ALL_GROUPS)


def runaway_distance(bundle: SystemBundle) -> float:
    """Distance from the centre (nm) past which an atom counts as runaway: far beyond any box
    or molecule (a blow-up sends atoms to 1e38 nm within a few steps)."""
    size = float(np.ptp(bundle.positions, axis=0).max()) if bundle.positions.size else 1.0
    if bundle.box is not None:
        size = max(size, float(np.abs(bundle.box).max()))
    return max(100.0, 50.0 * size)


def _restore_checkpoint(sim, bias, ckpt_dir: Path, chunk_dir: Path) -> int:
    """Load the checkpoint that ``progress.json`` names (MD and bias state); drop the chunks
    written after it. Returns its step."""
    prog = art.read_json(ckpt_dir / "progress.json")
    step = int(prog["step"])
    try:
        sim.context.loadCheckpoint((ckpt_dir / prog["chk"]).read_bytes())
    except Exception as e:  # a checkpoint binds to its platform (and OpenMM build): use the portable state
        xml = ckpt_dir / prog.get("state", "")
        if not prog.get("state") or not xml.exists():
            raise
        sim.context.setState(mm.XmlSerializer.deserialize(xml.read_text()))
        sim.context.setStepCount(step)
        log.warning(f"the checkpoint in {ckpt_dir} was written on another platform or build "
                    f"({one_line(e, 120)}); resumed from its portable "
                    f"state at step {step}: the trajectory goes on correctly but not bit for bit")
    if bias is not None:
        bias.load_state_arrays(np.load(ckpt_dir / prog["bias"]))
    for f in chunk_dir.glob("*.npy"):  # chunks written after the last checkpoint
        if not f.name.startswith("good") and int(f.stem.split("_")[1]) > step:
            f.unlink()
    return step


def _record_blowup(out_dir: Path, chunk_dir: Path, step: int, last_ckpt: int, reason: str,
                   frames, frame_steps) -> None:
    """Keep the good frames gathered since the last checkpoint and write ``blowup.json``."""
    if frames:
        art.write_npy(chunk_dir / f"goodframes_{frame_steps[-1]:012d}.npy", np.array(frames))
        art.write_npy(chunk_dir / f"goodsteps_{frame_steps[-1]:012d}.npy", np.array(frame_steps))
    art.write_json(out_dir / "blowup.json", {"step": step, "reason": reason, "last_checkpoint_step": last_ckpt,
                                             "last_good_frame_step": frame_steps[-1] if frame_steps else None})


def _write_checkpoint(sim, bias, ckpt_dir: Path, chunk_dir: Path, step: int, frames, frame_steps) -> None:
    """Frames and CV rows first, then the MD and bias state, then ``progress.json``."""
    ckpt_dir.mkdir(exist_ok=True)
    if frames:
        art.write_npy(chunk_dir / f"frames_{step:012d}.npy", np.array(frames))
        art.write_npy(chunk_dir / f"steps_{step:012d}.npy", np.array(frame_steps))
    if bias is not None:
        rows = bias.take_colvar()
        chunk = chunk_dir / f"colvar_{step:012d}.npy"
        if chunk.exists():  # the checkpoint a recovery restarted from, rewritten: keep its rows
            old = np.load(chunk)
            rows = old if not len(rows) else rows if not len(old) else np.concatenate([old, rows])
        art.write_npy(chunk, rows)
        art.write_npz(ckpt_dir / f"bias_{step:012d}.npz", **bias.state_arrays())
    art.write_bytes(ckpt_dir / f"md_{step:012d}.chk", sim.context.createCheckpoint())
    # portable too: a job resumed on another node may have another platform (CUDA -> CPU)
    state = sim.context.getState(getPositions=True, getVelocities=True, getParameters=True)
    art.write_text(ckpt_dir / f"state_{step:012d}.xml", mm.XmlSerializer.serialize(state))
    art.write_json(ckpt_dir / "progress.json",
                   {"step": step, "chk": f"md_{step:012d}.chk", "bias": f"bias_{step:012d}.npz",
                    "state": f"state_{step:012d}.xml"})
    for f in ckpt_dir.iterdir():
        if f.name != "progress.json" and f"{step:012d}" not in f.name:
            f.unlink()


def frames_so_far(seg_dir: Path) -> int | None:
    """Frames that an unfinished segment, and the walkers' segments below it, have saved in
    their chunks (None before the first): what ``cvflow status`` shows for an MD stage under
    way or stopped. A chunk that cannot be read (being written) is left out."""
    counts = []
    for f in Path(seg_dir).rglob(f"{CHUNKS}/steps_*.npy"):
        with contextlib.suppress(OSError, ValueError):
            counts.append(len(np.load(f, mmap_mode="r")))
    return sum(counts) if counts else None


def _frozen_log_weights(bias, chunk_dir: Path, frame_steps: np.ndarray) -> np.ndarray | None:
    """The exact log weights (:func:`cvflow.dataset.log_weights_frozen`) of a frozen
    segment's frames so far, at ``frame_steps``, from its CV rows (the checkpoints' and those
    not yet written) and its frozen biases; None for a bias that is not frozen, or rows that
    do not match the frames."""
    if bias is None or not getattr(bias, "is_frozen", False):
        return None
    from .dataset import log_weights_frozen
    rows = np.concatenate([_concat(chunk_dir, "colvar", 1 + 2 * bias.dim), bias.peek_colvar()])
    rows = rows[np.isin(rows[:, 0].astype(np.int64), frame_steps.astype(np.int64))]
    if len(rows) != len(frame_steps) or not np.array_equal(rows[:, 0], frame_steps):
        return None
    return log_weights_frozen(rows[:, 1 + bias.dim:], bias.frozen_record(), 1.0 / bias.kT, rows[:, 0])[0]


def _concat(chunk_dir: Path, prefix: str, width: int | None = None) -> np.ndarray:
    files = sorted(chunk_dir.glob(f"{prefix}_*.npy"))
    parts = [np.load(f) for f in files]
    parts = [p for p in parts if p.size]
    if not parts:
        return np.zeros((0,) if width is None else (0, width))
    return np.concatenate(parts)


def _finalize(cfg: Config, bundle: SystemBundle, sim, bias, out_dir: Path, chunk_dir: Path,
              saved: np.ndarray | None = None) -> tuple[int, dict | None]:
    frames = _concat(chunk_dir, "frames")
    frame_steps = _concat(chunk_dir, "steps")
    art.write_npy(out_dir / "frame_steps.npy", frame_steps.astype(np.int64))
    if saved is not None:
        art.write_npy(out_dir / "saved_atoms.npy", saved.astype(np.int64))
    if bundle.is_toy:
        art.write_npy(out_dir / "traj.npy", frames.astype(np.float64))
    else:
        write_trajectory(out_dir, bundle, frames, frame_steps, cfg.md.timestep, atoms=saved)
    dt = cfg.md.timestep
    regions = None
    if bias is not None:
        if hasattr(bias, "finish"):  # PLUMED: flushes its last output (COLVAR rows, CZAR)
            bias.finish(sim.context)
            art.write_npy(chunk_dir / "colvar_final.npy", bias.take_colvar())
        rows = _concat(chunk_dir, "colvar", 1 + 2 * bias.dim)
        # one row per saved frame: row i of colvar.csv is frame i (PLUMED's final evaluation
        # at the last step, which has no frame, prints one more)
        rows = rows[np.isin(rows[:, 0].astype(np.int64), frame_steps.astype(np.int64))] if len(rows) else rows
        d = bias.dim
        header = ["step", "time"] + [f"cv{i + 1}" for i in range(d)] + [f"lambda{i + 1}" for i in range(d)]
        table = np.column_stack([rows[:, 0], rows[:, 0] * dt, rows[:, 1:]]) if len(rows) else np.zeros((0, len(header)))
        art.write_csv(out_dir / "colvar.csv", header, table,
                      comments=["time in ps; cv and lambda in CV units"])
        stats = bias.czar()
        save_stats(out_dir / "czar.npz", stats)
        if hasattr(bias, "lambda_stats"):
            save_stats(out_dir / "lambda.npz", bias.lambda_stats())
        regions = write_fes(out_dir / "fes.csv", stats, engine=bias.name)
        if isinstance(bias, NativeEABF):
            art.write_npz(out_dir / "bias_state.npz", **bias.state_arrays())
            if bias.is_frozen:
                art.write_npz(out_dir / "frozen_bias.npz", **bias.frozen_record())
    state = sim.context.getState(getPositions=True, getVelocities=True)
    art.write_text(out_dir / "state.xml", mm.XmlSerializer.serialize(state))
    art.write_bytes(out_dir / "checkpoint.chk", sim.context.createCheckpoint())
    for f in chunk_dir.glob("*.npy"):
        f.unlink()
    return len(frames), regions


def save_stats(path: Path, stats) -> None:
    with art.atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            stats.save(fh)


def write_trajectory(out_dir: Path, bundle: SystemBundle, frames: np.ndarray,
                     frame_steps: np.ndarray | None = None, timestep_ps: float | None = None,
                     atoms: np.ndarray | None = None, name: str = "traj.dcd") -> None:
    """``name`` (``traj.dcd``) with ``topology.pdb`` beside it (MDTraj, MDAnalysis and VMD read both).

    With the frames' steps (evenly spaced) and the timestep, the DCD header carries the
    first step, the interval and the timestep (the CHARMM convention that OpenMM's
    ``DCDFile`` writes), so that readers that take times from it (MDAnalysis, VMD) get
    them in ps."""
    import mdtraj as md
    top = bundle.mdtraj_topology()
    positions = bundle.positions
    if atoms is not None:  # md.save_atoms: the frames hold these atoms, in this order
        top, positions = top.subset(atoms), positions[atoms]
    ref = md.Trajectory(positions[None].astype(np.float32), top)
    with art.atomic_path(out_dir / "topology.pdb") as tmp:
        ref.save_pdb(str(tmp))
    traj = md.Trajectory(frames.astype(np.float32).reshape(-1, top.n_atoms, 3), top)
    if bundle.box is not None and len(frames):
        traj.unitcell_vectors = np.repeat(bundle.box[None].astype(np.float32), len(frames), axis=0)
    with art.atomic_path(out_dir / name) as tmp:
        tmp_dcd = tmp.with_suffix(".dcd")
        with ascii_path(tmp_dcd, write=True) as dcd:
            traj.save_dcd(str(dcd))
            if frame_steps is not None and timestep_ps is not None:
                _set_dcd_times(dcd, np.asarray(frame_steps), timestep_ps)
        tmp_dcd.replace(tmp)


AKMA_PS = 0.04888821  # the CHARMM (AKMA) unit of time in ps, in which a DCD stores its timestep


def _set_dcd_times(path: Path, steps: np.ndarray, timestep_ps: float) -> None:
    """Write ISTART, NSAVC, NSTEP and DELTA into a DCD header (left as written when the
    steps are not evenly spaced, as for walkers one after another)."""
    import struct
    if len(steps) == 0:
        return
    interval = int(steps[1] - steps[0]) if len(steps) > 1 else 1
    if interval <= 0 or not np.array_equal(steps, steps[0] + interval * np.arange(len(steps))):
        return
    with open(path, "r+b") as fh:
        head = fh.read(12)
        if struct.unpack("<i4s", head[:8]) != (84, b"CORD"):
            return
        fh.seek(12)  # ICNTRL[1..3]: first step, steps between frames, last step
        fh.write(struct.pack("<3i", int(steps[0]), interval, int(steps[-1])))
        fh.seek(44)  # ICNTRL[9]: the timestep, float32, AKMA units
        fh.write(struct.pack("<f", timestep_ps / AKMA_PS))


def saved_atoms_of(seg_dir: Path) -> np.ndarray | None:
    """The atoms a finished segment's frames hold (``md.save_atoms``): indices into the
    system, or None for every atom."""
    path = Path(seg_dir) / "saved_atoms.npy"
    return np.load(path) if path.exists() else None


def last_positions(seg_dir: Path, bundle: SystemBundle) -> np.ndarray:
    """Every atom's positions at the end of a finished segment (``state.xml``), nm."""
    state = mm.XmlSerializer.deserialize((Path(seg_dir) / "state.xml").read_text())
    return np.asarray(state.getPositions(asNumpy=True).value_in_unit(u.nanometer), np.float64)


def load_frames(seg_dir: Path, bundle: SystemBundle) -> np.ndarray:
    """Frames of a finished segment, ``(n, n_saved, 3)`` in nm (float64): every atom, or the
    atoms of :func:`saved_atoms_of` (``md.save_atoms``) in that order."""
    seg_dir = Path(seg_dir)
    if bundle.is_toy:
        return np.load(seg_dir / "traj.npy")
    return read_dcd(seg_dir / "traj.dcd", seg_dir / "topology.pdb").xyz.astype(np.float64)


def read_dcd(dcd: Path, topology: Path):
    """An MDTraj trajectory from a DCD and its topology file, quietly (MDTraj's DCD plugin
    prints two lines per file from C) and from any path (see :func:`ascii_path`)."""
    import mdtraj as md
    with _quiet_c_stdout(), ascii_path(Path(dcd)) as path:
        return md.load_dcd(str(path), top=str(topology))


@contextlib.contextmanager
def ascii_path(path: Path, write: bool = False):
    """``path``, or, when it is not ASCII (MDTraj's DCD plugin opens files by ASCII names
    only), a link to it (reading) or a file (``write``: moved to ``path`` afterwards) in
    an ASCII temporary directory."""
    import tempfile
    path = Path(path)
    if str(path.resolve()).isascii():
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="cvflow-") as tmp:
        alias = Path(tmp) / ("file" + path.suffix)
        if not write:
            alias.symlink_to(path.resolve())
        yield alias
        if write and alias.exists():
            shutil.move(str(alias), str(path))


@contextlib.contextmanager
def _quiet_c_stdout():
    """Send file descriptor 1 to /dev/null for the duration (C-level prints), whatever
    Python's ``sys.stdout`` is at the moment (a test runner may have replaced it)."""
    fd = 1
    try:
        sys.stdout.flush()
        saved = os.dup(fd)
    except (AttributeError, OSError, ValueError):  # no file descriptor 1 at all
        yield
        return
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), fd)
            yield
    finally:
        try:  # C stdio buffers output to a pipe: flush it while fd 1 still points at /dev/null
            import ctypes
            ctypes.CDLL(None).fflush(None)
        except (OSError, AttributeError):
            pass
        os.dup2(saved, fd)
        os.close(saved)
