"""How often the drift check of a ΔF between states (cvflow.states: ``halves_z`` over
``DRIFT_Z``) fires on a series whose free energy does not move, and how often it catches one
that does. Two-state telegraph series (exponential stays, C7ax at ``p_ax`` of the frames,
log-normal frame weights); in the second half C7ax's share is multiplied by ``shift``
(1: stationary; 0.5: ΔF moves by kT ln 2; 0.25: by kT ln 4).

    python scripts/drift_check.py [--seeds 200] [--json docs/measurements/drift-check.json]
"""
from __future__ import annotations

import argparse
import json

import numpy as np

from cvflow.states import DRIFT_Z, state_free_energies

KT = 2.494  # kJ/mol at 300 K


def series(seed: int, n: int, transitions: int, p_ax: float, shift: float) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    cycle = n / (transitions / 2)  # frames per C7eq + C7ax stay pair
    s = np.zeros(n, bool)
    i, in_ax = 0, False
    while i < n:
        p = p_ax if i < n // 2 else p_ax * shift
        d = int(rng.exponential(cycle * p if in_ax else cycle * (1 - p))) + 1
        s[i:i + d] = in_ax
        i += d
        in_ax = not in_ax
    return s, np.exp(rng.normal(0.0, 0.5, n))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=200)
    ap.add_argument("--frames", type=int, default=40_000)
    ap.add_argument("--p-ax", type=float, default=0.05)
    ap.add_argument("--json")
    a = ap.parse_args()
    rows = []
    for transitions in (30, 100, 300):
        for shift in (1.0, 0.5, 0.25):
            z = []
            for seed in range(a.seeds):
                ax, w = series(seed, a.frames, transitions, a.p_ax, shift)
                d = state_free_energies({"C7eq": ~ax, "C7ax": ax}, w, KT, seed=seed)["delta_f"]["C7ax"]
                z.append(d.get("halves_z", np.nan))
            z = np.array(z)
            ok = z[np.isfinite(z)]
            row = {"transitions": transitions, "shift": shift, "delta_f_moves_by_kJ_mol": float(-KT * np.log(shift)),
                   "runs": a.seeds, "defined": int(ok.size), "fired": float(np.mean(ok > DRIFT_Z)),
                   "median_z": float(np.median(ok)), "z_99": float(np.quantile(ok, 0.99))}
            rows.append(row)
            print(f"{transitions:>4} transitions, shift {shift:4.2f}: halves_z defined in {ok.size}/{a.seeds}, "
                  f"> {DRIFT_Z:g} in {100 * row['fired']:.1f} %, median {row['median_z']:.2f}", flush=True)
    if a.json:
        with open(a.json, "w") as fh:
            json.dump({"how": __doc__.strip(), "drift_z": DRIFT_Z, "frames": a.frames, "p_ax": a.p_ax,
                       "rows": rows}, fh, indent=1)


if __name__ == "__main__":
    main()
