#!/usr/bin/env python
"""Would a k-NN regression score stop the loop on alanine dipeptide where the linear one
does not? (issue 18, the stop rule.)

    python scripts/ala2_knn_regscore.py RUN_DIR [RUN_DIR ...] [--json FILE]

For each iteration i ≥ 1 of finished runs of configs/ala2-paper.yaml trained from random
starts on each iteration's own frames (``model.training_data: iteration``, no warm start),
it retrains the iteration's bootstrap networks exactly as the loop did (same subsets, seeds
and settings, from RUN_DIR.yaml beside it, as scripts/ala2_paper.py writes it; the
linear threshold then equals the run's own, which the output checks) and scores, on iteration i's frames,

- the regscore of CV_i on CV_{i−1} and the bootstrap threshold, linear (the paper's, the
  loop's default) and k-NN (``convergence.score: knn``, :func:`cvflow.convergence.knn_regscores`);
- the k-NN R² of (cos φ, sin φ, cos ψ, sin ψ) on CV_i (does the CV determine φ and ψ?).

The frames and CVs are those the run produced, so this asks only what each rule would have
decided on them; where a rule stops earlier, the rest of that run did not happen under it.
"""
from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    from ala2_paper import knn_r2
    from ala2_training_pooling import iterations
    from cvflow import artifacts as art
    from cvflow.config import load_config
    from cvflow.convergence import bootstrap_threshold, pairwise_regscores, regscore
    from cvflow.sampler import derive_seed, load_frames
    from cvflow.system import build_system
    from cvflow.train import bootstrap_member, process_map
    from cvflow.workflow import cv_values
    out = {}
    for run in map(Path, args.runs):
        cfg_path = run.parent / f"{run.name}.yaml"  # the config it ran (ala2_paper.py's seedN.yaml)
        if not cfg_path.exists() or not (run / "iter_001").is_dir():
            raise SystemExit(f"{run}: needs a run directory with iterations and its config {cfg_path.name} "
                             "beside it, as scripts/ala2_paper.py writes them")
        cfg = load_config(cfg_path)
        if cfg.model.training_data != "iteration" or cfg.model.warm_start:
            raise SystemExit(f"{run}: trained pooled or warm-started; this probe replays random-start runs only")
        bs = cfg.convergence.bootstrap
        bundle = build_system(cfg.system, cfg.features.atoms)
        rows = []
        for i, x, w, rama in iterations(run):
            if i == 0:
                continue
            t0 = time.time()
            frames = load_frames(run / f"iter_{i:03d}" / "md", bundle)
            new = cv_values(run / f"iter_{i:03d}" / "cv.pt", frames)
            old = cv_values(run / f"iter_{i - 1:03d}" / "cv.pt", frames)
            train_fn = functools.partial(bootstrap_member, model_cfg=cfg.model, label=f"iteration {i} bootstrap")
            encoders = []

            def keep(fn, *a):  # train once, score both ways
                for enc in fn(*a):
                    encoders.append(enc)
                    yield enc

            rng = np.random.default_rng(derive_seed(cfg.seed, i, 2))
            with process_map(2) as pmap:
                q_lin, s_lin = bootstrap_threshold(train_fn, x, w, bs.repeats, bs.fraction, bs.quantile, rng,
                                                   map_fn=lambda f, *a: keep(pmap, f, *a))
            cvs = [enc(x) for enc in encoders]
            s_knn = pairwise_regscores(cvs, "knn")
            q_knn = float(np.quantile(s_knn, bs.quantile))
            metrics = art.read_json(run / f"iter_{i:03d}" / "metrics.json")
            row = {"iteration": i, "linear": {"regscore": regscore(old, new), "threshold_quantile": q_lin,
                                              "run_threshold_quantile": metrics.get("bootstrap_quantile"),
                                              "pairwise": np.round(s_lin, 4).tolist()},
                   "knn": {"regscore": regscore(old, new, method="knn"), "threshold_quantile": q_knn,
                           "pairwise": np.round(s_knn, 4).tolist()},
                   "knn_r2_ramachandran": knn_r2(new, rama), "seconds": time.time() - t0}
            # the loop's rule: the score reaches a threshold that was not floored
            lin_pass, knn_pass = (bool(q >= bs.min_threshold and row[m]["regscore"] >= q)
                                  for m, q in (("linear", q_lin), ("knn", q_knn)))
            row["linear"]["passes"], row["knn"]["passes"] = lin_pass, knn_pass
            rows.append(row)
            print(f"{run.name} iter {i}: linear {row['linear']['regscore']:.3f} vs {q_lin:.3f} "
                  f"(run: {metrics.get('bootstrap_quantile', float('nan')):.3f}) {'PASS' if lin_pass else '-'}; "
                  f"knn {row['knn']['regscore']:.3f} vs {q_knn:.3f} {'PASS' if knn_pass else '-'}; "
                  f"kNN R² rama {row['knn_r2_ramachandran']:.3f}; {row['seconds']:.0f} s", flush=True)
        out[str(run)] = rows
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
