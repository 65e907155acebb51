#!/usr/bin/env python
"""The alanine-dipeptide loop benchmark: run a config (default configs/ala2-vacuum.yaml) and
report, per iteration, regscore, threshold, the R² of a linear regression of the CV onto
(cos φ, sin φ, cos ψ, sin ψ) on that iteration's frames, and the wall time.

    python scripts/ala2_loop.py [--config configs/ala2-vacuum.yaml] [--out runs/ala2-bench] [--json FILE]

An existing finished run directory is only read (give --out to it); an unfinished one is
resumed.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import mdtraj as md
import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default=str(ROOT / "configs" / "ala2-vacuum.yaml"))
    ap.add_argument("--out", default="runs/ala2-bench")
    ap.add_argument("--json", default=None, help="Also write the table as JSON here.")
    args = ap.parse_args()
    out = Path(args.out)
    t0 = time.time()
    if not (out / "summary.json").exists():
        cmd = [sys.executable, "-m", "cvflow.cli", "run", args.config, "--out", str(out)]
        if out.exists() and any(out.iterdir()):
            cmd.append("--resume")
        subprocess.run(cmd, check=True)
    wall = time.time() - t0
    from cvflow.convergence import regscore
    from cvflow.cvs import ramachandran_features
    from cvflow.config import load_config
    from cvflow.sampler import load_frames
    from cvflow.system import build_system
    from cvflow.workflow import cv_values, production_md_dir
    cfg = load_config(args.config)
    bundle = build_system(cfg.system, cfg.features.atoms)
    s = json.loads((out / "summary.json").read_text())
    rows = []
    stages = [(f"iter_{it['index']:03d}", it) for it in s["iterations"]] + [("production", None)]
    for name, it in stages:
        d = out / name
        seg = d / "md" if it is not None else production_md_dir(out)
        cv = out / (it["cv"] if it is not None else s["final_cv"])
        frames = load_frames(seg, bundle)  # quiet: MDTraj's DCD reader prints from C
        t = md.Trajectory(frames, md.load_topology(str(seg / "topology.pdb")))
        xi = cv_values(cv, frames)
        w = np.load(d / "weights.npy") if (d / "weights.npy").exists() else None
        row = {"stage": name, "frames": t.n_frames,
               "regscore": it.get("regscore") if it else None, "threshold": it.get("threshold") if it else None,
               "r2_ramachandran": regscore(ramachandran_features(t), xi),
               "r2_ramachandran_weighted": regscore(ramachandran_features(t), xi, w) if w is not None else None,
               "wall_seconds": it.get("wall_seconds") if it else s.get("production", {}).get("wall_seconds"),
               "seconds": it.get("seconds") if it else None}
        rows.append(row)
    f = lambda v, p: "-" if v is None else format(v, p)  # noqa: E731
    print(f"{args.config} -> {out}: converged={s['converged']}, {len(s['iterations'])} iterations, "
          f"this call {wall:.0f} s")
    print(f"{'stage':>12} {'frames':>7} {'regscore':>9} {'threshold':>9} {'R2 (cos/sin phi,psi)':>21} "
          f"{'weighted':>9} {'wall (s)':>9}")
    for r in rows:
        print(f"{r['stage']:>12} {r['frames']:>7} {f(r['regscore'], '.4f'):>9} {f(r['threshold'], '.4f'):>9} "
              f"{r['r2_ramachandran']:>21.3f} {f(r['r2_ramachandran_weighted'], '.3f'):>9} "
              f"{f(r['wall_seconds'], '.1f'):>9}")
    parts = [r["seconds"] for r in rows if r["seconds"]]
    if parts:
        print("time per part of each iteration (s): " + "; ".join(
            f"{r['stage']}: " + ", ".join(f"{k} {v:.1f}" for k, v in r["seconds"].items() if v is not None)
            for r in rows if r["seconds"]))
    if args.json:
        Path(args.json).write_text(json.dumps({"config": args.config, "summary": s, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
