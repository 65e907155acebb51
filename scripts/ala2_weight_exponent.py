#!/usr/bin/env python
"""Training on tempered weights w^α: does it make the learned CV of alanine dipeptide follow
(φ, ψ) better, or successive CVs agree? (issue 18, R² and convergence).

    python scripts/ala2_weight_exponent.py RUN_DIR [--alphas 1 0.5 0] [--json FILE]

For each biased iteration i of a finished run, the autoencoder of configs/ala2-paper.yaml
is trained afresh on that iteration's frames with the weights w^α (w: the run's
``weights.npy``; α = 1 is the loop's choice, α = 0 no reweighting). Per α it gives the R²
of the CV onto (cos φ, sin φ, cos ψ, sin ψ) on the same frames (the measure of
``scripts/ala2_paper.py``), the regscore of this CV on the previous iteration's CV for the
same α (on iteration i's frames, as the loop compares them), and the Kish ESS of w^α. The
frames stay those the run sampled (biased along the run's own CVs), so this isolates the
training's choice from the sampling.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run")
    ap.add_argument("--alphas", type=float, nargs="+", default=[1.0, 0.5, 0.0])
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    import torch
    torch.set_num_threads(1)
    from ala2_training_pooling import iterations
    from cvflow.config import load_config
    from cvflow.convergence import regscore
    from cvflow.train import encode, train_model
    run = Path(args.run)
    cfg = load_config(ROOT / "configs" / "ala2-paper.yaml")
    prev = {a: None for a in args.alphas}
    rows = []
    for i, x, w, rama in iterations(run):
        if i == 0:  # unbiased: no weights to temper
            continue
        for a in args.alphas:
            wa = w ** a
            wa = wa / wa.sum()
            res = train_model(x, wa, cfg.model, seed=i)
            z = encode(res, x)
            row = {"iteration": i, "alpha": a, "r2_ramachandran": regscore(rama, z),
                   "regscore_previous": None if prev[a] is None else regscore(encode(prev[a], x), z),
                   "ess": float(wa.sum() ** 2 / np.sum(wa * wa))}
            rows.append(row)
            print(json.dumps(row), flush=True)
            prev[a] = res
    for a in args.alphas:
        r = [x for x in rows if x["alpha"] == a]
        rs = [x["regscore_previous"] for x in r if x["regscore_previous"] is not None]
        print(f"alpha {a:g}: R2 {min(x['r2_ramachandran'] for x in r):.3f}-{max(x['r2_ramachandran'] for x in r):.3f}, "
              f"regscore on the previous CV {min(rs):.3f}-{max(rs):.3f}")
    if args.json:
        path = Path(args.json)
        old = json.loads(path.read_text())["runs"] if path.exists() else []
        path.write_text(json.dumps({"runs": old + [{"run": str(run), "rows": rows}]}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
