#!/usr/bin/env python
"""Issue 21's reverse-KL target on the double well, over seeds, against quadrature.

For each seed: ``cvflow cg configs/cg-double-well.yaml --no-data`` (no MD; the VAE learns from
the energy alone, tempered from 1e-10 β), then, from cg.json, the predictive distribution's
P(x₁ > 0), mean and standard deviation of x₁ against quadrature, KL(q ‖ p) (log q by
importance sampling with the encoder, 256 draws), the Jensen–Shannon divergence of the x₁
marginal to the exact one, and the wall time. Two seeds run side by side, one thread each.

    python scripts/cg_toys.py [--seeds 1 2 3 4 5] [--set cg.entropy=quadrature ...]
        [--work /tmp/cg-toys] [--json docs/measurements/cg-double-well-cpu-vm.json]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml
from overrides import apply_overrides

ROOT = Path(__file__).resolve().parents[1]
TARGET = {"p_right": (0.0056, 0.0125), "x_mean": (-2.44, 0.05), "x_std": (0.52, 0.05)}


def run_no_data(d: dict, work: Path, name: str) -> tuple[Path, Path]:
    """Write the config ``d`` to WORK/NAME.yaml and run ``cvflow cg --no-data`` into WORK/NAME
    with one thread (resumed if it is there, skipped if it finished). Returns (out, config)."""
    cfg = work / f"{name}.yaml"
    cfg.write_text(yaml.safe_dump(d))
    out = work / name
    if not (out / "cg.json").exists():
        env = dict(os.environ, OMP_NUM_THREADS="1")
        subprocess.run([sys.executable, "-m", "cvflow.cli", "cg", str(cfg), "--no-data", "--out", str(out), "-q"]
                       + (["--resume"] if out.exists() else []), check=True, env=env)
    return out, cfg


def one(seed: int, base: dict, work: Path, label: str) -> dict:
    t0 = time.time()
    out, _ = run_no_data(dict(base, seed=seed), work, f"{label}-seed{seed}")
    info = json.loads((out / "cg.json").read_text())
    ex = info["exact"]
    p = info["states"]["right"]["mean"]
    r = {"seed": seed, "p_right": p, "x_mean": info["observables"]["x"]["mean"],
         "x_std": (info["observables"]["x_squared"]["mean"] - info["observables"]["x"]["mean"] ** 2) ** 0.5,
         "kl_q_to_p_nats": ex["kl_q_to_p_nats"], "js_x_marginal_nats": ex["x_marginal"]["js_nats"],
         "exact": {"p_right": ex["states"]["right"], "x_mean": ex["x_mean"], "x_std": ex["x_std"],
                   "log_z": ex["log_z"]},
         "levels": json.loads((out / "manifest.json").read_text())["stages"]["train"].get("levels"),
         "wall_s": round(time.time() - t0, 1)}
    lo, hi = TARGET["p_right"]
    r["passes"] = bool(lo <= p <= hi and abs(r["x_mean"] - TARGET["x_mean"][0]) <= 0.05
                       and abs(r["x_std"] - TARGET["x_std"][0]) <= 0.05)
    return r


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default=str(ROOT / "configs" / "cg-double-well.yaml"))
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="override a value, e.g. cg.entropy=quadrature or cg.tempering.kl_threshold=0.05")
    ap.add_argument("--label", default="dw")
    ap.add_argument("--work", default="/tmp/cg-toys")
    ap.add_argument("--json", default=str(ROOT / "docs" / "measurements" / "cg-double-well-cpu-vm.json"))
    args = ap.parse_args()
    base = yaml.safe_load(Path(args.config).read_text())
    apply_overrides(base, args.sets)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(2) as pool:
        rows = list(pool.map(lambda s: one(s, base, work, args.label), args.seeds))
    for r in rows:
        print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items() if k != "exact"}))
    summary = {"config": str(Path(args.config).relative_to(ROOT)) if Path(args.config).is_relative_to(ROOT)
               else args.config, "overrides": args.sets, "target": TARGET, "exact": rows[0]["exact"], "runs": rows,
               "passes": f"{sum(r['passes'] for r in rows)} of {len(rows)}"}
    out = Path(args.json)
    runs = json.loads(out.read_text()) if out.exists() else {}
    runs[args.label] = summary
    out.write_text(json.dumps(runs, indent=1))
    print(f"{args.label}: {summary['passes']} seeds pass")
    return 0


if __name__ == "__main__":
    from script_exit import run_main
    run_main(main, __file__)
