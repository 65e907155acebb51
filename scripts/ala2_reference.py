#!/usr/bin/env python
"""An independent reference for alanine dipeptide: OpenMM's own well-tempered ``Metadynamics``
on (φ, ψ), with the same force field and MD settings as ``configs/ala2-paper.yaml``
(amber14, vacuum, HBonds, 300 K, 2 fs, LangevinMiddle at 1/ps). cvflow is not used, except
to read the config's system section so that the system is the same one.

    python scripts/ala2_reference.py [--ns 40] [--seeds 1 2] [--json docs/measurements/ala2-reference.json]

Each seed runs on its own process (one thread each). Every ``--every`` ns the script records
ΔF(C7ax − C7eq) = −kT ln(P(φ > 0) / P(φ < 0)) from the well-tempered estimate
F(φ, ψ) = −(γ / (γ − 1)) V(φ, ψ), and it stops a seed at ``--ns`` or when the last
``--window`` ns of estimates agree within ±``--tol`` kJ/mol (whichever comes later than
``--min-ns``). The reference value is the mean over seeds of their last estimates; its
error bar is the larger of the seeds' standard error and the spread of each seed over its
last window. The Ramachandran free energy (mean over seeds) goes to an ``.npz`` beside the JSON.

With ``--static-ns N`` each seed then runs N ns more with the final metadynamics bias V
frozen (``Simulation.step`` instead of ``Metadynamics.step``: no more hills), reading
(φ, ψ) and V every ``--static-every`` steps from OpenMM's own bias force. Under a static
bias the frames' exact weights are e^{βV}, so ΔF from them is a second estimate that does
not go through the well-tempered F = −(γ/(γ − 1)) V smoothed by the hills' width
(``delta_f_static`` in the JSON).
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
KB = 0.0083144626  # kJ/mol/K


def dihedral_atoms(topology):
    """Atom indices of φ (C-N-CA-C) and ψ (N-CA-C-N) of the ALA residue."""
    import mdtraj as md
    top = md.Topology.from_openmm(topology)
    phi = md.compute_phi(md.Trajectory(np.zeros((1, top.n_atoms, 3)), top))[0][0]
    psi = md.compute_psi(md.Trajectory(np.zeros((1, top.n_atoms, 3)), top))[0][0]
    return [int(i) for i in phi], [int(i) for i in psi]


def delta_f(fes: np.ndarray, phi_grid: np.ndarray, kT: float) -> float:
    """ΔF(φ > 0 − φ < 0) in kJ/mol from F(φ, ψ) on a grid (rows: φ)."""
    p = np.exp(-(fes - fes.min()) / kT).sum(axis=1)
    on_edge = np.isclose(np.abs(phi_grid), 0.0) | np.isclose(np.abs(phi_grid), np.pi)
    pos = p[phi_grid > 0].sum() + 0.5 * p[on_edge].sum() - p[(phi_grid > 0) & on_edge].sum() * 0.5
    neg = p[phi_grid < 0].sum() + 0.5 * p[on_edge].sum() - p[(phi_grid < 0) & on_edge].sum() * 0.5
    return float(-kT * np.log(pos / neg))


def run_seed(args) -> dict:
    (seed, cfg_path, ns, every, window, tol, min_ns, bias_factor, height, width_deg, pace, static_ns,
     static_every) = args
    import openmm as mm
    from openmm import app, unit as u
    import torch
    torch.set_num_threads(1)
    from cvflow.config import load_config
    from cvflow.system import build_system
    cfg = load_config(cfg_path)
    bundle = build_system(cfg.system, cfg.features.atoms)
    system = bundle.system
    T = cfg.md.temperature
    kT = KB * T
    phi_idx, psi_idx = dihedral_atoms(bundle.topology)
    cvs = []
    for idx in (phi_idx, psi_idx):
        f = mm.CustomTorsionForce("theta")
        f.addTorsion(*idx)
        cvs.append(app.BiasVariable(f, -np.pi, np.pi, np.deg2rad(width_deg), periodic=True, gridWidth=73))
    meta = app.Metadynamics(system, cvs, T * u.kelvin, bias_factor, height * u.kilojoule_per_mole, pace,
                            saveFrequency=None, biasDir=None)
    integ = mm.LangevinMiddleIntegrator(T * u.kelvin, cfg.md.friction / u.picosecond, cfg.md.timestep * u.picosecond)
    integ.setRandomNumberSeed(seed)
    platform = mm.Platform.getPlatformByName("Reference")
    sim = app.Simulation(bundle.topology, system, integ, platform)
    sim.context.setPositions(bundle.positions * u.nanometer)
    sim.minimizeEnergy()
    sim.context.setVelocitiesToTemperature(T * u.kelvin, seed)
    steps_per_ns = int(round(1000.0 / cfg.md.timestep))
    chunk = int(round(every * steps_per_ns))
    history = []
    t0 = time.time()
    done_ns = 0.0
    while done_ns < ns - 1e-9:
        meta.step(sim, chunk)
        done_ns += every
        fes = meta.getFreeEnergy().value_in_unit(u.kilojoule_per_mole)  # shape (n_psi, n_phi)
        fes = np.asarray(fes).T  # rows: φ
        phi_vals = np.linspace(-np.pi, np.pi, fes.shape[0])
        # OpenMM's periodic grid holds both ends (−π and π): drop the duplicate row/column
        fes_u, phi_u = fes[:-1, :-1], phi_vals[:-1]
        history.append((done_ns, delta_f(fes_u, phi_u, kT), time.time() - t0))
        last = [h[1] for h in history if h[0] > done_ns - window - 1e-9]
        if done_ns >= min_ns and len(last) >= 2 and max(last) - min(last) <= 2 * tol:
            break
    last = [h[1] for h in history if h[0] > done_ns - window - 1e-9]
    out = {"seed": seed, "ns": done_ns, "wall_seconds": time.time() - t0,
           "delta_f": history[-1][1], "window_spread": float(max(last) - min(last)),
           "history": history, "fes": fes_u.tolist(), "phi": phi_u.tolist()}
    if static_ns > 0:
        out.update(static_stage(sim, meta, phi_idx, static_ns, static_every, steps_per_ns, kT))
    return out


def static_stage(sim, meta, phi_idx, static_ns: float, every: int, steps_per_ns: int, kT: float) -> dict:
    """``static_ns`` of MD under the frozen metadynamics bias; ΔF from the frames' exact
    weights e^{βV}, with the ΔF of each quarter."""
    from openmm import unit as u
    group = {meta._force.getForceGroup()}
    n = int(round(static_ns * steps_per_ns / every))
    phi, bias = np.empty(n), np.empty(n)
    t0 = time.time()
    for i in range(n):
        sim.step(every)
        st = sim.context.getState(getPositions=True, getEnergy=True, groups=group)
        pos = st.getPositions(asNumpy=True).value_in_unit(u.nanometer)
        phi[i] = _dihedral(pos[phi_idx])
        bias[i] = st.getPotentialEnergy().value_in_unit(u.kilojoule_per_mole)

    def df(sel):
        logw = bias[sel] / kT
        w = np.exp(logw - logw.max())
        return float(-kT * np.log(w[phi[sel] > 0].sum() / w[phi[sel] <= 0].sum()))
    quarters = [df(b) for b in np.array_split(np.arange(n), 4)]
    return {"static_ns": static_ns, "static_frames": n, "static_seconds": time.time() - t0,
            "delta_f_static": df(np.arange(n)), "delta_f_static_quarters": quarters,
            "static_phi_positive": float(np.mean(phi > 0))}


def _dihedral(p: np.ndarray) -> float:
    """The dihedral angle of four points, radians in (−π, π]."""
    b0, b1, b2 = p[0] - p[1], p[2] - p[1], p[3] - p[2]
    b1 = b1 / np.linalg.norm(b1)
    v, w = b0 - np.dot(b0, b1) * b1, b2 - np.dot(b2, b1) * b1
    return float(np.arctan2(np.dot(np.cross(b1, v), w), np.dot(v, w)))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default=str(ROOT / "configs" / "ala2-paper.yaml"))
    ap.add_argument("--ns", type=float, default=40.0, help="longest run per seed, ns")
    ap.add_argument("--min-ns", type=float, default=20.0)
    ap.add_argument("--every", type=float, default=1.0, help="ns between ΔF estimates")
    ap.add_argument("--window", type=float, default=10.0, help="ns over which ΔF must be stable")
    ap.add_argument("--tol", type=float, default=0.3, help="kJ/mol: ± stability tolerance")
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--bias-factor", type=float, default=6.0)
    ap.add_argument("--height", type=float, default=1.0, help="kJ/mol")
    ap.add_argument("--width", type=float, default=20.0, help="Gaussian width, degrees")
    ap.add_argument("--pace", type=int, default=500, help="steps between Gaussians")
    ap.add_argument("--static-ns", type=float, default=0.0, help="then this long under the frozen bias, ns")
    ap.add_argument("--static-every", type=int, default=250, help="steps between frames of that stage")
    ap.add_argument("--json", default=str(ROOT / "docs" / "measurements" / "ala2-reference.json"))
    args = ap.parse_args()
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    jobs = [(s, args.config, args.ns, args.every, args.window, args.tol, args.min_ns, args.bias_factor,
             args.height, args.width, args.pace, args.static_ns,
             args.static_every) for s in args.seeds]
    with mp.get_context("spawn").Pool(len(jobs)) as pool:
        results = pool.map(run_seed, jobs)
    finals = np.array([r["delta_f"] for r in results])
    sem = float(finals.std(ddof=1) / np.sqrt(len(finals))) if len(finals) > 1 else float("nan")
    spread = max(r["window_spread"] / 2 for r in results)
    fes = np.mean([np.array(r["fes"]) for r in results], axis=0)
    summary = {"method": "OpenMM app.Metadynamics, well-tempered, on (phi, psi), Reference platform",
               "config": str(Path(args.config).relative_to(ROOT)) if Path(args.config).is_relative_to(ROOT)
               else args.config,
               "settings": {k: getattr(args, k) for k in ("ns", "min_ns", "every", "window", "tol", "bias_factor",
                                                          "height", "width", "pace")},
               "states": {"C7eq": {"phi": [-180, 0]}, "C7ax": {"phi": [0, 180]}},
               "delta_f_C7ax_minus_C7eq": float(finals.mean()),
               "error": float(max(sem if np.isfinite(sem) else 0.0, spread)),
               "seeds": [{k: v for k, v in r.items() if k not in ("fes", "phi")} for r in results]}
    if args.static_ns > 0:
        st = np.array([r["delta_f_static"] for r in results])
        summary["delta_f_static"] = float(st.mean())
        summary["delta_f_static_error"] = float(st.std(ddof=1) / np.sqrt(len(st))) if len(st) > 1 else float("nan")
        print(f"under the frozen bias ({args.static_ns:g} ns, exact weights): ΔF = {st.mean():.2f} ± "
              f"{summary['delta_f_static_error']:.2f} kJ/mol (seeds: " + ", ".join(f"{v:.2f}" for v in st) + ")")
    out.write_text(json.dumps(summary, indent=1))
    np.savez(out.with_suffix(".npz"), phi=np.array(results[0]["phi"]), psi=np.array(results[0]["phi"]),
             free_energy=fes - fes.min())
    per_seed = ", ".join(f"{v:.2f}" for v in finals)
    lengths = ", ".join(f"{r['ns']:.0f} ns" for r in results)
    print(f"ΔF(C7ax − C7eq) = {summary['delta_f_C7ax_minus_C7eq']:.2f} ± {summary['error']:.2f} kJ/mol "
          f"(seeds: {per_seed}; {lengths})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
