#!/usr/bin/env python
"""What `convergence.confirm` would have said about finished runs: train one more iteration on
each run's production eABF frames and check it against the final CV.

    python scripts/confirm_probe.py RUN_DIR[=CONFIG] ... --work DIR [--json OUT]

The production's eABF stage (``production/md``) is MD biased on the final CV from the last
iteration's last frame: what the confirming iteration's MD is, with another random seed. For
each run, a scratch copy in ``--work`` (hard links, the run itself untouched) gets that stage
as iteration n+1's ``md``, and cvflow's own training and check run on it (pooled and
warm-started as the run's config says, bootstrap included). The row says whether that
iteration would confirm the stop: threshold not floored and regscore ≥
``convergence.bootstrap.min_threshold``; also whether it would have passed its own
threshold, which near convergence is a coin flip. CONFIG defaults to the run's
``config.resolved.yaml``.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path


def probe(run: Path, config: Path | None, work: Path) -> dict:
    import yaml
    from cvflow.config import Config
    from cvflow.workflow import Workflow, iteration_dir
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    summary = json.loads((run / "summary.json").read_text())
    n = summary["convergence"]["iterations"] - 1
    for k in range(n + 1):
        subprocess.run(["cp", "-al", str(run / f"iter_{k:03d}"), str(work / f"iter_{k:03d}")], check=True)
    (work / f"iter_{n + 1:03d}").mkdir()
    subprocess.run(["cp", "-al", str(run / "production" / "md"), str(work / f"iter_{n + 1:03d}" / "md")], check=True)
    for f in ("manifest.json", "config.resolved.yaml"):
        shutil.copy(run / f, work / f)
    raw = yaml.safe_load((config or run / "config.resolved.yaml").read_text())
    cfg = Config.model_validate(raw["config"] if config is None else raw)
    stages = json.loads((run / "manifest.json").read_text())["stages"]
    wf = Workflow(cfg, work)
    prev = stages[f"iter_{n:03d}/train"]
    md_info = {**stages["production/md"], "biased": True, "cv_used": str(work / prev["cv"])}
    i = n + 1
    t0 = time.perf_counter()
    tr = wf._train(i, iteration_dir(work, i), prev, md_info)
    ck = wf._check(i, iteration_dir(work, i), prev, tr)
    floor = cfg.convergence.bootstrap.min_threshold
    return {"run": str(run), "last_iteration": n, "regscore": ck["regscore"], "threshold": ck["threshold"],
            "bootstrap_quantile": ck["bootstrap_quantile"], "floored": ck["threshold_floored"],
            "would_pass": bool(ck["regscore"] >= ck["threshold"] and not ck["threshold_floored"]),
            "would_confirm": bool(not ck["threshold_floored"] and ck["regscore"] >= floor), "floor": floor,
            "seconds": time.perf_counter() - t0}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", help="RUN_DIR or RUN_DIR=CONFIG")
    ap.add_argument("--work", required=True, type=Path, help="scratch directory for the copies")
    ap.add_argument("--json", type=Path, default=None, help="append one JSON line per run")
    args = ap.parse_args()
    for spec in args.runs:
        run, _, config = spec.partition("=")
        row = probe(Path(run), Path(config) if config else None, args.work / Path(run).name)
        print(f"{run}: iteration {row['last_iteration'] + 1} on the production frames: regscore "
              f"{row['regscore']:.4f} vs threshold {row['threshold']:.4f}"
              + (" (floored)" if row["floored"] else "")
              + f"; would {'confirm' if row['would_confirm'] else 'refute'} the stop"
              + f" ({'would' if row['would_pass'] else 'would not'} pass its own threshold)", flush=True)
        if args.json:
            with args.json.open("a") as fh:
                fh.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
