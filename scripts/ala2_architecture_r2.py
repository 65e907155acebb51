#!/usr/bin/env python
"""Does any training knob bring the learned CV of alanine dipeptide to a linear R² of 0.95
onto (cos φ, sin φ, cos ψ, sin ψ)? (issue 18's R² target)

    python scripts/ala2_architecture_r2.py RUN_DIR '{}' '{"hidden": [20]}' ...

Each argument is a JSON update of configs/ala2-paper.yaml's ``model``. For each, one
network is trained (seed 7, from a random start) on the pooled frames of all iterations of
a finished run (each iteration's weights scaled by its Kish ESS, as
``model.training_data: pooled``), and scored on every 4th frame of the run's production
(the frozen stage where there is one): the linear R² per CV output (the measure of
``scripts/ala2_paper.py``), the k-NN R², the CV's range and the best validation loss.
"""
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))


def main() -> int:
    import mdtraj as md
    import torch
    torch.set_num_threads(1)
    from ala2_paper import knn_r2
    from ala2_training_pooling import iterations
    from cvflow.config import load_config
    from cvflow.convergence import regscores
    from cvflow.cvs import ramachandran_features
    from cvflow.dataset import effective_sample_size, make_features
    from cvflow.features import featurize
    from cvflow.sampler import load_frames
    from cvflow.system import build_system
    from cvflow.train import encode, train_model
    from cvflow.workflow import production_md_dir
    run, variants = Path(sys.argv[1]), sys.argv[2:]
    cfg = load_config(ROOT / "configs" / "ala2-paper.yaml")
    bundle = build_system(cfg.system, cfg.features.atoms)
    feats = make_features(bundle, cfg.features)
    xs, ws = [], []
    for _, x, w, _ in iterations(run):
        xs.append(x)
        ws.append(w * effective_sample_size(w))
    x_all, w_all = np.concatenate(xs), np.concatenate(ws)
    frames = load_frames(production_md_dir(run), bundle)[::4]
    px = featurize(frames, feats)
    rama = ramachandran_features(md.Trajectory(frames, bundle.mdtraj_topology()))
    for v in variants:
        t0 = time.perf_counter()
        res = train_model(x_all, w_all / w_all.sum(), cfg.model.model_copy(update=json.loads(v)), seed=7)
        z = encode(res, px)
        print(json.dumps({"model": json.loads(v), "r2_per_output": regscores(rama, z).round(3).tolist(),
                          "r2_knn": round(knn_r2(z, rama), 3), "cv_min": z.min(0).round(2).tolist(),
                          "cv_max": z.max(0).round(2).tolist(), "best_val_loss": res.best_val,
                          "seconds": round(time.perf_counter() - t0)}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
