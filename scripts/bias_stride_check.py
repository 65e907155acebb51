#!/usr/bin/env python
"""Multiple time stepping of the bias (``bias.stride``) on alanine dipeptide: where it stays stable.

    python scripts/bias_stride_check.py --cv systems/alanine-dipeptide/phipsi.pt [--cv RUN/iter_001/cv.pt]
        [--strides 1,2,3,4,5,10] [--ps 200] [--seeds 1 2 3] [--jobs 2] [--json FILE]

For every CV, stride and seed: eABF on the CV with configs/ala2-paper.yaml's settings (κ as
the loop picks it: ``kappa: auto``, bounded by ``max_omega_dt`` at stride × Δt when the CV has
a ``cv_stats.json``; ``report_interval`` 1200 and ``projection_interval`` 2400 steps, multiples
of every stride up to 6, 8 and 10; a torsion CV gets a periodic 40 × 40 grid, a learned CV the loop's grid
from the frames beside it), ``--ps`` picoseconds from the PDB structure, stepped as the MD loop
steps (:func:`cvflow.sampler.advance`). It records the first blow-up (non-finite or runaway
positions, as the MD loop detects them; no recovery here), the kinetic temperature (mean over a
sample every 50 steps after the first 10 ps, from OpenMM's kinetic energy and the system's
degrees of freedom)
with its standard error over 10 blocks, and ξ's spread. Impulse multiple time stepping heats
a system when the time between impulses comes near half the period of a fast vibration
that the CV's gradient couples to (Ferrarotti, Bottaro, Pérez-Villa & Bussi, JCTC 11, 139,
2015); the kinetic temperature shows it before positions run away. cvflow refuses more than
``cvflow.config.MAX_BIAS_IMPULSE_INTERVAL`` (10 fs) between impulses on a molecule; this
script lifts that limit, since it measures where the limit comes from.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))
REPORT, PROJECTION = 1200, 2400  # steps: multiples of every stride from 1 to 6, 8 and 10


def one(cv: str, stride: int, seed: int, ps: float) -> dict:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import openmm as mm
    from openmm import unit as u
    import cvflow.config
    from ala2_frozen_production import paper_setup
    from cvflow.sampler import BIAS_GROUP, FORCE_FIELD_GROUPS, advance, derive_seed, make_bias, runaway_distance
    cvflow.config.MAX_BIAS_IMPULSE_INTERVAL = 1.0  # this script measures where that limit comes from
    cv = Path(cv)
    cfg, bundle, grid = paper_setup(cv, seed, bias={"stride": stride, "projection_interval": PROJECTION},
                                    md={"report_interval": REPORT})
    bias = make_bias(cfg, bundle, cv, grid, derive_seed(seed, 1))
    system = mm.XmlSerializer.deserialize(mm.XmlSerializer.serialize(bundle.system))
    force = bias.make_force()
    force.setForceGroup(BIAS_GROUP)
    system.addForce(force)
    dof = 3 * system.getNumParticles() - system.getNumConstraints()
    dof -= 3 * any(isinstance(f, mm.CMMotionRemover) for f in system.getForces())
    kB = u.MOLAR_GAS_CONSTANT_R.value_in_unit(u.kilojoule_per_mole / u.kelvin)
    md_cfg = cfg.md
    integ = mm.LangevinMiddleIntegrator(md_cfg.temperature * u.kelvin, md_cfg.friction / u.picosecond,
                                        md_cfg.timestep * u.picosecond)
    integ.setRandomNumberSeed(derive_seed(seed, 0))
    ctx = mm.Context(system, integ, mm.Platform.getPlatformByName("Reference"))
    ctx.setPositions(bundle.positions * u.nanometer)
    ctx.setVelocitiesToTemperature(md_cfg.temperature * u.kelvin, derive_seed(seed, 2))
    steps = int(round(ps / md_cfg.timestep))
    every = 50
    runaway = runaway_distance(bundle)
    temps, blowup, step = [], None, 0
    t0 = time.perf_counter()
    while step < steps:
        try:
            advance(integ, step, every, stride)
        except Exception as e:  # noqa: BLE001 - a blow-up inside a force
            blowup = f"{type(e).__name__} near step {step}"
            break
        step += every
        st = ctx.getState(getPositions=True, getEnergy=True, groups=FORCE_FIELD_GROUPS)
        pos = st.getPositions(asNumpy=True).value_in_unit(u.nanometer)
        spread = np.abs(pos - pos.mean(0)).max()
        if bias.error or not np.isfinite(spread) or spread > runaway:
            blowup = bias.error or f"runaway positions at step {step}"
            break
        temps.append(2 * st.getKineticEnergy().value_in_unit(u.kilojoule_per_mole) / (dof * kB))
    wall = time.perf_counter() - t0
    temps = np.asarray(temps)[int(round(10.0 / md_cfg.timestep)) // every:]  # after 10 ps of equilibration
    blocks = np.array([b.mean() for b in np.array_split(temps, 10)]) if len(temps) >= 10 else temps
    xi = bias.take_colvar()[:, 1:1 + bias.dim]
    return {"cv": str(cv), "stride": stride, "seed": seed, "ps": ps, "kappa": bias.kappa,
            "steps_done": step, "blowup": blowup, "t_kin_mean": float(temps.mean()) if len(temps) else None,
            "t_kin_sem": float(blocks.std(ddof=1) / np.sqrt(len(blocks))) if len(blocks) > 1 else None,
            "xi_std": xi.std(0).tolist() if len(xi) > 1 else None, "wall_s": wall}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cv", action="append", required=True)
    ap.add_argument("--strides", default="1,2,3,4,5,10")
    ap.add_argument("--ps", type=float, default=200.0)
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    strides = [int(k) for k in args.strides.split(",")]
    misfits = [k for k in strides if k < 1 or REPORT % k or PROJECTION % k]
    if misfits:
        ap.error(f"--strides {','.join(map(str, misfits))}: each must divide {REPORT} and {PROJECTION} "
                 "(the report and projection intervals of this check)")
    jobs = [(cv, k, s) for cv in args.cv for k in strides for s in args.seeds]
    with ProcessPoolExecutor(args.jobs) as pool:
        rows = list(pool.map(one, *zip(*jobs), [args.ps] * len(jobs)))
    print(f"{'CV':<40} {'stride':>6} {'seed':>4} {'kappa':>8} {'T_kin (K)':>14} {'blow-up'}")
    for r in rows:
        t = "-" if r["t_kin_mean"] is None else f"{r['t_kin_mean']:.1f} ± {r['t_kin_sem'] or 0:.1f}"
        print(f"{Path(r['cv']).parent.name + '/' + Path(r['cv']).name:<40} {r['stride']:>6} {r['seed']:>4} "
              f"{r['kappa']:>8.4g} {t:>14} {r['blowup'] or '-'}")
    if args.json:
        Path(args.json).write_text(json.dumps({"ps": args.ps, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
