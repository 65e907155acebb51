#!/usr/bin/env python
"""Bin by bin, the production free energy of a finished circle run (configs/circle-two-channels.yaml,
as scripts/two_channels.py runs it) against quadrature along its final CV: CZAR (fes.csv) and
the reweighted histogram (fes_reweighted.csv), each shifted by the constant that minimises its
RMS over the bins where the exact F ≤ 5 kT (as the two-channel check does), in kT.

With ``--decoders``, per bin instead: each decoder's distance from the unit circle (what the
two-channel check bounds by 0.1 nm) beside the radius of the weighted mean of the final
iteration's frames that this decoder reconstructs best in that bin (the conditional mean
that the reconstruction loss makes the decoder approach), and how many frames that is.

    python scripts/circle_fes_bins.py [--decoders] RUN_DIR BARRIER_KT [RUN_DIR BARRIER_KT ...] > out.log
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from toy_checks import KB, circle_potential, exact_along, production_fes, toy_cv, toy_decoder  # noqa: E402

BARRIER_KJ = 2.0


def main() -> int:
    from cvflow.fes import read_fes
    args = sys.argv[1:]
    decoders = "--decoders" in args
    args = [a for a in args if a != "--decoders"]
    if not args or len(args) % 2:
        raise SystemExit("usage: circle_fes_bins.py [--decoders] RUN_DIR BARRIER_KT [RUN_DIR BARRIER_KT ...]")
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
        if decoders:
            decoder_bins(run, s, cv, c, edges, exact, low, barrier)
            continue
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


def decoder_bins(run: Path, s: dict, cv, c, edges, exact, low, barrier) -> None:
    """The ``--decoders`` table of one run (see the module's docstring)."""
    from cvflow.config import load_config
    from cvflow.sampler import load_frames
    from cvflow.system import build_system
    it = run / Path(s["final_cv"]).parent
    cfg = load_config(run / "config.resolved.yaml")
    x = load_frames(it / "md", build_system(cfg.system))[:, 0, :2]  # the toy's one particle: (x, y)
    w = np.load(it / "weights.npy")
    z = cv(x)
    dec = toy_decoder(it / "decoder.pt")
    best = ((dec(z) - x[:, None, :]) ** 2).sum(-1).argmin(1)
    curves = dec(c)
    b = np.clip(np.digitize(z, edges) - 1, 0, len(c) - 1)
    k_all = curves.shape[1]
    print(f"# {run} ({barrier} kT barrier, {it.name}): xi, exact F (kT), then per decoder: its |d(xi)| − 1, "
          "the |weighted mean| − 1 of the frames it reconstructs best in the bin (nm), their number")
    for i in np.where(low)[0]:
        cols = []
        for k in range(k_all):
            m = (b == i) & (best == k)
            mean = np.linalg.norm((w[m, None] * x[m]).sum(0) / w[m].sum()) - 1 if w[m].sum() > 0 else np.nan
            cols.append(f"{np.linalg.norm(curves[i, k]) - 1:+7.3f} {mean:+7.3f} {int(m.sum()):5d}")
        print(f"{c[i]:8.3f} {exact[i]:6.2f}  " + "   ".join(cols))


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from script_exit import run_main
    run_main(main, __file__)
