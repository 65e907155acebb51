"""Finished runs' frozen stages side by side: for each run directory, the frozen bias's fill
(``convergence.production_frozen_fill_kT``) and the highest level at which its weighted
basins join (the fill is raised to clear it; for a run recorded before that, found on the
biases as applied), the stage's length, its transitions, ΔF between
the states with its block error and its difference from the reference, the drift check on
the halves, the Kish effective sample size of the exact weights, the share of frames whose
weight is under e⁻²⁰ of the largest (time spent where the ensemble hardly goes), the span of
the frozen biases, and the stage's wall time.

    python scripts/frozen_compare.py RUN_DIR [RUN_DIR ...] [--json FILE]

Made to compare one seed's frozen stage run again with another fill (the stage's seed is
the run's, so the two differ only by the bias; ``scripts/frozen_parts.py`` gives a stage
bias by bias).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
from frozen_parts import _fail, frozen_stage  # noqa: E402
REFERENCE = ROOT / "docs" / "measurements" / "ala2-reference-combined.json"


def reference() -> float:
    """ΔF(C7ax − C7eq) of the metadynamics reference with its bias frozen (exact weights)."""
    return float(json.loads(REFERENCE.read_text())["exact"]["delta_f"])


def compare(run: Path, ref: float) -> dict:
    from cvflow.units import kT
    cfg, logw, _, pots, rec = frozen_stage(run)
    seg = run / "production" / "frozen"
    summary = json.loads((run / "summary.json").read_text())
    states = summary.get("states") or {}
    if not states.get("delta_f"):
        _fail(f"{run}: no ΔF between states in its summary.json (the config names no 'states:' to compare)")
    target = next(iter(states["delta_f"]))
    d = states["delta_f"][target]
    w = np.exp(logw - logw.max())
    w /= w.sum()
    segment = json.loads((seg / "segment.json").read_text())
    kt = kT(cfg.md.temperature)
    fill = float(rec["fill"]) if "fill" in rec else float("nan")  # as set (none before it existed)
    # per freeze: the weighted basins' cut, the level where they join, the fill as applied
    levels = rec["levels"] / kt if "levels" in rec else np.full((len(pots), 3), np.nan)
    if "levels" not in rec:  # recorded before the freeze kept them: from the biases as applied,
        from cvflow.fes import joining_level  # exact where the basins join under the fill
        periodic = np.asarray(rec["periods"]) > 0
        for k, p in enumerate(pots):
            b = np.reshape(p, tuple(rec["bins"]))
            levels[k, :2] = np.array(joining_level(b.max() - b, periodic, kt)) / kt
    top = lambda col: None if np.all(np.isnan(col)) else round(float(np.nanmax(col)), 3)  # noqa: E731
    return {"run": str(run), "fill_kT": None if np.isnan(fill) else round(fill / kt, 6),
            "joins_kT": top(levels[:, 1]), "fill_applied_kT": top(levels[:, 2]),
            "levels_kT_per_freeze": [[None if np.isnan(v) else round(float(v), 4) for v in row] for row in levels],
            "delta_f_of": f"{target} - {states['reference_state']}",
            "ns": segment["steps"] * cfg.md.timestep / 1000.0, "transitions": d.get("transitions"),
            "delta_f": d["value"], "error": d.get("error"), "minus_reference": d["value"] - ref,
            "halves": d.get("halves"), "halves_z": d.get("halves_z"), "halves_weight": states.get("halves_weight"),
            "kish_ess": float(1.0 / np.sum(w ** 2)), "frames": int(len(w)),
            "weightless_share": float(np.mean(logw < logw.max() - 20.0)),
            "bias_span_kJmol": [float(np.ptp(p)) for p in pots], "frozen_biases": int(len(pots)),
            "stage_minutes": segment["wall_seconds"] / 60.0, "converged": summary.get("converged")}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", type=Path, nargs="+")
    ap.add_argument("--json")
    a = ap.parse_args()
    ref = reference()
    rows = [compare(r, ref) for r in a.runs]
    print(f"reference {ref:.2f} kJ/mol")
    print(f"{'run':<40} {'fill':>5} {'joins':>5} {'ns':>6} {'trans':>5} {'ΔF':>14} {'−ref':>6} {'halves_z':>8} "
          f"{'ESS/frames':>11} {'<e-20':>6} {'B span':>9} {'min':>5}")
    for r in rows:
        err = f"{r['error']:.2f}" if r["error"] is not None else "undet."
        z = f"{r['halves_z']:.1f}" if r["halves_z"] is not None else "-"
        print(f"{r['run'][-40:]:<40} {str(r['fill_kT']):>5} {str(r['joins_kT']):>5} {r['ns']:6.1f} {r['transitions']:>5} "
              f"{r['delta_f']:7.2f} ± {err:<5} {r['minus_reference']:+6.2f} {z:>8} "
              f"{r['kish_ess'] / r['frames']:11.3f} {r['weightless_share']:6.3f} {min(r['bias_span_kJmol']):4.0f}-{max(r['bias_span_kJmol']):<4.0f} "
              f"{r['stage_minutes']:5.1f}")
    if a.json:
        Path(a.json).write_text(json.dumps({"reference": ref, "runs": rows}, indent=1))


if __name__ == "__main__":
    main()
