#!/usr/bin/env python
"""Would fresh networks find the CV that a warm-started loop stopped on?

    python scripts/warm_start_probe.py RUN_DIR [RUN_DIR ...] [--repeats 4]

Each RUN_DIR's config is read from RUN_DIR.yaml beside it, as scripts/ala2_paper.py writes.

For a finished run with ``model.warm_start`` (and ``training_data: pooled``), the training
set of its final iteration is rebuilt as the loop built it (its own frames and those of the
earlier biased iterations, weights scaled by Kish ESS), and ``--repeats`` networks are
trained on it from random starts. Printed per run: the pairwise regscores of the fresh
networks (do the data determine a CV?) and the regscore of the run's final CV on each
fresh one (is the warm-started CV one of those the data determine?), on the final
iteration's frames. Both by the paper's linear regscore and by the k-NN one
(``convergence.score: knn``), which does not read a nonlinear re-embedding of the same
coordinates as another CV. A stop rule for warm starts could ask for both (README,
"Pooled, warm-started training").
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--repeats", type=int, default=4)
    args = ap.parse_args()
    import torch
    torch.set_num_threads(1)
    from cvflow.config import load_config
    from cvflow.convergence import pairwise_regscores, regscore
    from cvflow.dataset import effective_sample_size, make_features
    from cvflow.features import featurize
    from cvflow.sampler import load_frames
    from cvflow.system import build_system
    from cvflow.train import encode, train_model
    from cvflow.workflow import cv_values
    for run in map(Path, args.runs):
        cfg = load_config(run.parent / f"{run.name}.yaml")  # the config it ran (ala2_paper.py's seedN.yaml)
        s = json.loads((run / "summary.json").read_text())
        final = int(Path(s["final_cv"]).parent.name.split("_")[1])
        bundle = build_system(cfg.system, cfg.features.atoms)
        feats = make_features(bundle, cfg.features)
        xs, ws = [], []
        for k in range(final + 1):
            d = run / f"iter_{k:03d}"
            biased = json.loads((d / "md" / "segment.json").read_text()).get("engine", "none") != "none"
            if k < final and not biased:
                continue
            frames = load_frames(d / "md", bundle)
            w = np.load(d / "weights.npy")
            xs.append(featurize(frames, feats))
            ws.append(w / w.sum() * effective_sample_size(w))
        x_final = xs[-1]
        w_all = np.concatenate(ws)
        z_run = cv_values(run / s["final_cv"], frames)
        fresh = [encode(train_model(np.concatenate(xs), w_all / w_all.sum(), cfg.model, seed=100 + r), x_final)
                 for r in range(args.repeats)]
        row = {"run": str(run), "final_iteration": final, "converged": s["converged"]}
        for method, tag in (("linear", ""), ("knn", "knn_")):
            pair = pairwise_regscores(fresh, method)
            row.update({f"{tag}fresh_pairwise_min": float(pair.min()), f"{tag}fresh_pairwise_median": float(np.median(pair)),
                        f"{tag}final_cv_on_fresh": [round(regscore(z, z_run, method=method), 4) for z in fresh]})
        print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
