#!/usr/bin/env python
"""Two training choices measured on alanine-dipeptide data (issue "Estimator correctness", items 4 and 6).

    python scripts/ala2_training_choices.py RUN_DIR [--iterations 1 2] [--seeds 5]
                                            [--json docs/measurements/ala2-training-choices.json]

For each chosen iteration of a finished run (its frames and weights.npy):

1. ``model.scaling``: ``feature`` (each Cartesian coordinate divided by its own standard
   deviation) against ``global`` (one scale: the loss is the paper's ‖x − x̂‖² on aligned
   coordinates). Over ``--seeds`` training seeds: the Boltzmann-weighted R² of the CV onto
   (cos φ, sin φ, cos ψ, sin ψ), and the per-output regscore between the seeds' CVs.
2. The bootstrap threshold: for subset fractions 0.3, 0.5, 0.8 and 4 or 8 networks, the
   pairwise regscores and their 5% quantile, three bootstrap draws each (to see how much
   the threshold itself varies).
"""
from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run")
    ap.add_argument("--iterations", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--fractions", type=float, nargs="+", default=[0.3, 0.5, 0.8])
    ap.add_argument("--repeats", type=int, nargs="+", default=[4, 8])
    ap.add_argument("--draws", type=int, default=3)
    ap.add_argument("--bootstrap-scaling", default="global", choices=["feature", "global"])
    ap.add_argument("--skip-scaling", action="store_true", help="only the bootstrap part")
    ap.add_argument("--skip-bootstrap", action="store_true", help="only the scaling part")
    ap.add_argument("--json", default=str(ROOT / "docs" / "measurements" / "ala2-training-choices.json"))
    args = ap.parse_args()
    import mdtraj as md
    import torch
    torch.set_num_threads(1)
    from cvflow.convergence import bootstrap_threshold, regscore
    from cvflow.cvs import ramachandran_features
    from cvflow.dataset import make_features
    from cvflow.features import featurize
    from cvflow.sampler import load_frames
    from cvflow.system import build_system
    from cvflow.train import bootstrap_member, encode, train_model
    run = Path(args.run)
    import yaml
    from cvflow.config import config_from_dict
    cfg = config_from_dict(yaml.safe_load((run / "config.resolved.yaml").read_text())["config"])
    bundle = build_system(cfg.system, cfg.features.atoms)
    feats = make_features(bundle, cfg.features)
    out = {"run": str(run), "iterations": []}
    for i in args.iterations:
        d = run / f"iter_{i:03d}"
        frames = load_frames(d / "md", bundle)
        x = featurize(frames, feats)
        w = np.load(d / "weights.npy")
        rama = ramachandran_features(md.Trajectory(frames, bundle.mdtraj_topology()))
        rec = {"iteration": i, "frames": len(x), "scaling": {}, "bootstrap": []}
        for scaling in () if args.skip_scaling else ("feature", "global"):
            mc = cfg.model.model_copy(update={"scaling": scaling, "threads": 1})
            cvs, r2, r2w, t0 = [], [], [], time.time()
            for s in range(args.seeds):
                res = train_model(x, w, mc, seed=1000 + s)
                z = encode(res, x)
                cvs.append(z)
                r2.append(regscore(rama, z))
                r2w.append(regscore(rama, z, w))
            agree = [regscore(a, b) for a, b in itertools.permutations(cvs, 2)]
            rec["scaling"][scaling] = {"r2_ramachandran": r2, "r2_ramachandran_weighted": r2w,
                                       "pairwise_regscores": agree, "seconds": time.time() - t0}
            print(f"iter {i} scaling={scaling}: R² onto (cos/sin φ, ψ) {np.round(r2, 3).tolist()} "
                  f"(weighted {np.round(r2w, 3).tolist()}); pairwise regscore min {min(agree):.3f} "
                  f"median {np.median(agree):.3f}", flush=True)
        mc = cfg.model.model_copy(update={"threads": 1, "scaling": args.bootstrap_scaling})

        def train_fn(xs, ws, seed):
            return bootstrap_member(xs, ws, seed, mc)
        for frac in () if args.skip_bootstrap else args.fractions:
            for reps in args.repeats:
                for draw in range(args.draws):
                    rng = np.random.default_rng([i, int(frac * 100), reps, draw])
                    q, scores = bootstrap_threshold(train_fn, x, w, reps, frac, 0.05, rng)
                    rec["bootstrap"].append({"fraction": frac, "repeats": reps, "draw": draw, "quantile_05": q,
                                             "median": float(np.median(scores)), "scores": scores.tolist()})
                    print(f"iter {i} bootstrap fraction {frac} repeats {reps} draw {draw}: 5% quantile {q:.3f}, "
                          f"median {np.median(scores):.3f}, min {scores.min():.3f}", flush=True)
        out["iterations"].append(rec)
        Path(args.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
