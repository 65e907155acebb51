#!/usr/bin/env python
"""Where an iteration's time goes at the paper's size: 100,000 frames of alanine dipeptide.

Times, on real frames (unbiased Reference MD of alanine dipeptide in vacuum, 30 features:
the 10 heavy atoms, aligned), the parts of one loop iteration as cvflow runs them:

- reweighting: the previous CV on every frame, F(ξ) by interpolation, log-sum-exp weights;
- training: one autoencoder (30-40-2-40-30, batch 512, at most 200 epochs, patience 20);
- regression score: both CVs on every frame, then the weighted least-squares R²;
- bootstrap: ``repeats`` trainings on ``fraction`` of the frames, side by side in worker
  processes as ``convergence.bootstrap.workers: auto`` runs them, then the CVs on every
  frame and the pairwise scores (``cvflow.convergence.bootstrap_threshold``).

The MD part is not run for 100,000 frames (25 M steps at the shipped report interval of
250 steps); it is the measured steps/s of the native engine on the same system, times
frames × report interval. Each part is reported as a fraction of the whole iteration.

Usage: python scripts/stage_costs.py [--frames 100000] [--report-interval 250] [--json FILE]
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))  # bench.make_context


def unbiased_frames(bundle, n_frames: int, stride: int, seed: int = 1) -> np.ndarray:
    import openmm as mm
    from openmm import unit as u
    integ = mm.LangevinMiddleIntegrator(300 * u.kelvin, 1 / u.picosecond, 0.002 * u.picosecond)
    integ.setRandomNumberSeed(seed)
    ctx = mm.Context(bundle.system, integ, mm.Platform.getPlatformByName("Reference"))
    ctx.setPositions(bundle.positions * u.nanometer)
    ctx.setVelocitiesToTemperature(300 * u.kelvin, seed)
    out = np.empty((n_frames, bundle.n_atoms, 3))
    for i in range(n_frames):
        integ.step(stride)
        out[i] = ctx.getState(getPositions=True).getPositions(asNumpy=True).value_in_unit(u.nanometer)
    return out


def biased_steps_per_s(bundle, cv_path, steps: int = 20000) -> float:
    import openmm as mm
    from bench import make_context
    from cvflow.bias.native import NativeEABF
    from cvflow.config import GridDim
    from cvflow.fastcv import load_cv
    from cvflow.fes import Grid
    cv = load_cv(cv_path, bundle.n_atoms)
    # a soft coupling: the cost per step does not depend on κ, and a stiff one on a CV
    # trained on unbiased frames can drive the molecule apart where ξ saturates
    bias = NativeEABF(cv, Grid.from_dims([GridDim(min=-1, max=1, bins=40)] * 2), kappa=100.0, mass=1.0,
                      friction=1.0, temperature=300.0, timestep=0.002, fullsamples=100, seed=1, report_interval=250)
    system = mm.XmlSerializer.deserialize(mm.XmlSerializer.serialize(bundle.system))
    system.addForce(bias.make_force())
    _, integ = make_context(system, bundle.positions, "Reference", 1)
    t0 = time.perf_counter()
    integ.step(steps)
    return steps / (time.perf_counter() - t0)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=100_000)
    ap.add_argument("--stride", type=int, default=10, help="MD steps between the frames generated here")
    ap.add_argument("--report-interval", type=int, default=250, help="steps per frame of the MD estimate")
    ap.add_argument("--repeats", type=int, default=4)
    ap.add_argument("--fraction", type=float, default=0.8)
    ap.add_argument("--workers", default="auto", help="bootstrap processes (convergence.bootstrap.workers)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    import torch
    from cvflow.config import GridDim, ModelConfig, SystemConfig
    from cvflow.convergence import bootstrap_threshold, regscore
    from cvflow.dataset import log_weights_from_fes, normalised_weights
    from cvflow.export import export_cv
    from cvflow.features import AlignedFeatures, featurize
    from cvflow.fes import CZARStats, Grid, write_fes
    from cvflow.system import build_system
    from cvflow.train import bootstrap_member, bootstrap_workers, process_map, train_model
    from cvflow.workflow import cv_values
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    from script_exit import scratch_dir
    tmp = scratch_dir("cvflow-stages-")
    bundle = build_system(SystemConfig(pdb=ROOT / "systems" / "alanine-dipeptide" / "ala2.pdb", solvent="vacuum"),
                          "not element H")
    idx = bundle.feature_atoms
    feats = AlignedFeatures(idx, bundle.positions[idx], align=True)
    t0 = time.perf_counter()
    frames = unbiased_frames(bundle, args.frames, args.stride)
    print(f"{args.frames} frames generated in {time.perf_counter() - t0:.0f} s", flush=True)
    x = featurize(frames, feats)
    cfg = ModelConfig(hidden=[40], bottleneck=2, epochs=200, batch_size=512, patience=20)
    times = {}

    def trained_cv(name, w, seed):
        """Train, export; returns the result, the CV file and the training time."""
        t = time.perf_counter()
        res = train_model(x, w, cfg, seed=seed)
        seconds = time.perf_counter() - t
        path = tmp / f"{name}.pt"
        export_cv(feats, res.mean, res.std, res.model.encoder, bundle.n_atoms, path)
        return res, path, seconds

    # the "previous" CV and a free energy along it, as an eABF iteration would leave them
    _, prev_cv, _ = trained_cv("previous", None, 1)
    xi = cv_values(prev_cv, frames)
    grid = Grid.from_dims([GridDim(min=float(v.min()) - 0.01, max=float(v.max()) + 0.01, bins=40) for v in xi.T])
    count, _ = np.histogramdd(xi, bins=[np.linspace(lo, hi, 41) for lo, hi in zip(grid.mins, grid.maxs)])
    # ⟨λ − ξ⟩ = 0 in every bin: the CZAR free energy is then −kT ln ρ(ξ) of these frames
    stats = CZARStats(grid, 1000.0, 2.494, count, np.zeros(count.shape + (2,)))
    write_fes(tmp / "fes.csv", stats)

    t = time.perf_counter()
    xi = cv_values(prev_cv, frames)
    w = normalised_weights(log_weights_from_fes(xi, tmp / "fes.csv", 1 / 2.494)[0])
    times["reweighting"] = time.perf_counter() - t

    res, new_cv, times["training"] = trained_cv("new", w, 2)
    t = time.perf_counter()
    score = regscore(cv_values(prev_cv, frames), cv_values(new_cv, frames))
    times["regression score"] = time.perf_counter() - t

    workers = bootstrap_workers(args.workers if args.workers == "auto" else int(args.workers), args.repeats, x.size)
    train_fn = functools.partial(bootstrap_member, model_cfg=cfg)
    t = time.perf_counter()
    with process_map(workers) if workers > 1 else contextlib.nullcontext(map) as pmap:
        threshold, scores = bootstrap_threshold(train_fn, x, w, args.repeats, args.fraction, 0.05,
                                                np.random.default_rng(3), map_fn=pmap)
    times["bootstrap"] = time.perf_counter() - t

    sps = biased_steps_per_s(bundle, new_cv)
    times["MD (estimated)"] = args.frames * args.report_interval / sps
    total = sum(times.values())
    rows = [{"part": k, "seconds": v, "fraction": v / total} for k, v in times.items()]
    print(f"{'part':<20} {'seconds':>9} {'fraction':>9}")
    for r in rows:
        print(f"{r['part']:<20} {r['seconds']:>9.1f} {r['fraction']:>9.3f}")
    print(f"iteration total {total:.0f} s; MD: {args.frames} frames x {args.report_interval} steps at "
          f"{sps:,.0f} steps/s (native eABF, Reference, 1 thread); regscore {score:.3f}, "
          f"bootstrap threshold {threshold:.3f} ({workers} processes), training epochs {res.epochs_run}")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "biased_steps_per_s": sps, "frames": args.frames,
                                         "bootstrap_workers": workers,
                                         "report_interval": args.report_interval}, indent=2))
    return rows


if __name__ == "__main__":
    main()
