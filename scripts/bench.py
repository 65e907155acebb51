#!/usr/bin/env python
"""Benchmark: biased vs unbiased MD steps/s as ratios from one run, plus training cost.

Systems: alanine dipeptide in vacuum and in implicit solvent (amber14, HBonds, 2 fs,
300 K), optionally in a TIP3P box (``explicit``), and ``chignolin``: the solvated system of
configs/chignolin.yaml (7,679 atoms; the CV is the same kind of network on its 10 Cα
atoms, and its steps per timing are a hundredth of ``--steps``). Engines: ``none`` (OpenMM alone on the fastest platform for the unbiased system),
``native`` (cvflow eABF on a 2-D neural CV: Kabsch alignment of the 10 heavy atoms, then
30-40-2 tanh), ``plumed`` when a usable kernel is present. Every ratio is against the
fastest platform that runs the unbiased system, measured in the same process.

Cases are timed in interleaved rounds and the best round of each is kept.

Each timing lasts about ``--min-seconds`` (its step count is set from a short probe), so
that fast GPU cases are not timed over a few milliseconds and slow CPU cases do not take
minutes.

``--chignolin-loop STEPS`` adds the cost of the loop on chignolin: a short ``cvflow run`` of
configs/chignolin.yaml (STEPS per iteration, 1,000 frames each, 2 iterations and a
production of STEPS, on the platform and training device the config picks), with the MD,
training and bootstrap seconds of each iteration, the MD steps/s inside the loop, the
MD time that a 10-ns iteration (5,000,000 steps) takes at that speed, and the folded and
unfolded populations of the production with their ΔF.

Usage: python scripts/bench.py [--steps N] [--rounds R] [--json FILE] [--threads 1]
                               [--solvents vacuum,implicit,explicit,chignolin] [--chignolin-loop STEPS]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
BENCH_REPORT = 1000  # steps between the bias's CV rows (the projection interval, 2000, is a multiple)


def parse_strides(ap: argparse.ArgumentParser, text: str) -> list[int]:
    """``--strides`` "2,4" → [2, 4] (strides above 1; each must divide BENCH_REPORT), or a
    one-line argparse error."""
    try:
        strides = [int(k) for k in text.split(",") if k.strip()]
    except ValueError:
        ap.error(f"--strides {text!r}: comma-separated integers, e.g. 2,4")
    if any(k < 1 or BENCH_REPORT % k for k in strides):
        ap.error(f"--strides {text!r}: each must divide {BENCH_REPORT}, the bias's report interval here")
    return [k for k in strides if k > 1]


def advance_case(c, n: int) -> None:
    """``n`` steps of a case, through the MD loop's stepping (a bias stride of k: the bias's
    force group at every k-th step only)."""
    from cvflow.sampler import advance
    advance(c["integ"], c["ctx"].getStepCount(), n, c.get("stride", 1))


def make_context(system, positions, platform_name, threads):
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
    return ctx, integ


def time_cases(cases, rounds):
    """Best steps/s of each case over ``rounds`` interleaved rounds (so that a slow spell of
    the machine hits every case alike and the ratios hold)."""
    best = [0.0] * len(cases)
    for _ in range(rounds):
        for k, c in enumerate(cases):
            t0 = time.perf_counter()
            advance_case(c, c["steps"])
            best[k] = max(best[k], c["steps"] / (time.perf_counter() - t0))
    return best


def probe(cases) -> list[float]:
    """Steps/s of each case from one short timing (a twentieth of its steps, at least 20)."""
    return time_cases([{**c, "steps": max(20, c["steps"] // 20)} for c in cases], 1)


def calibrate(cases, min_seconds: float) -> None:
    """Set each case's steps per timing so that one timing lasts about ``min_seconds``
    (from a short probe of every case): fast GPU cases are not timed over a few
    milliseconds, and slow CPU cases do not take minutes."""
    for rate, c in zip(probe(cases), cases):
        c["steps"] = max(20, int(np.ceil(rate * min_seconds)))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=5000, help="steps per timing of the fast cases")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds; the best is kept")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--min-seconds", type=float, default=1.0, help="length of one timing of one case, s")
    ap.add_argument("--chignolin-loop", type=int, default=0, metavar="STEPS",
                    help="also run a short chignolin loop with STEPS per iteration (0: no)")
    ap.add_argument("--loop-out", type=Path, default=None, help="run directory of that loop (default: a temporary one)")
    ap.add_argument("--train-frames", type=int, default=100_000)
    ap.add_argument("--skip-training", action="store_true")
    ap.add_argument("--train-epochs", type=int, default=200,
                    help="epochs of the training row, all of them run (no early stopping)")
    ap.add_argument("--training-only", action="store_true", help="only the training row")
    ap.add_argument("--train-threads", type=int, default=2, help="torch threads of the training row")
    ap.add_argument("--strides", default="2,4",
                    help="Comma-separated bias strides (bias.stride, multiple time stepping) timed beside stride 1.")
    ap.add_argument("--solvents", default="vacuum,implicit",
                    help="Comma-separated: vacuum, implicit, explicit (TIP3P box, PME).")
    args = ap.parse_args(argv)
    args.strides = parse_strides(ap, args.strides)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import openmm as mm
    import torch
    from cvflow.config import BiasConfig, GridDim, SystemConfig
    from cvflow.export import export_cv
    from cvflow.features import AlignedFeatures
    from cvflow.fes import Grid
    from cvflow.models.autoencoder import MLP
    from cvflow.bias.native import NativeEABF
    from cvflow.sampler import BIAS_GROUP
    from cvflow.fastcv import load_cv
    from cvflow.bias.plumed import plumed_status
    from cvflow.system import build_system
    from cvflow.cvs import ramachandran_quads, save_torsion_cv
    import mdtraj as md

    torch.set_num_threads(args.threads)
    pdb = ROOT / "systems" / "alanine-dipeptide" / "ala2.pdb"
    rows = []
    from script_exit import scratch_dir
    tmp = scratch_dir("cvflow-bench-")  # the CV files it writes
    plats = [mm.Platform.getPlatform(i).getName() for i in range(mm.Platform.getNumPlatforms())]
    for solvent in filter(None, "" if args.training_only else args.solvents.split(",")):
        chignolin = solvent == "chignolin"
        if chignolin:
            from cvflow.config import load_config
            bundle = build_system(load_config(ROOT / "configs" / "chignolin.yaml").system, "name CA")
        else:
            bundle = build_system(SystemConfig(pdb=pdb, solvent=solvent), "not element H")
        torch.manual_seed(0)
        idx = bundle.feature_atoms
        feats = AlignedFeatures(idx, bundle.positions[idx], align=True)
        enc = MLP([3 * len(idx), 40, 2], ["tanh", "tanh"])
        cv_path = export_cv(feats, np.zeros(3 * len(idx)), np.full(3 * len(idx), 0.1), enc, bundle.n_atoms,
                            tmp / f"cv-{solvent}.pt") and tmp / f"cv-{solvent}.pt"
        system_name = "chignolin" if chignolin else f"ala2-{solvent}"
        steps = max(20, args.steps // 100) if chignolin else args.steps
        cases = []

        def add(row, system, plat, steps, stride=1):
            ctx, integ = make_context(system, bundle.positions, plat, args.threads)
            cases.append({"row": {"system": system_name, **row, "platform": plat}, "ctx": ctx, "integ": integ,
                          "steps": steps, "stride": stride})

        for p in ("Reference", "CPU", "CUDA", "OpenCL"):
            if p in plats and not (p == "Reference" and bundle.box is not None):  # far slower with PME
                add({"engine": "none"}, bundle.system, p, steps)
        # the reference is the fastest platform for the unbiased system: a short probe picks it
        best_plat = cases[int(np.argmax(probe(cases)))]["row"]["platform"]
        grid = Grid.from_dims([GridDim(min=-1, max=1, bins=50)] * 2)
        variants = [("neural CV", cv_path, grid, True, 1)]
        variants += [(f"neural CV, bias.stride {k}", cv_path, grid, True, k) for k in args.strides]
        variants += [("neural CV, autograd", cv_path, grid, False, 1)]
        if not chignolin:
            tors = save_torsion_cv(ramachandran_quads(md.Topology.from_openmm(bundle.topology)), bundle.n_atoms,
                                   tmp / f"phipsi-{solvent}.pt")
            tgrid = Grid.from_dims([GridDim(min=-np.pi, max=np.pi, bins=60, periodic=True)] * 2)
            variants.insert(1, ("phi/psi torsions", tors, tgrid, True, 1))
        for variant, path, g, fast, stride in variants:
            cv = load_cv(path, bundle.n_atoms, fast=fast)
            bias = NativeEABF(cv, g, kappa=1000.0, mass=10.0, friction=1.0, temperature=300.0,
                              timestep=0.002, fullsamples=100, seed=1, report_interval=BENCH_REPORT,
                              projection_interval=BiasConfig().projection_interval,  # the default's cost
                              stride=stride)
            system = mm.XmlSerializer.deserialize(mm.XmlSerializer.serialize(bundle.system))
            force = bias.make_force()
            force.setForceGroup(BIAS_GROUP)  # as in the MD loop
            system.addForce(force)
            add({"engine": "native", "variant": variant}, system, best_plat,
                steps if fast else max(20, steps // 50), stride)
        st = plumed_status()
        if st.usable:
            system = plumed_system(bundle, cv_path, grid, st.kernel, tmp / f"plumed-{solvent}")
            add({"engine": "plumed", "variant": "neural CV (PYTORCH_MODEL)"}, system, best_plat,
                max(20, steps // 50))
        calibrate(cases, args.min_seconds)
        rates = time_cases(cases, args.rounds)
        base = max(r for r, c in zip(rates, cases) if c["row"]["engine"] == "none")
        for r, c in zip(rates, cases):
            rows.append({**c["row"], "steps_per_s": r, "ratio": r / base})
        if not st.usable:
            rows.append({"system": system_name, "engine": "plumed", "platform": None, "steps_per_s": None,
                         "ratio": None, "note": st.reason})
        del cases
    if args.chignolin_loop:
        rows.extend(bench_chignolin_loop(args.chignolin_loop, args.loop_out or tmp / "chignolin-loop"))
    if not args.training_only:
        rows.append(bench_energy_bridge(pdb))
        rows.append(bench_generator_training(pdb))
    if not args.skip_training:
        rows.append(bench_training(args.train_frames, args.train_epochs, args.train_threads))
    print_table(rows)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
          f"OpenMM {mm.__version__}, torch {torch.__version__}; threads {args.threads}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return rows


def plumed_system(bundle, cv_path, grid, kernel, out_dir):
    """The system with the same CV biased through PLUMED: PYTORCH_MODEL + DRR, driven from a
    PythonForce (or openmmplumed's PlumedForce when that is importable)."""
    import openmm as mm
    from cvflow.bias.plumed import PlumedEABF, PlumedInputSpec, write_plumed_cv
    from cvflow.fastcv import load_cv
    particles = load_cv(cv_path, bundle.n_atoms).particles
    out_dir.mkdir(parents=True, exist_ok=True)
    write_plumed_cv(cv_path, particles, bundle.n_atoms, out_dir / "plumed" / "cv_plumed.pt")
    spec = PlumedInputSpec(cv_kind="torch", particles=particles, quads=None, model_file="cv_plumed.pt", dim=2,
                           grid=grid, kappa=1000.0, tau=0.5, friction=1.0, temperature=300.0, fullsamples=100,
                           wall_kappa=1000.0, output_freq=10 ** 6, report_interval=500,
                           periodic_box=bundle.box is not None)
    masses = np.array([bundle.system.getParticleMass(i).value_in_unit(mm.unit.dalton)
                       for i in range(bundle.n_atoms)])
    bias = PlumedEABF(spec, out_dir, masses, bundle.n_atoms, kernel, 0.002, 300.0 * 0.00831446261815324, None)
    system = mm.XmlSerializer.deserialize(mm.XmlSerializer.serialize(bundle.system))
    system.addForce(bias.make_force())
    return system


def bench_chignolin_loop(steps: int, out: Path) -> list[dict]:
    """A short loop on configs/chignolin.yaml through ``cvflow run``: ``steps`` MD steps per
    iteration (1,000 frames), 2 iterations, a production of ``steps``. Rows: per iteration
    the seconds of MD, training and bootstrap and the MD steps/s; the MD hours of one
    10-ns iteration at that speed; the production's folded/unfolded populations and ΔF."""
    import subprocess
    import yaml
    data = yaml.safe_load((ROOT / "configs" / "chignolin.yaml").read_text())
    data["system"]["pdb"] = str(ROOT / "systems" / "chignolin" / "chignolin.pdb")
    data["md"].update(steps=steps, report_interval=max(1, steps // 1000), checkpoint_interval=steps)
    data["convergence"].update(max_iterations=2, production_steps=steps)
    out.parent.mkdir(parents=True, exist_ok=True)
    cfg_path = out.parent / f"{out.name}.yaml"
    cfg_path.write_text(yaml.safe_dump(data, sort_keys=False))
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-m", "cvflow.cli", "run", str(cfg_path), "--out", str(out), "-q"],
                         capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        return [{"system": "chignolin", "engine": "loop", "steps_per_s": None, "ratio": None,
                 "note": f"cvflow run exited {res.returncode}: {(res.stderr or res.stdout).strip()[-300:]}"}]
    summary = json.loads((out / "summary.json").read_text())
    resolved = yaml.safe_load((out / "config.resolved.yaml").read_text())
    plat = json.loads((out / "iter_000" / "md" / "segment.json").read_text())["platform"]
    device = resolved["execution"]["training_device"]
    rows = []
    for it in summary["iterations"]:
        sec = it["seconds"]  # the stage's seconds (MD with the context's set-up and the frames' writing)
        rate = json.loads((out / f"iter_{it['index']:03d}" / "md" / "segment.json").read_text())["steps_per_second"]
        rows.append({"system": "chignolin", "engine": "loop", "variant": f"iteration {it['index']}",
                     "platform": plat, "steps_per_s": rate, "ratio": None, "seconds": sec,
                     "frames": it["frames"], "md_hours_per_10ns": 5_000_000 / rate / 3600,
                     "training_device": device,
                     "note": "MD {md:.1f} s, training {tr:.1f} s, bootstrap {bs} s (on {dev}); 10 ns of MD: {h:.2f} h".format(
                         dev=device,
                         md=sec["md"], tr=sec["training"] or 0.0,
                         bs="-" if sec["bootstrap"] is None else f"{sec['bootstrap']:.1f}",
                         h=5_000_000 / rate / 3600)})
    st = summary.get("states") or {}
    pops = {k: v["value"] for k, v in st.get("populations", {}).items()}
    dfs = {k: v["value"] for k, v in st.get("delta_f", {}).items()}
    rows.append({"system": "chignolin", "engine": "loop", "variant": "production states", "platform": plat,
                 "steps_per_s": None, "ratio": None, "populations": pops, "delta_f": dfs,
                 "wall_seconds": wall, "converged": summary["converged"],
                 "note": f"populations {pops}, ΔF {dfs} kJ/mol (reference {st.get('reference_state')}); "
                         f"whole loop {wall:.0f} s"})
    return rows


def bench_energy_bridge(pdb, n: int = 4000) -> dict:
    """Energy and force evaluations per second through cvflow.energy.OpenMMEnergy (the
    bridge of the generative models) on alanine dipeptide in vacuum, Reference platform,
    batches of 256 perturbed structures, with the torch autograd round trip."""
    import torch
    from cvflow.config import SystemConfig
    from cvflow.energy import OpenMMEnergy, energy
    from cvflow.system import build_system
    bundle = build_system(SystemConfig(pdb=pdb), "backbone")
    bridge = OpenMMEnergy(bundle)
    rng = np.random.default_rng(0)
    x = torch.tensor(bundle.positions[None] + 0.01 * rng.normal(size=(256,) + bundle.positions.shape),
                     requires_grad=True)
    t0 = time.perf_counter()
    done = 0
    while done < n:
        energy(x, bridge).sum().backward()
        done += len(x)
    rate = done / (time.perf_counter() - t0)
    return {"system": "ala2-vacuum", "engine": "energy", "variant": "OpenMM bridge, batch 256",
            "platform": "Reference", "steps_per_s": rate, "ratio": None, "note": "evaluations/s"}


def bench_generator_training(pdb, steps: int = 30) -> dict:
    """Boltzmann-generator training on alanine dipeptide in vacuum (configs/bg-ala2.yaml's
    flow, reverse KL alone from the structure, batch 256): energy evaluations per second of
    training, and the fraction of the training's wall time spent in the OpenMM bridge."""
    import yaml
    from cvflow.config import load_config
    from cvflow.generate import GenerateRun, prepare_generate_dir
    data = yaml.safe_load((ROOT / "configs" / "bg-ala2.yaml").read_text())
    data["system"]["pdb"] = str(pdb)
    data["bias"]["cv"] = str(ROOT / "systems" / "alanine-dipeptide" / "phipsi.pt")
    data["generator"].update(steps=steps, ml_weight=0.0, kl_weight=1.0, kl_start=0, kl_ramp=0, samples=1000)
    with tempfile.TemporaryDirectory() as tmp:
        cfg_path = Path(tmp) / "bg.yaml"
        cfg_path.write_text(yaml.safe_dump(data))
        cfg = load_config(cfg_path)
        prepare_generate_dir(cfg, Path(tmp) / "gen", False)
        run = GenerateRun(cfg, Path(tmp) / "gen")
        run.run()
        tr = run.manifest.get("train")
    return {"system": "ala2-vacuum", "engine": "flow", "variant": f"KL, batch 256, {steps} steps",
            "platform": "Reference", "steps_per_s": tr["energy_evaluations"] / tr["wall_s"], "ratio": None,
            "note": f"energy evaluations/s of training; {100 * tr['energy_fraction_of_training']:.0f}% of its "
                    f"time in the OpenMM bridge"}


def bench_training(n_frames: int, epochs: int = 200, threads: int = 2) -> dict:
    """One autoencoder training on n_frames × 30 features (the paper's size) for ``epochs``
    epochs, every one of them (no early stopping), on ``threads`` torch threads."""
    import torch
    from cvflow.config import ModelConfig
    from cvflow.train import train_model
    torch.set_num_threads(threads)
    rng = np.random.default_rng(0)
    # two-state data on a curved 2-D manifold embedded in 30 dimensions, plus noise
    t = rng.uniform(-1, 1, size=(n_frames, 2))
    basis = rng.normal(size=(4, 30))
    x = np.column_stack([t, np.sin(3 * t[:, :1]), t[:, 1:] ** 2]) @ basis + 0.05 * rng.normal(size=(n_frames, 30))
    w = rng.uniform(0.5, 1.5, size=n_frames)
    cfg = ModelConfig(hidden=[40], bottleneck=2, epochs=epochs, batch_size=512, patience=epochs)
    t0 = time.perf_counter()
    res = train_model(x, w, cfg, seed=1)
    wall = time.perf_counter() - t0
    return {"system": f"training {n_frames}x30", "engine": "train", "steps_per_s": None, "ratio": None,
            "epochs": res.epochs_run, "torch_threads": threads, "seconds": wall, "seconds_per_epoch": wall / res.epochs_run,
            "best_val_loss": res.best_val}


def print_table(rows):
    print(f"{'system':<16}{'engine':<8}{'variant':<28}{'platform':<11}{'steps/s':>10}{'ratio':>8}")
    for r in rows:
        if r["engine"] == "loop" and r["steps_per_s"] is None and "populations" not in r:
            print(f"{r['system']:<16}{'loop':<8}  {r['note']}")
            continue
        if r["engine"] == "train":
            print(f"{r['system']:<16}{'train':<8}{'':<28}{'':<11}"
                  f"{r['seconds_per_epoch']:>9.3f}s/epoch, {r['epochs']} epochs, {r['seconds']:.1f} s")
            continue
        sps = "-" if r["steps_per_s"] is None else f"{r['steps_per_s']:,.0f}"
        ratio = "-" if r["ratio"] is None else f"{r['ratio']:.2f}"
        print(f"{r['system']:<16}{r['engine']:<8}{r.get('variant', ''):<28}{str(r['platform']):<11}{sps:>10}{ratio:>8}"
              + (f"  ({r['note']})" if r.get("note") else ""))


if __name__ == "__main__":
    main()
