#!/usr/bin/env python
"""Issue 20's alanine-dipeptide target: a Boltzmann generator trained on the frames of a
finished cvflow run (``cvflow generate configs/bg-ala2.yaml --from RUN``), over seeds.

    cvflow run configs/bg-ala2.yaml --out RUN_DIR      (the source run, about 4 minutes)
    python scripts/bg_ala2.py --from RUN_DIR [--seeds 1 2 3] [--work /tmp/bg-ala2]
                              [--json docs/measurements/bg-ala2-cpu-vm.json]

For each seed: ΔF(C7ax − C7eq) from the reweighted flow samples against the metadynamics
reference of scripts/ala2_reference.py (docs/measurements/ala2-reference.json), the ESS per
10⁵ samples, the wall time of training and sampling, the fraction of training time spent in
the OpenMM energy bridge; and, for comparison, the source run's own production ΔF.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--from", dest="source", type=Path, required=True)
    ap.add_argument("--config", type=Path, default=ROOT / "configs" / "bg-ala2.yaml")
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--work", type=Path, default=Path("/tmp/bg-ala2"))
    ap.add_argument("--json", type=Path, default=ROOT / "docs" / "measurements" / "bg-ala2-cpu-vm.json")
    args = ap.parse_args()
    import yaml
    ref = json.loads((ROOT / "docs" / "measurements" / "ala2-reference.json").read_text())
    ref_df, ref_err = ref["delta_f_C7ax_minus_C7eq"], ref["error"]
    summary = json.loads((args.source / "summary.json").read_text())
    src = summary.get("production_analysis", {}).get("states") or {}
    cfg_path = args.config.resolve()
    out = {"script": "scripts/bg_ala2.py",
           "config": str(cfg_path.relative_to(ROOT)) if cfg_path.is_relative_to(ROOT) else str(cfg_path),
           "source_run": str(args.source), "reference_delta_f": ref_df, "reference_error": ref_err,
           "source_production_delta_f": (src.get("delta_f", {}).get("C7ax") or {}).get("value"),
           "source_production_frames": src.get("frames"), "seeds": {}}
    from cvflow.config import dump_config, load_config
    base = dump_config(load_config(args.config))  # every path resolved, so the copies may live anywhere
    for seed in args.seeds:
        work = args.work / f"seed{seed}"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        cfg = dict(base, seed=seed)
        (work / "bg.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "cvflow.cli", "generate", str(work / "bg.yaml"), "--from",
                               str(args.source), "--out", str(work / "gen"), "-q"], capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            out["seeds"][str(seed)] = {"error": proc.stderr.strip().splitlines()[-1:], "wall_s": wall}
            continue
        info = json.loads((work / "gen" / "generate.json").read_text())
        manifest = json.loads((work / "gen" / "manifest.json").read_text())["stages"]
        df = info["states"]["delta_f"]["C7ax"]
        out["seeds"][str(seed)] = {"delta_f": df["value"], "error": df["error"], "deviation": df["value"] - ref_df,
                                   "ess_fraction": info["ess_fraction"], "ess_per_100k": info["ess_per_100k"],
                                   "wall_s": wall, "train_s": info["wall_s"]["training"],
                                   "sample_s": info["wall_s"]["sampling"],
                                   "energy_fraction_of_training": manifest["train"]["energy_fraction_of_training"],
                                   "energy_evaluations": info["energy_evaluations"],
                                   "nonfinite_training_energies": manifest["train"]["nonfinite_energies"]}
        print(seed, json.dumps(out["seeds"][str(seed)]), flush=True)
        args.json.write_text(json.dumps(out, indent=1) + "\n")
    args.json.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
