#!/usr/bin/env python
"""Curl of a finished 2-D eABF stage's ABF estimate, from its ``lambda.npz``.

    python scripts/abf_circulation.py SEGMENT_DIR [SEGMENT_DIR ...] [--fullsamples 100] [--json OUT]

A true mean force is a gradient: its circulation around any loop is zero. For each stage
this gives the circulation (kJ/mol) of the ABF estimate as the bin-wise running means
(ramped over ``fullsamples``) around every 3 × 3 block of bins of λ: the largest |value|,
the sum of |values|, and the signed sum (the circulation around the whole grid). Bins
without samples make a block count as unusable.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def block_circulation(mean: np.ndarray, widths, usable: np.ndarray, block: int = 3) -> np.ndarray:
    """Circulation of a (nx, ny, 2) field around each cell of four bin centres, summed over
    blocks of ``block`` × ``block`` cells (NaN where a cell has an unusable corner)."""
    gx, gy = mean[..., 0], mean[..., 1]
    h0, h1 = widths
    c = (h0 * 0.5 * (gx[:-1, :-1] + gx[1:, :-1]) + h1 * 0.5 * (gy[1:, :-1] + gy[1:, 1:])
         - h0 * 0.5 * (gx[1:, 1:] + gx[:-1, 1:]) - h1 * 0.5 * (gy[:-1, 1:] + gy[:-1, :-1]))
    ok = usable[:-1, :-1] & usable[1:, :-1] & usable[1:, 1:] & usable[:-1, 1:]
    c = np.where(ok, c, np.nan)
    nx, ny = (c.shape[0] // block) * block, (c.shape[1] // block) * block
    return c[:nx, :ny].reshape(nx // block, block, ny // block, block).sum(axis=(1, 3))


def stage(seg: Path, fullsamples: int) -> dict:
    d = np.load(seg / "lambda.npz")
    count = d["count"].astype(float)
    est = -d["sum_coupling"] / np.maximum(count, fullsamples)[..., None]  # the running κ(ξ − λ)
    widths = (d["maxs"] - d["mins"]) / d["bins"]
    blocks = block_circulation(est, widths, count > 0)
    b = blocks[np.isfinite(blocks)]
    return {"stage": str(seg), "blocks": int(b.size), "max_abs_block_circulation": float(np.abs(b).max()),
            "sum_abs_block_circulation": float(np.abs(b).sum()), "signed_total": float(b.sum())}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("segments", nargs="+", type=Path)
    ap.add_argument("--fullsamples", type=int, default=100)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    rows = [stage(s, args.fullsamples) for s in args.segments]
    for r in rows:
        print(json.dumps(r))
    if args.json:
        args.json.write_text(json.dumps({"rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
