"""Several eABF walkers per MD stage, run on Dask, merged into one segment.

``execution.walkers: N`` runs N independent segments of ``steps`` each, with derived seeds
and starting frames spread over the CV range, into ``OUT/walkers/wNN/``. Each walker is an
ordinary segment (checkpointed, resumable). When they are done, their CZAR statistics are
added (counts and Σλ per bin add exactly, so the merged free energy is that of one run of
the total length), their frames are concatenated in walker order, and ``OUT`` receives the
same files a single segment writes (``traj``, ``colvar.csv`` with a ``walker`` column,
``czar.npz``, ``fes.csv``, ``segment.json``): the rest of cvflow reads one segment.

Backends (``execution.backend``): ``local`` starts a ``dask.distributed.LocalCluster`` of
worker processes; ``dask`` connects to ``execution.scheduler``; ``slurm``/``pbs`` start a
dask-jobqueue cluster from ``execution.cluster`` (one walker per job, one GPU each when
``gpus`` > 0). A walker that fails (an exception, or its worker process dies) is retried
once, resuming from its own last checkpoint; if it fails again it is reported, and the
stage goes on when at least ``execution.min_walkers`` walkers finished.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import artifacts as art
from .config import Config, ConfigError, dump_config
from .fes import CZARStats, Grid, write_fes
from .progress import log
from .sampler import (SegmentResult, save_stats, derive_seed, finished_segment, load_frames, run_segment,
                      write_trajectory)
from .system import usable_cores


class WalkersFailed(RuntimeError):
    """Fewer walkers finished than ``execution.min_walkers``."""


@dataclass
class WalkerOutcome:
    index: int
    status: str          # "done" or "failed"
    attempts: int
    error: str | None = None
    result: dict | None = None


def walker_task(cfg_data: dict, source: str, out_dir: str, steps: int, seed: int, cv_path: str | None,
                grid: list | None, engine: str, start: np.ndarray | None, label: str) -> dict:
    """One walker, run in a Dask worker: rebuild the system from the config and run (or
    resume) the segment. Module-level so that workers can unpickle it."""
    from .config import config_from_dict
    from .system import build_system
    cfg = config_from_dict(cfg_data, source)
    bundle = build_system(cfg.system, cfg.features.atoms)
    res = run_segment(cfg, bundle, Path(out_dir), steps, seed, cv_path=None if cv_path is None else Path(cv_path),
                      grid=None if grid is None else Grid.from_list(grid), engine=engine,
                      start_positions=start, label=label, pin_slot=_worker_slot())
    return res.to_dict()


def _worker_slot() -> int:
    """This Dask worker's index among the local backend's workers (0, 1, ...: their
    names), for ``md.pin``; 0 elsewhere (a batch job pins within its own cores)."""
    try:
        import distributed
        name = distributed.get_worker().name
    except (ImportError, ValueError):
        return 0
    return name if isinstance(name, int) else 0


def spread_starts(frames: np.ndarray, xi: np.ndarray | None, n: int) -> list[np.ndarray]:
    """``n`` starting frames spread over the CV range: the frames at the (k + ½)/n quantiles
    of the first CV component (frames evenly spaced in time when there is no CV)."""
    if len(frames) == 0:
        return [None] * n
    if xi is None:
        return [frames[int((k + 0.5) / n * len(frames))] for k in range(n)]
    order = np.argsort(np.asarray(xi).reshape(len(frames), -1)[:, 0], kind="stable")
    return [frames[order[min(len(order) - 1, int((k + 0.5) / n * len(order)))]] for k in range(n)]


class Executor:
    """A Dask client for the configured backend, opened on first use and closed at exit."""

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self._client = None
        self._cluster = None

    def client(self):
        if self._client is None:
            self._client, self._cluster = open_client(self.cfg)
        return self._client

    def close(self):
        if self._client is not None:
            self._client.close()
        if self._cluster is not None:
            self._cluster.close()
        self._client = self._cluster = None


def _dask():
    try:
        import dask  # noqa: F401
        import distributed
    except ImportError:
        raise ConfigError("execution.walkers > 1 needs Dask: pip install 'dask[distributed]'") from None
    return distributed


def open_client(cfg: Config):
    """(client, cluster or None) for ``execution.backend``."""
    distributed = _dask()
    import dask
    ex = cfg.execution
    # a dead worker is reported to us at once (KilledWorker) rather than re-run silently:
    # cvflow does the one retry itself, from the walker's checkpoint
    dask.config.set({"distributed.scheduler.allowed-failures": 0})
    if ex.backend == "dask":
        return distributed.Client(ex.scheduler, timeout="60s"), None
    if ex.backend == "local":
        n = local_workers(cfg)
        cluster = distributed.LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                                           dashboard_address=None, silence_logs=40)
        return distributed.Client(cluster), cluster
    cluster = jobqueue_cluster(cfg)
    cluster.scale(jobs=ex.walkers)
    return distributed.Client(cluster), cluster


def local_workers(cfg: Config) -> int:
    """Worker processes of the local backend: ``execution.workers``, else one per walker up
    to the cores."""
    return cfg.execution.workers or min(cfg.execution.walkers, usable_cores())


def walker_md_threads(cfg: Config) -> int | None:
    """``md.threads`` for each walker: the user's when set; else, when the walkers share
    this machine (``execution.backend: local``), its cores split among the worker processes,
    and on a batch cluster the cores of a job (one walker per job). OpenMM's CPU platform
    would otherwise give every walker a thread per core of the whole machine, and walkers
    side by side would oversubscribe it (README, "Threads and pinning on OpenMM's CPU platform").
    None (OpenMM's default) for an external scheduler, whose workers' cores cvflow does not
    know, and when ``OPENMM_CPU_THREADS`` sets it. Only the CPU platform reads it."""
    if cfg.md.threads or os.environ.get("OPENMM_CPU_THREADS"):
        return cfg.md.threads
    ex = cfg.execution
    if ex.backend == "local":
        return max(1, usable_cores() // local_workers(cfg))
    if ex.backend in ("slurm", "pbs"):
        return ex.cluster.cores
    return None


def jobqueue_cluster(cfg: Config):
    """A dask-jobqueue SLURMCluster or PBSCluster from ``execution.cluster`` (one worker
    process per job, running one walker at a time; each job asks for ``gpus`` GPUs)."""
    try:
        import dask_jobqueue
    except ImportError:
        raise ConfigError(f"execution.backend: {cfg.execution.backend} needs dask-jobqueue: "
                          "pip install dask-jobqueue") from None
    c = cfg.execution.cluster
    extra = list(c.job_extra_directives)
    # one walker per job at a time: every job advertises one "walker" slot (and its GPUs)
    worker_args = ["--resources", f"walker=1,GPU={c.gpus}" if c.gpus else "walker=1"]
    if c.gpus:
        extra.append(f"--gres=gpu:{c.gpus}" if cfg.execution.backend == "slurm" else f"-l ngpus={c.gpus}")
    kw = dict(cores=c.cores, memory=c.memory, processes=1, walltime=c.walltime, job_extra_directives=extra,
              worker_extra_args=worker_args, job_script_prologue=list(c.prologue), log_directory=c.log_directory)
    if c.queue:
        kw["queue"] = c.queue
    if c.account:
        kw["account"] = c.account
    cls = dask_jobqueue.SLURMCluster if cfg.execution.backend == "slurm" else dask_jobqueue.PBSCluster
    return cls(**kw)


def run_walkers(cfg: Config, bundle, out_dir: Path, steps: int, seed: int, cv_path=None, grid: Grid | None = None,
                engine: str = "native", starts: list | None = None, label: str = "md",
                executor: Executor | None = None) -> SegmentResult:
    """Run ``execution.walkers`` walkers of ``steps`` each into ``out_dir`` and merge them."""
    ex = cfg.execution
    n = ex.walkers
    out_dir = Path(out_dir)
    finished = finished_segment(out_dir)
    if finished is not None:
        return finished
    starts = starts or [None] * n
    own = executor is None
    executor = executor or Executor(cfg)
    t0 = time.perf_counter()
    try:
        outcomes = _run_all(executor, cfg, out_dir, steps, seed, cv_path, grid, engine, starts, label)
    finally:
        if own:
            executor.close()
    wall = time.perf_counter() - t0
    done = [o for o in outcomes if o.status == "done"]
    failed = [o for o in outcomes if o.status == "failed"]
    for o in failed:
        log.warning(f"{label}: walker {o.index} failed twice and is left out: {o.error}")
    need = ex.min_walkers or n
    if len(done) < need:
        raise WalkersFailed(f"{label}: only {len(done)} of {n} walkers finished (execution.min_walkers = {need}); "
                            + "; ".join(f"walker {o.index}: {o.error}" for o in failed))
    return _merge(cfg, bundle, out_dir, done, failed, engine, wall)


def _walker_dir(out_dir: Path, k: int) -> Path:
    return out_dir / "walkers" / f"w{k:02d}"


def _run_all(executor, cfg, out_dir, steps, seed, cv_path, grid, engine, starts, label) -> list[WalkerOutcome]:
    distributed = _dask()
    client = executor.client()
    data, source = dump_config(cfg), "config.resolved.yaml"
    data["md"]["threads"] = walker_md_threads(cfg)
    log.debug(f"{label}: md.threads {data['md']['threads'] or 'as OpenMM chooses'} per walker (CPU platform)")
    resources = None
    if cfg.execution.backend in ("slurm", "pbs"):
        resources = {"walker": 1, "GPU": 1} if cfg.execution.cluster.gpus else {"walker": 1}
    outcomes = {k: WalkerOutcome(k, "running", 0) for k in range(cfg.execution.walkers)}

    def submit(k):
        outcomes[k].attempts += 1
        return client.submit(walker_task, data, source, str(_walker_dir(out_dir, k)), steps,
                             derive_seed(seed, 500 + k), None if cv_path is None else str(cv_path),
                             None if grid is None else grid.to_list(), engine, starts[k], f"{label}, walker {k}",
                             key=f"walker-{k}-{outcomes[k].attempts}-{time.time_ns()}", resources=resources,
                             pure=False)
    futures = {submit(k): k for k in outcomes}
    pending = distributed.as_completed(list(futures))
    for fut in pending:
        k = futures.pop(fut)
        try:
            outcomes[k].result = fut.result()
            outcomes[k].status = "done"
            log.info(f"{label}: walker {k} finished ({outcomes[k].result['frames']} frames, "
                     f"{outcomes[k].result['steps_per_second']:,.0f} steps/s)")
        except Exception as e:  # noqa: BLE001 - a walker's failure of any kind is retried once
            msg = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
            outcomes[k].error = msg
            if outcomes[k].attempts < 2:
                log.warning(f"{label}: walker {k} failed ({msg}); retrying from its last checkpoint")
                new = submit(k)
                futures[new] = k
                pending.add(new)
            else:
                outcomes[k].status = "failed"
    return [outcomes[k] for k in sorted(outcomes)]


def _merge(cfg: Config, bundle, out_dir: Path, done: list[WalkerOutcome], failed: list[WalkerOutcome],
           engine: str, wall: float) -> SegmentResult:
    frames, steps_col, walker_col, colvar, stats, header = [], [], [], [], None, None
    lam_stats = None
    for o in done:
        wdir = _walker_dir(out_dir, o.index)
        f = load_frames(wdir, bundle)
        frames.append(f)
        steps_col.append(np.load(wdir / "frame_steps.npy"))
        walker_col.append(np.full(len(f), o.index, np.int64))
        if (wdir / "colvar.csv").exists():
            header, rows = art.read_csv(wdir / "colvar.csv")
            colvar.append(np.column_stack([rows, np.full(len(rows), o.index)]))
        if (wdir / "czar.npz").exists():
            s = CZARStats.load(wdir / "czar.npz")
            stats = s if stats is None else stats.merge(s)
        if (wdir / "lambda.npz").exists():
            s = CZARStats.load(wdir / "lambda.npz")
            lam_stats = s if lam_stats is None else lam_stats.merge(s)
    frames = np.concatenate(frames) if frames else np.zeros((0, bundle.n_atoms, 3))
    art.write_npy(out_dir / "frame_steps.npy", np.concatenate(steps_col).astype(np.int64))
    art.write_npy(out_dir / "frame_walker.npy", np.concatenate(walker_col))
    if bundle.is_toy:
        art.write_npy(out_dir / "traj.npy", frames.astype(np.float64))
    else:
        write_trajectory(out_dir, bundle, frames)
    if header is not None:
        art.write_csv(out_dir / "colvar.csv", header + ["walker"], np.concatenate(colvar),
                      comments=["time in ps; cv and lambda in CV units; walkers one after another"])
    regions = None
    if lam_stats is not None:
        save_stats(out_dir / "lambda.npz", lam_stats)
    if stats is not None:
        save_stats(out_dir / "czar.npz", stats)
        regions = write_fes(out_dir / "fes.csv", stats, engine=f"{engine}, {len(done)} walkers merged")
    results = [o.result for o in done]
    total = int(sum(r["steps"] for r in results))
    info = {"steps": total, "frames": int(len(frames)), "wall_seconds": wall,
            "steps_per_second": total / max(wall, 1e-9), "platform": results[0]["platform"], "engine": engine,
            "fes_regions": regions,
            "walkers": [{"index": o.index, "status": o.status, "attempts": o.attempts, "error": o.error,
                         **({"steps": o.result["steps"], "frames": o.result["frames"],
                             "steps_per_second": o.result["steps_per_second"],
                             "md_threads": o.result.get("md_threads"),
                             "md_cores": o.result.get("md_cores")} if o.result else {})}
                        for o in sorted(done + failed, key=lambda o: o.index)]}
    art.write_json(out_dir / "segment.json", info)
    return SegmentResult(out_dir, total, int(len(frames)), wall, info["steps_per_second"], info["platform"], engine,
                         regions)
