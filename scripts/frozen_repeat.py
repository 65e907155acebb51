#!/usr/bin/env python
"""Repeat a finished run's frozen-bias production stage with other seeds or integrator settings.

    python scripts/frozen_repeat.py RUN_DIR --out DIR [--seeds 1 2] [--timestep-fs 1]
                                    [--kappa-factor 0.5] [--steps N] [--jobs 2] [--json FILE]

The frozen stage's ΔF between the config's states has exact weights whatever the CV
resolves (cvflow.dataset), so two repeats of it differ by statistics and by the
integrator's discretisation alone. Each repeat starts where the run's own frozen stage
started (the end of the production's eABF, its bias frozen the same way) and runs as long
in simulated time. With ``--timestep-fs`` the MD step and λ's step change together, with
the report interval scaled so frames stay as far apart in time; ``--kappa-factor`` scales
κ and λ's mass together (ω of λ unchanged, the coupling's ω on the atoms by its square
root). ΔF, its block error and the transitions come from cvflow's own production analysis.
Each repeat is a hard-linked copy of RUN_DIR under ``--out`` (nothing in RUN_DIR changes).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


def repeat(run_dir: Path, out: Path, seed: int, timestep_fs: float | None, kappa_factor: float,
           steps: int | None, pdb: Path | None = None, refreeze: bool = False) -> dict:
    """One repeat in ``out`` (a hard-linked copy of ``run_dir``); returns its ΔF record."""
    import numpy as np
    import yaml
    from cvflow import artifacts as art
    from cvflow.workflow import Workflow, adaptive_production_dir
    if not out.exists():
        shutil.copytree(run_dir, out, copy_function=os.link, ignore=shutil.ignore_patterns("frozen"))
        for name in ("weights.npy", "states.json", "fes_reweighted.csv"):
            (out / "production" / name).unlink(missing_ok=True)
        if refreeze:  # start where the run's frozen stage ended, its statistics included
            shutil.copytree(run_dir / "production" / "frozen", out / "production" / "refrozen_from",
                            copy_function=os.link)
    from cvflow.config import config_from_dict
    cfg_dict = yaml.safe_load((run_dir / "config.resolved.yaml").read_text())["config"]
    if pdb is not None:  # the run's system file moved
        cfg_dict["system"]["pdb"] = str(pdb)
    cfg = config_from_dict(cfg_dict)
    total_ps = art.read_json(run_dir / "production" / "frozen" / "segment.json")["steps"] * cfg.md.timestep
    if timestep_fs is not None:
        scale = cfg.md.timestep / (timestep_fs / 1000.0)
        cfg_dict["md"]["timestep"] = f"{timestep_fs / 1000.0} ps"
        cfg_dict["md"]["report_interval"] = int(round(cfg.md.report_interval * scale))
        cfg_dict["md"]["checkpoint_interval"] = int(round(cfg.md.checkpoint_interval * scale))
    cfg_dict["seed"] = seed
    cfg = config_from_dict(cfg_dict)
    n_steps = steps or int(round(total_ps / cfg.md.timestep))
    wf = Workflow(cfg, out)
    last_train = wf.manifest.get(f"iter_{int(Path(wf.manifest.get('production/md')['cv']).parent.name[5:]):03d}/train")
    prev_md = out / "production" / "refrozen_from" if refreeze else adaptive_production_dir(out)
    # the eABF's final bias state, its λ integrator set for this repeat's time step and κ
    state = dict(np.load(prev_md / "bias_state.npz"))
    prm = state["prm"].copy()
    kappa, mass, dt = prm[0] * kappa_factor, prm[1] * kappa_factor, cfg.md.timestep * cfg.bias.stride
    kT = 1.0 / wf.beta
    a = math.exp(-cfg.bias.friction * dt)
    prm[:5] = [kappa, mass, dt, a, math.sqrt((1 - a * a) * kT / mass)]
    prm[6] = prm[6] * kappa_factor  # the walls scale with κ, as a recovery's softening does
    state["prm"] = prm
    start = out / "production" / "bias_start.npz"
    np.savez(start, **state)
    t0 = time.perf_counter()
    wf._segment(out / "production" / "frozen", n_steps, seed, out / last_train["cv"], wf._grid_for(last_train),
                wf.engine, prev_md, "frozen repeat", bias_start=start, freeze=True)
    wall = time.perf_counter() - t0
    states = wf._analyse_production(last_train)["states"]
    ref = states["reference_state"]
    (k, d), = states["delta_f"].items()
    return {"run": str(run_dir), "seed": seed, "timestep_fs": cfg.md.timestep * 1000, "kappa": kappa,
            "steps": n_steps, "state": k, "reference_state": ref, "delta_f": d["value"], "error": d["error"],
            "error_note": d.get("error_note"), "transitions": d.get("transitions"), "ess": states.get("ess"),
            "wall_seconds": wall}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seeds", type=int, nargs="+", default=[1])
    ap.add_argument("--timestep-fs", type=float)
    ap.add_argument("--kappa-factor", type=float, default=1.0)
    ap.add_argument("--steps", type=int)
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--pdb", type=Path, help="the system's PDB, when the run's has moved")
    ap.add_argument("--refreeze", action="store_true",
                    help="start from the end of the run's frozen stage and freeze the bias again from the "
                         "statistics of the eABF and that stage together")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # a worker: one seed, JSON on stdout
    a = ap.parse_args()
    tag = f"dt{a.timestep_fs or 'run'}-k{a.kappa_factor:g}" + ("-refrozen" if a.refreeze else "")
    if a.one:
        print(json.dumps(repeat(a.run_dir.resolve(), a.out, a.seeds[0], a.timestep_fs, a.kappa_factor, a.steps,
                                a.pdb and a.pdb.resolve(),
                                a.refreeze)))
        return
    env = dict(os.environ, OMP_NUM_THREADS="1", NUMBA_NUM_THREADS="1", MKL_NUM_THREADS="1",
               OPENMM_CPU_THREADS="1")

    def one(seed: int) -> dict:
        cmd = [sys.executable, __file__, str(a.run_dir), "--out", str(a.out / f"{tag}-seed{seed}"),
               "--seeds", str(seed), "--kappa-factor", str(a.kappa_factor), "--one"]
        if a.timestep_fs:
            cmd += ["--timestep-fs", str(a.timestep_fs)]
        if a.steps:
            cmd += ["--steps", str(a.steps)]
        if a.pdb:
            cmd += ["--pdb", str(a.pdb)]
        if a.refreeze:
            cmd.append("--refreeze")
        r = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if r.returncode:
            return {"seed": seed, "failed": r.stderr.strip().splitlines()[-1:]}
        return json.loads(r.stdout.strip().splitlines()[-1])

    a.out.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(a.jobs) as ex:
        rows = list(ex.map(one, a.seeds))
    for r in rows:
        err = "undetermined" if r.get("error") is None else f"{r['error']:.2f}"
        print(f"seed {r['seed']}: " + (f"ΔF {r['delta_f']:.2f} ± {err} kJ/mol, {r['transitions']} transitions, "
                                        f"dt {r['timestep_fs']:g} fs, κ {r['kappa']:.4g}, {r['wall_seconds']:.0f} s"
                                        if "failed" not in r else f"failed: {r['failed']}"))
    if a.json:
        old = json.loads(a.json.read_text()) if a.json.exists() else []
        a.json.write_text(json.dumps(old + rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
