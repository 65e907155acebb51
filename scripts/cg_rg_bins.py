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

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cg_reweight_trial import BINS, cg_samples, flat_bin, iteration0, parse_args, phi_psi, report, rg  # noqa: E402


def main() -> int:
    args = parse_args(__doc__)
    frames, w = iteration0(args.run)
    fb, n = flat_bin(*phi_psi(frames)), BINS * BINS
    count = np.bincount(fb, minlength=n)
    p_frames = np.bincount(fb, weights=w, minlength=n) / w.sum()
    rg_frames = np.bincount(fb, weights=rg(frames), minlength=n) / np.maximum(count, 1)
    reached = count > 0
    rows = []
    for d in map(Path, args.cg_dirs):
        s = cg_samples(d)
        sb, srg = flat_bin(*phi_psi(s)), rg(s)
        sc = np.bincount(sb, minlength=n)
        p_model = sc / sc.sum()
        rg_model = np.bincount(sb, weights=srg, minlength=n) / np.maximum(sc, 1)
        rows.append({"cg_dir": str(d), "rg_model_nm": float(srg.mean()),
                     "rg_frames_nm": float((p_frames * rg_frames)[reached].sum()),
                     "within_bins_nm": float((p_model * (rg_model - rg_frames))[reached].sum()),
                     "between_bins_nm": float(((p_model - p_frames) * rg_frames)[reached].sum()),
                     "model_outside_reached_bins": float(p_model[~reached].sum())})
    return report(rows, args.jsonl)


if __name__ == "__main__":
    from script_exit import run_main
    run_main(main, __file__)
