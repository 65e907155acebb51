#!/usr/bin/env python
"""Cost of the native eABF bias on a GPU as the system and the CV grow (for docs/scaling.md).

Alanine dipeptide in a TIP3P box (PME), padded to reach the wanted size; CVs: a neural CV
(Kabsch + MLP-40-2) on the 8 backbone atoms, and the same kind of CV on K atoms (the
backbone plus water oxygens), standing in for a protein's backbone. Steps/s from
interleaved rounds; every ratio is against unbiased MD on the same platform.

    python scripts/gpu_scaling.py [--paddings 1.0,2.5,4.5] [--cv-atoms 480] [--platform CUDA]
                                  [--strides 2] [--json FILE]

``--strides`` adds, for the backbone CV, the bias at every k-th step only (``bias.stride``,
multiple time stepping, stepped as the MD loop steps): on a GPU it removes the wait for the
callback at k − 1 of every k steps.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT / "tests"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--paddings", default="1.0,2.5,4.5", help="Solvent padding in nm, comma-separated.")
    ap.add_argument("--cv-atoms", type=int, default=480)
    ap.add_argument("--platform", default="CUDA")
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--strides", default="2", help="Comma-separated bias strides above 1 for the backbone CV.")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    from bench import BENCH_REPORT, make_context, parse_strides, time_cases
    strides = parse_strides(ap, args.strides)
    import openmm as mm
    from conftest import ALA2_PDB, random_neural_cv
    from cvflow.bias.native import NativeEABF
    from cvflow.sampler import BIAS_GROUP
    from cvflow.config import SystemConfig
    from cvflow.fastcv import load_cv
    from cvflow.fes import Grid
    from cvflow.system import build_system
    from script_exit import scratch_dir
    tmp = scratch_dir("cvflow-gpu-")
    rows = []
    for pad in (float(p) for p in args.paddings.split(",")):
        bundle = build_system(SystemConfig(pdb=ALA2_PDB, solvent="explicit", padding=f"{pad} nm"), "backbone")
        top = bundle.mdtraj_topology()
        waters = top.select("water and name O")
        big = np.concatenate([bundle.feature_atoms, waters[: max(0, args.cv_atoms - len(bundle.feature_atoms))]])
        cases = []
        try:
            ctx, integ = make_context(bundle.system, bundle.positions, args.platform, 1)
        except mm.OpenMMException as e:  # e.g. a box smaller than twice the cutoff
            print(f"gpu_scaling.py: --paddings {pad:g} nm ({bundle.n_atoms} atoms): {str(e).splitlines()[0]}",
                  file=sys.stderr)
            return 2
        cases.append({"row": {"atoms": bundle.n_atoms, "padding_nm": pad, "cv_atoms": 0}, "ctx": ctx,
                      "integ": integ, "steps": args.steps})
        for sel, stride in [(bundle.feature_atoms, 1), (big, 1)] + [(bundle.feature_atoms, k) for k in strides]:
            path = random_neural_cv(tmp / f"cv-{pad}-{len(sel)}.pt", bundle, atoms_sel=np.sort(sel))
            cv = load_cv(path, bundle.n_atoms)
            bias = NativeEABF(cv, Grid([-1.0, -1.0], [1.0, 1.0], [40, 40]), kappa=1000.0, mass=10.0, friction=1.0,
                              temperature=300.0, timestep=0.002, fullsamples=100, seed=1,
                              report_interval=BENCH_REPORT, stride=stride)
            system = mm.XmlSerializer.deserialize(mm.XmlSerializer.serialize(bundle.system))
            force = bias.make_force()
            force.setForceGroup(BIAS_GROUP)  # as in the MD loop
            system.addForce(force)
            ctx, integ = make_context(system, bundle.positions, args.platform, 1)
            cases.append({"row": {"atoms": bundle.n_atoms, "padding_nm": pad, "cv_atoms": len(sel), "stride": stride},
                          "ctx": ctx, "integ": integ, "steps": args.steps, "stride": stride})
        rates = time_cases(cases, args.rounds)
        for r, c in zip(rates, cases):
            rows.append({**c["row"], "platform": args.platform, "steps_per_s": r, "ratio": r / rates[0],
                         "us_per_step": 1e6 / r})
        del cases
        if args.json:  # after each size, so that a run stopped at its time limit keeps what it measured
            Path(args.json).write_text(json.dumps(rows, indent=1))
    print(f"{'atoms':>8} {'CV atoms':>9} {'stride':>6} {'steps/s':>9} {'us/step':>8} {'ratio':>6}")
    for r in rows:
        print(f"{r['atoms']:>8} {r['cv_atoms'] or '-':>9} {r.get('stride') or '-':>6} {r['steps_per_s']:>9,.0f} "
              f"{r['us_per_step']:>8.1f} {r['ratio']:>6.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
