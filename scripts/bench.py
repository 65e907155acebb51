#!/usr/bin/env python
"""Benchmark: biased vs unbiased MD steps/s as ratios from one run, plus training cost.

Systems: alanine dipeptide in vacuum and in implicit solvent (amber14, HBonds, 2 fs,
300 K). Engines: ``none`` (OpenMM alone on the fastest platform for the unbiased system),
``native`` (cvflow eABF on a 2-D neural CV: Kabsch alignment of the 10 heavy atoms, then
30-40-2 tanh), ``plumed`` when a usable kernel is present. Every ratio is against the
fastest platform that runs the unbiased system, measured in the same process.

Usage: python scripts/bench.py [--steps N] [--json FILE] [--threads 1]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def md_rate(system, topology, positions, platform_name, steps, threads):
    import openmm as mm
    from openmm import unit as u
    integ = mm.LangevinMiddleIntegrator(300 * u.kelvin, 1 / u.picosecond, 0.002 * u.picosecond)
    integ.setRandomNumberSeed(1)
    plat = mm.Platform.getPlatformByName(platform_name)
    props = {"Threads": str(threads)} if platform_name == "CPU" else {}
    ctx = mm.Context(system, integ, plat, props)
    ctx.setPositions(positions * u.nanometer)
    ctx.setVelocitiesToTemperature(300 * u.kelvin, 1)
    integ.step(200)  # warm-up (and numba compilation of a bias callback)
    best = 0.0
    for _ in range(3):
        t0 = time.perf_counter()
        integ.step(steps)
        best = max(best, steps / (time.perf_counter() - t0))
    return best


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=5000, help="steps per timing (best of 3)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--train-frames", type=int, default=100_000)
    ap.add_argument("--skip-training", action="store_true")
    args = ap.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import openmm as mm
    import torch
    from cvflow.config import GridDim, SystemConfig
    from cvflow.export import export_cv
    from cvflow.features import AlignedFeatures
    from cvflow.fes import Grid
    from cvflow.models.autoencoder import MLP
    from cvflow.bias.native import NativeEABF
    from cvflow.fastcv import load_cv
    from cvflow.bias.plumed import plumed_status
    from cvflow.system import build_system

    torch.set_num_threads(args.threads)
    pdb = ROOT / "systems" / "alanine-dipeptide" / "ala2.pdb"
    rows = []
    tmp = Path(os.environ.get("TMPDIR", "/tmp")) / f"cvflow-bench-{os.getpid()}"
    tmp.mkdir(parents=True, exist_ok=True)
    plats = [mm.Platform.getPlatform(i).getName() for i in range(mm.Platform.getNumPlatforms())]
    for solvent in ("vacuum", "implicit"):
        bundle = build_system(SystemConfig(pdb=pdb, solvent=solvent), "not element H")
        torch.manual_seed(0)
        idx = bundle.feature_atoms
        feats = AlignedFeatures(idx, bundle.positions[idx], align=True)
        enc = MLP([3 * len(idx), 40, 2], ["tanh", "tanh"])
        cv_path = export_cv(feats, np.zeros(3 * len(idx)), np.full(3 * len(idx), 0.1), enc, bundle.n_atoms,
                            tmp / f"cv-{solvent}.pt") and tmp / f"cv-{solvent}.pt"
        # the reference: the fastest platform for the unbiased system
        rates = {p: md_rate(bundle.system, bundle.topology, bundle.positions, p, args.steps, args.threads)
                 for p in ("Reference", "CPU") if p in plats}
        best_plat = max(rates, key=rates.get)
        base = rates[best_plat]
        system_name = f"ala2-{solvent}"
        for p, r in rates.items():
            rows.append({"system": system_name, "engine": "none", "platform": p, "steps_per_s": r,
                         "ratio": r / base})
        grid = Grid.from_dims([GridDim(min=-1, max=1, bins=50)] * 2)
        for label, fast in (("native", True), ("native-torchscript", False)):
            cv = load_cv(cv_path, bundle.n_atoms, fast=fast)
            bias = NativeEABF(cv, grid, kappa=1000.0, mass=10.0, friction=1.0, temperature=300.0,
                              timestep=0.002, fullsamples=100, seed=1, report_interval=500)
            system = mm.XmlSerializer.deserialize(mm.XmlSerializer.serialize(bundle.system))
            system.addForce(bias.make_force())
            n = args.steps if fast else max(200, args.steps // 20)
            r = md_rate(system, bundle.topology, bundle.positions, best_plat, n, args.threads)
            rows.append({"system": system_name, "engine": "native", "variant": label, "platform": best_plat,
                         "steps_per_s": r, "ratio": r / base})
        st = plumed_status()
        if st.usable:
            from cvflow.bias.plumed import bench_plumed
            r = bench_plumed(bundle, cv_path, best_plat, args.steps, md_rate, args.threads)
            rows.append({"system": system_name, "engine": "plumed", "platform": best_plat, "steps_per_s": r,
                         "ratio": r / base})
        else:
            rows.append({"system": system_name, "engine": "plumed", "platform": None, "steps_per_s": None,
                         "ratio": None, "note": st.reason})
    if not args.skip_training:
        rows.append(bench_training(args.train_frames))
    print_table(rows)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
          f"OpenMM {mm.__version__}, torch {torch.__version__}; threads {args.threads}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return rows


def bench_training(n_frames: int) -> dict:
    """One full autoencoder training on n_frames × 30 features (the paper's size), 2 threads."""
    import torch
    from cvflow.config import ModelConfig
    from cvflow.train import train_model
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    rng = np.random.default_rng(0)
    # two-state data on a curved 2-D manifold embedded in 30 dimensions, plus noise
    t = rng.uniform(-1, 1, size=(n_frames, 2))
    basis = rng.normal(size=(4, 30))
    x = np.column_stack([t, np.sin(3 * t[:, :1]), t[:, 1:] ** 2]) @ basis + 0.05 * rng.normal(size=(n_frames, 30))
    w = rng.uniform(0.5, 1.5, size=n_frames)
    cfg = ModelConfig(hidden=[40], bottleneck=2, epochs=200, batch_size=512, patience=20)
    t0 = time.perf_counter()
    res = train_model(x, w, cfg, seed=1)
    wall = time.perf_counter() - t0
    return {"system": f"training {n_frames}x30", "engine": "train", "steps_per_s": None, "ratio": None,
            "epochs": res.epochs_run, "seconds": wall, "seconds_per_epoch": wall / res.epochs_run,
            "best_val_loss": res.best_val}


def print_table(rows):
    print(f"{'system':<22}{'engine':<10}{'variant':<22}{'platform':<11}{'steps/s':>10}{'ratio':>8}")
    for r in rows:
        if r["engine"] == "train":
            print(f"{r['system']:<22}{'train':<10}{'':<22}{'':<11}"
                  f"{r['seconds_per_epoch']:>9.3f}s/epoch, {r['epochs']} epochs, {r['seconds']:.1f} s")
            continue
        sps = "-" if r["steps_per_s"] is None else f"{r['steps_per_s']:,.0f}"
        ratio = "-" if r["ratio"] is None else f"{r['ratio']:.2f}"
        print(f"{r['system']:<22}{r['engine']:<10}{r.get('variant', ''):<22}{str(r['platform']):<11}{sps:>10}{ratio:>8}"
              + (f"  ({r['note']})" if r.get("note") else ""))


if __name__ == "__main__":
    main()
