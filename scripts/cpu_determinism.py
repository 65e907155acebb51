#!/usr/bin/env python
"""Issue 22 (B2): does OpenMM's CPU platform give the same trajectory twice? Alanine
dipeptide in vacuum and in a small water box (PME), Langevin dynamics from the same
positions, velocities and random seed, three fresh Contexts per setting; for each thread
count and ``DeterministicForces`` value, the largest difference of any coordinate after
--steps steps, the largest difference of the nonbonded forces at step 0, and steps/s.

    python scripts/cpu_determinism.py --json docs/measurements/cpu-determinism-cpu-vm.json
"""
from __future__ import annotations

import argparse
import json
import platform as pyplatform
import time
from pathlib import Path

import numpy as np
import openmm as mm
import yaml
from openmm import unit as u

from cvflow.config import load_config
from cvflow.system import build_system

ROOT = Path(__file__).resolve().parents[1]


def bundle(solvent: str, tmp: Path):
    cfg = yaml.safe_load((ROOT / "configs" / "ala2-quick.yaml").read_text())
    cfg["system"]["pdb"] = str(ROOT / "systems" / "alanine-dipeptide" / "ala2.pdb")
    if solvent == "explicit":
        cfg["system"].update(solvent="explicit", padding="0.6 nm", cutoff="0.6 nm")
    path = tmp / f"{solvent}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    c = load_config(path)
    return build_system(c.system, c.features.atoms)


def trial(b, threads: str, det: str, steps: int):
    system = mm.XmlSerializer.deserialize(mm.XmlSerializer.serialize(b.system))
    nb = [i for i in range(system.getNumForces()) if isinstance(system.getForce(i), mm.NonbondedForce)]
    for i in range(system.getNumForces()):
        system.getForce(i).setForceGroup(1 if i in nb else 0)
    integ = mm.LangevinMiddleIntegrator(300 * u.kelvin, 1 / u.picosecond, 0.002 * u.picosecond)
    integ.setRandomNumberSeed(7)
    ctx = mm.Context(system, integ, mm.Platform.getPlatformByName("CPU"),
                     {"Threads": threads, "DeterministicForces": det})
    ctx.setPositions(b.positions * u.nanometer)
    if b.box is not None:
        ctx.setPeriodicBoxVectors(*(b.box * u.nanometer))
    ctx.setVelocitiesToTemperature(300 * u.kelvin, 11)
    f0 = ctx.getState(getForces=True, groups={1}).getForces(asNumpy=True).value_in_unit(u.kilojoule_per_mole / u.nanometer)
    t = time.perf_counter()
    integ.step(steps)
    rate = steps / (time.perf_counter() - t)
    pos = ctx.getState(getPositions=True).getPositions(asNumpy=True).value_in_unit(u.nanometer)
    return np.asarray(f0), np.asarray(pos), rate


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=5000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    import tempfile
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for solvent in ("vacuum", "explicit"):
            b = bundle(solvent, Path(tmp))
            for threads in ("1", "2"):
                for det in ("false", "true"):
                    runs = [trial(b, threads, det, args.steps) for _ in range(args.repeats)]
                    row = dict(system=f"ala2 {solvent}", atoms=b.n_atoms, threads=int(threads),
                               deterministic_forces=det == "true",
                               max_force_difference_kj_mol_nm=max(float(np.abs(r[0] - runs[0][0]).max()) for r in runs[1:]),
                               max_position_difference_nm=max(float(np.abs(r[1] - runs[0][1]).max()) for r in runs[1:]),
                               steps_per_s=[round(r[2]) for r in runs])
                    rows.append(row)
                    print(json.dumps(row))
    if args.json:
        args.json.write_text(json.dumps(dict(
            what="same start, seed and settings, three fresh Contexts each: largest coordinate difference after "
                 f"{args.steps} steps, largest nonbonded-force difference at step 0",
            openmm=mm.__version__, host=pyplatform.node(), steps=args.steps, rows=rows), indent=1) + "\n")
    return 0


if __name__ == "__main__":
    from script_exit import run_main
    run_main(main, __file__)
