#!/usr/bin/env python
"""The estimator chain on a CV known to be good: eABF on (φ, ψ) of alanine dipeptide with
`cvflow sample`, then the same reweighting that production uses (ŵ ∝ exp(−βF(ξ))/ρ̃(ξ),
cvflow.dataset.log_weights_from_fes) and the same states (C7eq: φ < 0, C7ax: φ > 0).

    python scripts/ala2_phipsi_reweighting.py DIR [DIR ...] [--json docs/measurements/ala2-phipsi-reweighting.json]

Each DIR is a finished `cvflow sample --cv phipsi.pt` run (make it with
`cvflow make-cv torsions ala2.pdb --phi-psi -o phipsi.pt`). If ΔF(C7ax − C7eq) here matches
the metadynamics reference, CZAR, its 2-D integration and the reweighting are right on this
molecule, and an error on a learned CV comes from the CV.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--cv", default=None, help="the CV file (default: DIR/../phipsi.pt)")
    ap.add_argument("--json", default=str(ROOT / "docs" / "measurements" / "ala2-phipsi-reweighting.json"))
    args = ap.parse_args()
    import mdtraj as md
    from cvflow.dataset import log_weights_from_fes, normalised_weights
    from cvflow.states import state_free_energies
    from cvflow.units import kT as kT_of
    from cvflow.workflow import cv_values
    ref = json.loads((ROOT / "docs" / "measurements" / "ala2-reference.json").read_text())
    kT = kT_of(300.0)
    rows = []
    for r in args.runs:
        r = Path(r)
        cv = Path(args.cv) if args.cv else r.parent / "phipsi.pt"
        t = md.load_dcd(str(r / "traj.dcd"), top=str(r / "topology.pdb"))
        phi = md.compute_phi(t)[1][:, 0]
        xi = cv_values(cv, t.xyz.astype(np.float64))
        out = {"run": str(r), "frames": t.n_frames, "phi_positive": float(np.mean(phi > 0))}
        for name, divide in (("exp(-bF)/rho", True), ("exp(-bF)", False)):
            logw, _ = log_weights_from_fes(xi, r / "fes.csv", 1.0 / kT, divide_by_histogram=divide)
            w = normalised_weights(logw)
            res = state_free_energies({"C7eq": phi <= 0, "C7ax": phi > 0}, w, kT)
            out[name] = res["delta_f"]["C7ax"]
        rows.append(out)
        d = out["exp(-bF)/rho"]
        print(f"{r}: ΔF(C7ax − C7eq) = {d['value']:.2f} ± {d['error']:.2f} kJ/mol "
              f"(plain exp(-bF): {out['exp(-bF)']['value']:.2f}); reference "
              f"{ref['delta_f_C7ax_minus_C7eq']:.2f} ± {ref['error']:.2f}")
    Path(args.json).write_text(json.dumps({"reference": ref["delta_f_C7ax_minus_C7eq"], "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
