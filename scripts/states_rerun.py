"""The production's states of finished runs, recomputed by today's cvflow from the frames
and weights the run saved (``production/weights.npy``), with the run's own config: a check
added to the analysis since (such as the halves' drift) applied to runs made before it.

    python scripts/states_rerun.py RUN_DIR [RUN_DIR ...] [--json FILE]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def rerun(run_dir: Path) -> dict:
    from cvflow import artifacts as art
    from cvflow.config import load_config
    from cvflow.sampler import load_frames
    from cvflow.states import delta_f_text
    from cvflow.workflow import Workflow, production_md_dir
    cfg = load_config(run_dir / "config.resolved.yaml")
    wf = Workflow(cfg, run_dir)
    summary = art.read_json(run_dir / "summary.json")
    md_dir = production_md_dir(run_dir)
    frames = load_frames(md_dir, wf.bundle)
    w = np.load(run_dir / "production" / "weights.npy")
    estimator = summary.get("production_analysis", {}).get("weights_estimator", "frozen")
    xi = wf._cv(run_dir / summary["final_cv"], frames)
    states = wf._states(frames, md_dir, xi, (w, estimator))
    for k, d in states["delta_f"].items():
        print(f"{run_dir}: ΔF({k} − {states['reference_state']}) = {delta_f_text(d)}")
    return {"run": str(run_dir), "states": states}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--json")
    a = ap.parse_args()
    out = [rerun(r) for r in a.runs]
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1, default=float))


if __name__ == "__main__":
    main()
