#!/usr/bin/env python
"""Issue 21: where a ``cvflow cg`` model's Rg differs from its run's, split over (φ, ψ) bins.

    python scripts/cg_rg_bins.py --run RUN_DIR CG_DIR [CG_DIR ...] [--jsonl OUT]

Against all of the run's iteration-0 frames with their reweighting factors, on 36 × 36 bins
of (φ, ψ): the model's mean Rg (its samples, as written: already resampled) minus the
frames' is Σ_b p_model(b) [Rg_model(b) − Rg_frames(b)] (the structures within a bin) plus
Σ_b [p_model(b) − p_frames(b)] Rg_frames(b) (how the weight is shared among bins), over the
bins that the frames reached (Rg_frames(b): the frames' plain mean in the bin).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cg_reweight_trial import BINS, flat_bin, phi_psi  # noqa: E402


def rg(traj) -> np.ndarray:
    c = traj.xyz - traj.xyz.mean(1, keepdims=True)
    return np.sqrt((c ** 2).sum(-1).mean(-1))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("cg_dirs", nargs="+")
    ap.add_argument("--run", required=True)
    ap.add_argument("--jsonl", default=None)
    args = ap.parse_args()
    from cvflow.config import ConfigError
    from cvflow.sampler import read_dcd
    it0 = Path(args.run) / "iter_000"
    if not (it0 / "md" / "traj.dcd").exists() or not (it0 / "weights.npy").exists():
        raise ConfigError(f"--run: {args.run} has no finished iteration 0 (iter_000/md/traj.dcd, iter_000/weights.npy)")
    frames = read_dcd(it0 / "md" / "traj.dcd", it0 / "md" / "topology.pdb")
    w = np.load(it0 / "weights.npy")
    fb, n = flat_bin(*phi_psi(frames)), BINS * BINS
    count = np.bincount(fb, minlength=n)
    p_frames = np.bincount(fb, weights=w, minlength=n) / w.sum()
    rg_frames = np.bincount(fb, weights=rg(frames), minlength=n) / np.maximum(count, 1)
    reached = count > 0
    rows = []
    for d in map(Path, args.cg_dirs):
        if not (d / "samples.dcd").exists():
            raise ConfigError(f"{d}: no samples.dcd (not a finished cvflow cg directory of a molecule)")
        s = read_dcd(d / "samples.dcd", d / "topology.pdb")
        sb, srg = flat_bin(*phi_psi(s)), rg(s)
        sc = np.bincount(sb, minlength=n)
        p_model = sc / sc.sum()
        rg_model = np.bincount(sb, weights=srg, minlength=n) / np.maximum(sc, 1)
        row = {"cg_dir": str(d), "rg_model_nm": float(srg.mean()),
               "rg_frames_nm": float((p_frames * rg_frames)[reached].sum()),
               "within_bins_nm": float((p_model * (rg_model - rg_frames))[reached].sum()),
               "between_bins_nm": float(((p_model - p_frames) * rg_frames)[reached].sum()),
               "model_outside_reached_bins": float(p_model[~reached].sum())}
        rows.append(row)
        print(json.dumps(row))
    if args.jsonl:
        Path(args.jsonl).write_text("".join(json.dumps(r) + "\n" for r in rows))
    return 0


if __name__ == "__main__":
    from script_exit import run_main
    run_main(main, __file__)
