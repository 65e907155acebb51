#!/usr/bin/env python
"""Wall time of 2 eABF walkers of N steps (Dask LocalCluster, 2 worker processes) against
1 walker of 2N steps, in one run; prints the ratio (walkers / single).

    python scripts/walkers_bench.py [--system es|ala2|ala2-implicit] [--steps N]
        [--md-threads N|auto] [--json FILE]

es: the entropic switch on ξ = x (numba path); ala2: alanine dipeptide in vacuum on a
random 2-D neural CV (numba path, Reference platform); ala2-implicit: the same in OBC2
implicit solvent, on OpenMM's CPU platform, whose thread count is the question there
(--md-threads: md.threads for every run; auto leaves it unset, so that cvflow chooses).
The walkers' time includes starting the Dask cluster and the workers' imports; the time of
the walkers' MD alone is printed beside it.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--system", choices=["es", "ala2", "ala2-implicit"], default="es")
    ap.add_argument("--steps", type=int, default=None, help="Steps per walker (es: 1,000,000; ala2: 100,000).")
    ap.add_argument("--md-threads", default="1", help="md.threads (default 1), or auto to leave it unset")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    md_threads = None if args.md_threads == "auto" else int(args.md_threads)
    import yaml
    from conftest import ALA2_PDB, ES_CONFIG, build_ala2, linear_toy_cv, random_neural_cv
    from cvflow.config import config_from_dict
    from cvflow.fes import Grid
    from cvflow.sampler import run_segment
    from cvflow.system import build_system
    from cvflow.walkers import run_walkers
    from script_exit import scratch_dir
    tmp = scratch_dir("cvflow-walkers-")
    if args.system == "es":
        steps = args.steps or 1_000_000
        d = yaml.safe_load(ES_CONFIG.read_text())
        cv = linear_toy_cv(tmp / "x.pt", [[1.0, 0.0]])
        grid = Grid([-2.0], [2.0], [40])
    else:
        steps = args.steps or (100_000 if args.system == "ala2" else 20_000)
        name = "ala2-vacuum.yaml" if args.system == "ala2" else "ala2-implicit.yaml"
        d = yaml.safe_load((ROOT / "configs" / name).read_text())
        d["system"]["pdb"] = str(ALA2_PDB)
        cv = random_neural_cv(tmp / "cv.pt", build_ala2())
        grid = Grid([-1.0, -1.0], [1.0, 1.0], [40, 40])
    d["md"].update(steps=steps, checkpoint_interval=max(steps // 5, 1), threads=md_threads)
    d["execution"] = {"walkers": 2, "workers": 2}
    cfg = config_from_dict(d)
    bundle = build_system(cfg.system, cfg.features.atoms)
    # a few steps first, so that the single run is not charged for compiling the bias kernel
    # (numba caches it on disk, and the walkers' processes load it from there)
    run_segment(cfg, bundle, tmp / "warm-up", 100, 11, cv_path=cv, grid=grid, engine="native")
    t0 = time.perf_counter()
    run_segment(cfg, bundle, tmp / "single", 2 * steps, 11, cv_path=cv, grid=grid, engine="native")
    single = time.perf_counter() - t0
    t0 = time.perf_counter()
    run_walkers(cfg, bundle, tmp / "walkers", steps, 11, cv_path=cv, grid=grid, engine="native")
    walkers = time.perf_counter() - t0
    seg = json.loads((tmp / "walkers" / "segment.json").read_text())
    md_only = max(w["steps"] / w["steps_per_second"] for w in seg["walkers"])
    row = {"system": args.system, "md_threads": args.md_threads, "steps_per_walker": steps,
           "walker_threads": [w.get("md_threads") for w in seg["walkers"]], "single_2N_s": single, "walkers_2xN_s": walkers,
           "walkers_md_only_s": md_only, "ratio": walkers / single, "ratio_md_only": md_only / single,
           "cores": os.cpu_count()}
    print(f"{args.system}: 1 walker x {2 * steps:,} steps {single:.1f} s; 2 walkers x {steps:,} steps "
          f"{walkers:.1f} s (their MD alone {md_only:.1f} s); ratio {walkers / single:.2f} "
          f"(MD alone {md_only / single:.2f}) on {row['cores']} cores")
    if args.json:
        Path(args.json).write_text(json.dumps(row, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
