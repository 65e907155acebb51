#!/usr/bin/env python
"""Issue 19: how far from the unit circle the best possible decoders of ξ = x lie, on the
two-channel circle (configs/circle-two-channels.yaml), by quadrature.

The reconstruction loss is minimised by the conditional mean, so with two decoders, one
per channel, the best decoder of channel ± at ξ is E[(x, y) | x ∈ bin(ξ), ±y > 0] under
the Boltzmann density. This script evaluates those curves on a 50-bin grid of x and
reports, per temperature, the largest distance from the unit circle where the exact F(x)
is ≤ 5 kT: the quantity that issue 19's two-channel check bounds by 0.1. Since the x
component of such a decoder is x itself, every populated bin with |x| > 1.1 strays by
more than 0.1, whatever the network.

    python scripts/circle_ideal_decoder.py [--out docs/measurements/circle-ideal-decoder.json]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from toy_checks import circle_potential  # noqa: E402

BARRIER_KJ = 2.0  # the path barrier of the potential, kJ/mol


def ideal_stray(barrier_kT: float, n: int = 1201, bins: int = 50) -> dict:
    beta = barrier_kT / BARRIER_KJ
    X, Y = np.meshgrid(np.linspace(-1.8, 1.8, n), np.linspace(-1.8, 1.8, n), indexing="ij")
    v = circle_potential(X, Y)
    w = np.exp(-beta * (v - v.min())).ravel()
    x, y = X.ravel(), Y.ravel()
    edges = np.linspace(-1.8, 1.8, bins + 1)
    idx = np.clip(np.digitize(x, edges) - 1, 0, bins - 1)
    total = np.bincount(idx, w, bins)
    with np.errstate(divide="ignore"):
        f_kT = -np.log(total / total.max())
    out = {}
    for name, side in (("upper", y > 0), ("lower", y < 0)):
        ws = w * side
        W = np.bincount(idx, ws, bins)
        ok = (f_kT <= 5) & (W > 0)
        mx = np.bincount(idx, ws * x, bins)[ok] / W[ok]
        my = np.bincount(idx, ws * y, bins)[ok] / W[ok]
        d = np.abs(np.hypot(mx, my) - 1)
        k = int(d.argmax())
        out[name] = {"max_distance_from_circle": round(float(d.max()), 4),
                     "at_x": round(float(mx[k]), 3), "F_there_kT": round(float(f_kT[ok][k]), 2)}
    centres = 0.5 * (edges[1:] + edges[:-1])
    low = f_kT <= 5
    out["x_range_where_F_le_5kT"] = [round(float(centres[low].min()), 3), round(float(centres[low].max()), 3)]
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--barriers", type=float, nargs="+", default=[2, 4, 8])
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    rows = {f"{b:g} kT": ideal_stray(b) for b in args.barriers}
    for k, r in rows.items():
        print(k, json.dumps(r))
    if args.out:
        args.out.write_text(json.dumps({"what": "best decoders of xi = x (conditional means per channel), "
                                                "their largest distance from the unit circle where F(x) <= 5 kT",
                                        "script": "scripts/circle_ideal_decoder.py", "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from script_exit import run_main
    run_main(main, __file__)
