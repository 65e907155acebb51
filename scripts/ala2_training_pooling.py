#!/usr/bin/env python
"""Pooled and warm-started training: do they make successive learned CVs of alanine
dipeptide agree, and follow (φ, ψ)? (issue 18, convergence and R²).

    python scripts/ala2_training_pooling.py RUN_DIR [--variants fresh pooled warm pooled_warm] [--json FILE]

For each iteration i of a finished run of configs/ala2-paper.yaml, the autoencoder is
trained on that run's frames and weights (the extended-λ weights, as the loop computes them) in up to four ways:

- ``fresh``: on iteration i's frames, from a random start (the loop's choice so far);
- ``pooled``: on the frames of iterations 0..i, each iteration's weights scaled to a share
  proportional to its Kish ESS (so an iteration whose weights sit on few frames counts less);
- ``warm``: on iteration i's frames, starting from the previous iteration's network;
- ``pooled_warm``: both.

Per variant and iteration it gives the R² of the CV onto (cos φ, sin φ, cos ψ, sin ψ)
(linear, as ``scripts/ala2_paper.py``) and the k-NN R², on iteration i's frames, the
regscore of this CV on the same variant's previous CV (on iteration i's frames, as the loop
compares them), and the training time. The frames are those the run sampled, so this
isolates the training's choice from the sampling.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))


def iterations(run: Path):
    """Each iteration of a finished run of configs/ala2-paper.yaml, in order: (i, aligned
    features x, the loop's normalised weights w, (cos φ, sin φ, cos ψ, sin ψ) per frame).
    w is the run's ``weights.npy`` where kept, else recomputed as the loop does (extended
    λ weights; uniform for the unbiased iteration 0)."""
    import mdtraj as md
    from cvflow.config import load_config
    from cvflow.cvs import ramachandran_features
    from cvflow.dataset import make_features, normalised_weights, stage_log_weights
    from cvflow.features import featurize
    from cvflow.sampler import load_frames
    from cvflow.system import build_system
    cfg = load_config(ROOT / "configs" / "ala2-paper.yaml")
    bundle = build_system(cfg.system, cfg.features.atoms)
    feats = make_features(bundle, cfg.features)
    beta = 1.0 / (0.00831446261815324 * cfg.md.temperature)
    i = 0
    while (run / f"iter_{i:03d}" / "cv.pt").exists():
        d = run / f"iter_{i:03d}"
        frames = load_frames(d / "md", bundle)
        x = featurize(frames, feats)
        if (d / "weights.npy").exists():
            w = np.load(d / "weights.npy")
        elif i == 0:  # unbiased
            w = np.full(len(x), 1.0 / len(x))
        else:
            w = normalised_weights(stage_log_weights(d / "md", beta, "extended", divide_by_histogram=False)[0])
        yield i, x, w / w.sum(), ramachandran_features(md.Trajectory(frames, bundle.mdtraj_topology()))
        i += 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run")
    ap.add_argument("--variants", nargs="+", default=["fresh", "pooled", "warm", "pooled_warm"])
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    import torch
    torch.set_num_threads(1)
    from ala2_paper import knn_r2
    from cvflow.config import load_config
    from cvflow.convergence import regscore
    from cvflow.dataset import effective_sample_size
    from cvflow.train import encode, train_model
    run = Path(args.run)
    cfg = load_config(ROOT / "configs" / "ala2-paper.yaml")
    prev = {v: None for v in args.variants}
    xs, ws = [], []
    rows = []
    for i, x, w, rama in iterations(run):
        xs.append(x)
        ws.append(w * effective_sample_size(w))
        for v in args.variants:
            xt, wt = (np.concatenate(xs), np.concatenate(ws)) if v.startswith("pooled") else (x, w)
            t0 = time.perf_counter()
            res = train_model(xt, wt / wt.sum(), cfg.model, seed=i,
                              init=prev[v] if v.endswith("warm") and prev[v] is not None else None)
            z = encode(res, x)
            row = {"iteration": i, "variant": v, "r2_ramachandran": regscore(rama, z), "r2_knn": knn_r2(z, rama),
                   "regscore_previous": None if prev[v] is None else regscore(encode(prev[v], x), z),
                   "frames": len(xt), "epochs": res.epochs_run, "seconds": time.perf_counter() - t0}
            rows.append(row)
            print(json.dumps(row), flush=True)
            prev[v] = res
    for v in args.variants:
        r = [x for x in rows if x["variant"] == v]
        rs = [x["regscore_previous"] for x in r if x["regscore_previous"] is not None]
        print(f"{v}: R2 {' '.join(format(x['r2_ramachandran'], '.2f') for x in r)}; "
              f"kNN {' '.join(format(x['r2_knn'], '.2f') for x in r)}; "
              f"regscore on the previous CV {' '.join(format(x, '.2f') for x in rs)}")
    if args.json:
        Path(args.json).write_text(json.dumps({"run": str(run), "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
