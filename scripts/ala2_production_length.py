#!/usr/bin/env python
"""Does a longer production fix ΔF(C7ax − C7eq)? Re-run the production of finished
paper-protocol runs (scripts/ala2_paper.py) on their final CV, longer.

    python scripts/ala2_production_length.py RUN [RUN ...] --steps 20000000 --out runs/ala2-prodlen
                                             [--jobs 2] [--json docs/measurements/ala2-production-length.json]

Each RUN is copied to OUT/<name> without its production; `cvflow run --resume` then runs
production again with ``convergence.production_steps = --steps`` (same seed, so its first
part is the original production). The table gives ΔF(C7ax − C7eq) with its block-bootstrap
error for the original and the longer production, against the metadynamics reference.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def prepare(run: Path, out: Path, steps: int) -> Path:
    """Copy ``run`` to ``out`` without its production; return the config to resume with."""
    if not out.exists():
        shutil.copytree(run, out, ignore=shutil.ignore_patterns("production", "summary.json", "report",
                                                                "heartbeat.json"))
        man = json.loads((out / "manifest.json").read_text())
        man["stages"] = {k: v for k, v in man["stages"].items() if not k.startswith("production")}
        man["current"] = None
        (out / "manifest.json").write_text(json.dumps(man))
    resolved = yaml.safe_load((out / "config.resolved.yaml").read_text())
    cfg = resolved["config"]
    cfg["convergence"]["production_steps"] = steps
    cfg["output"] = None
    path = out.parent / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def run_one(cfg: Path, out: Path) -> float:
    t0 = time.time()
    if (out / "summary.json").exists():
        return 0.0
    env = dict(os.environ, OMP_NUM_THREADS="1", NUMBA_NUM_THREADS="1", MKL_NUM_THREADS="1")
    with open(out.parent / f"{out.name}.log", "a") as log:
        subprocess.run([sys.executable, "-m", "cvflow.cli", "run", str(cfg), "--out", str(out), "--resume", "-q"],
                       env=env, stdout=log, stderr=subprocess.STDOUT, check=False)
    return time.time() - t0


def main() -> int:
    from cvflow.states import delta_f_text
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--steps", type=int, default=20_000_000)
    ap.add_argument("--out", default="runs/ala2-prodlen")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--json", default=str(ROOT / "docs" / "measurements" / "ala2-production-length.json"))
    args = ap.parse_args()
    ref = json.loads((ROOT / "docs" / "measurements" / "ala2-reference.json").read_text())
    out_root = Path(args.out)
    out_root.mkdir(parents=True, exist_ok=True)
    jobs = []
    for r in args.runs:
        r = Path(r)
        out = out_root / r.name
        jobs.append((r, out, prepare(r, out, args.steps)))
    with ThreadPoolExecutor(args.jobs) as pool:
        walls = list(pool.map(lambda j: run_one(j[2], j[1]), jobs))
    rows = []
    for (r, out, _), wall in zip(jobs, walls):
        old = json.loads((r / "summary.json").read_text())
        new = json.loads((out / "summary.json").read_text()) if (out / "summary.json").exists() else None
        seed = yaml.safe_load((r / "config.resolved.yaml").read_text())["config"]["seed"]
        row = {"run": str(r), "seed": seed,
               "original_steps": old["production"]["steps"],
               "original": old["states"]["delta_f"]["C7ax"] if old.get("states") else None,
               "longer_steps": args.steps,
               "longer": new["states"]["delta_f"]["C7ax"] if new and new.get("states") else None,
               "longer_populations": new["states"]["populations"] if new and new.get("states") else None,
               "wall_seconds": wall}
        rows.append(row)
        fmt = lambda d: "-" if not d else (delta_f_text(d) or "undefined")  # noqa: E731
        print(f"{r.name}: ΔF(C7ax − C7eq) {fmt(row['original'])} after {row['original_steps']:,} steps; "
              f"{fmt(row['longer'])} after {args.steps:,} (reference {ref['delta_f_C7ax_minus_C7eq']:.2f}); "
              f"{wall / 60:.1f} min")
    Path(args.json).write_text(json.dumps({"reference": ref["delta_f_C7ax_minus_C7eq"], "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
