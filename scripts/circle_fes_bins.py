#!/usr/bin/env python
"""Bin by bin, the production free energy of a finished circle run (configs/circle-two-channels.yaml,
as scripts/two_channels.py runs it) against quadrature along its final CV: CZAR (fes.csv) and
the reweighted histogram (fes_reweighted.csv), each shifted by the constant that minimises its
RMS over the bins where the exact F ≤ 5 kT (as the two-channel check does), in kT.

    python scripts/circle_fes_bins.py RUN_DIR BARRIER_KT [RUN_DIR BARRIER_KT ...] > out.log
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from toy_checks import KB, circle_potential, exact_along, production_fes, toy_cv  # noqa: E402

BARRIER_KJ = 2.0


def main() -> int:
    from cvflow.fes import read_fes
    args = sys.argv[1:]
    if not args or len(args) % 2:
        raise SystemExit("usage: circle_fes_bins.py RUN_DIR BARRIER_KT [RUN_DIR BARRIER_KT ...]")
    for run, barrier in zip(args[::2], args[1::2]):
        run = Path(run)
        if not (run / "summary.json").exists():
            raise SystemExit(f"error: {run}/summary.json not found: not a finished run")
        s = json.loads((run / "summary.json").read_text())
        beta = float(barrier) / BARRIER_KJ
        cv = toy_cv(run / s["final_cv"])
        c, f_czar, edges = production_fes(run, s)
        _, f_hist, _ = read_fes(run / s["final_fes_reweighted"])
        exact = exact_along(circle_potential, (-1.8, 1.8, -1.8, 1.8), cv, edges, beta) * beta
        low = np.isfinite(exact) & (exact <= 5)
        print(f"# {run} ({barrier} kT barrier): xi, exact F, CZAR − exact, histogram − exact (kT)")
        dev = {}
        for name, f in (("czar", f_czar * beta), ("histogram", f_hist * beta)):
            m = low & np.isfinite(f)
            d = f - exact
            dev[name] = np.where(m, d - d[m].mean(), np.nan)
            print(f"# {name}: RMS {np.sqrt(np.nanmean(dev[name][m] ** 2)):.3f} kT over {m.sum()} bins, "
                  f"largest {np.nanmax(np.abs(dev[name][m])):.2f} kT")
        for i in np.where(low)[0]:
            print(f"{c[i]:8.3f} {exact[i]:6.2f} {dev['czar'][i]:7.2f} {dev['histogram'][i]:7.2f}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from script_exit import run_main
    run_main(main, __file__)
