#!/usr/bin/env python
"""Issue 18's R² target under the measures it could mean, on finished ``scripts/ala2_paper.py``
runs: the linear R² of each CV output fitted on (cos φ, sin φ, cos ψ, sin ψ) on the frozen
production frames, counting the frames (the measure of ``scripts/ala2_paper.py``) or weighted
by the frozen stage's exact Boltzmann weights; the reverse fit (each of the four on the CV);
and (φ, ψ) themselves under the weighted measure.

    python scripts/ala2_r2_measures.py RUN_DIR ... --json docs/measurements/ala2-r2-measures-cpu-vm.json
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
KB = 0.00831446261815324


def measures(out: Path, cfg, bundle) -> dict:
    import mdtraj as md
    from cvflow.convergence import regscores
    from cvflow.cvs import ramachandran_features
    from cvflow.dataset import stage_log_weights
    from cvflow.sampler import load_frames
    from cvflow.workflow import cv_values, production_md_dir
    s = json.loads((out / "summary.json").read_text())
    d = production_md_dir(out)
    frames = load_frames(d, bundle)
    t = md.Trajectory(frames, bundle.mdtraj_topology())
    x = ramachandran_features(t)
    xi = cv_values(out / s["final_cv"], frames)
    logw, _ = stage_log_weights(d, 1.0 / (KB * cfg.md.temperature))
    w = np.exp(logw - logw.max())
    pp = np.column_stack([md.compute_phi(t)[1][:, 0], md.compute_psi(t)[1][:, 0]])
    r = lambda a: [round(float(v), 3) for v in a]  # noqa: E731
    return {"run": str(out), "frames": len(frames),
            "cv_on_trig_counted": r(regscores(x, xi)), "cv_on_trig_boltzmann": r(regscores(x, xi, w)),
            "trig_on_cv_counted": r(regscores(xi, x)), "trig_on_cv_boltzmann": r(regscores(xi, x, w)),
            "phi_psi_on_trig_boltzmann": r(regscores(x, pp, w))}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", type=Path, nargs="+")
    ap.add_argument("--config", default=str(ROOT / "configs" / "ala2-paper.yaml"))
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    from cvflow.config import load_config
    from cvflow.system import build_system
    for run in args.runs:
        if not (run / "summary.json").exists():
            raise SystemExit(f"error: {run}/summary.json not found: not a finished run")
    cfg = load_config(args.config)
    bundle = build_system(cfg.system, cfg.features.atoms)
    rows = [measures(run, cfg, bundle) for run in args.runs]
    if args.json:
        args.json.write_text(json.dumps({"measure": "R² per output, weakest decides the target", "runs": rows}, indent=1))
    for row in rows:
        print(json.dumps(row))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from script_exit import run_main
    run_main(main, __file__)
