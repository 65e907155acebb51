#!/usr/bin/env python
"""The alanine-dipeptide reference from every seed of scripts/ala2_reference.py that ran a
frozen-bias stage (``--static-ns``), and the shipped protocol's ΔF against it.

Each such seed gives two estimates of ΔF(C7ax − C7eq) from the same well-tempered
metadynamics: one read from the bias surface (``delta_f``: F = −γ/(γ−1) V, smoothed by
the hills), and one from the frames of the stage that follows with that bias frozen
(``delta_f_static``: exact weights e^{βV} read from OpenMM's own bias force, no surface).
This script gives the mean ± standard error of each over the seeds, their paired
difference, and each seed of ``--runs`` (scripts/ala2_paper.py's JSON) against both.

    python scripts/ala2_reference_combine.py \
        --references docs/measurements/ala2-reference-static.json docs/measurements/ala2-reference-static-seeds3-6.json \
        --runs docs/measurements/ala2-paper-pooled-warm-cpu-vm.json docs/measurements/ala2-paper-pooled-warm-seeds5-6-cpu-vm.json --json docs/measurements/ala2-reference-combined.json
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def mean_se(v) -> tuple[float, float]:
    v = np.asarray(v, float)
    return float(v.mean()), float(v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else float("nan")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--references", type=Path, nargs="+", required=True)
    ap.add_argument("--runs", type=Path, nargs="*", default=[])
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    def read(path: Path, key: str) -> dict:
        try:
            data = json.loads(path.read_text())
            data[key]
            return data
        except (OSError, ValueError, KeyError, TypeError) as e:
            print(f"error: {path}: not a JSON file with '{key}' ({type(e).__name__})", file=sys.stderr)
            sys.exit(2)

    seeds = []
    for path in args.references:
        for s in read(path, "seeds")["seeds"]:
            if "delta_f_static" in s:
                seeds.append({"file": str(path), "seed": s["seed"], "metadynamics_ns": s["ns"],
                              "static_ns": s["static_ns"], "surface": s["delta_f"], "exact": s["delta_f_static"]})
    if not seeds:
        print("error: no seed in --references has a frozen-bias stage (delta_f_static)", file=sys.stderr)
        return 2
    if len({s["seed"] for s in seeds}) != len(seeds):
        print("error: a seed appears twice in --references", file=sys.stderr)
        return 2
    surface = mean_se([s["surface"] for s in seeds])
    exact = mean_se([s["exact"] for s in seeds])
    diff = mean_se([s["exact"] - s["surface"] for s in seeds])
    out = {"seeds": seeds, "surface": {"delta_f": surface[0], "error": surface[1]},
           "exact": {"delta_f": exact[0], "error": exact[1]},
           "exact_minus_surface": {"mean": diff[0], "error": diff[1]}, "runs": []}
    lines = [f"{len(seeds)} seeds: bias surface {surface[0]:.2f} ± {surface[1]:.2f}, frozen bias (exact weights) "
             f"{exact[0]:.2f} ± {exact[1]:.2f}, paired difference {diff[0]:+.2f} ± {diff[1]:.2f} kJ/mol"]
    for path in args.runs:
        for r in read(path, "seeds")["seeds"]:
            if r.get("delta_f") is None:
                continue
            row = {"file": str(path), "seed": r["seed"], "delta_f": r["delta_f"], "error": r.get("delta_f_error"),
                   "minus_surface": r["delta_f"] - surface[0], "minus_exact": r["delta_f"] - exact[0]}
            out["runs"].append(row)
            lines.append(f"{path.name} seed {r['seed']}: {r['delta_f']:.2f} ± {row['error']:.2f}; "
                         f"{row['minus_surface']:+.2f} from the surface reference, "
                         f"{row['minus_exact']:+.2f} from the exact one")
    if args.json:  # written before anything is printed: a closed pipe cannot lose it
        args.json.write_text(json.dumps(out, indent=1) + "\n")
    try:
        print("\n".join(lines))
    except BrokenPipeError:  # e.g. | head
        sys.stderr.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
