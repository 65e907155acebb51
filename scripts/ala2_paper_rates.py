"""Rates over seeds from several `scripts/ala2_paper.py` JSON files: one markdown row per
seed and the counts #18 asks for (converged within the cap, stopped at the first biased
iteration, ΔF within 1 kJ/mol of the reference).

    python scripts/ala2_paper_rates.py docs/measurements/ala2-paper-session35-*.json

A seed that appears in several files is taken from the last one given.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def fmt(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("files", nargs="+", type=Path)
    ap.add_argument("--tolerance", type=float, default=1.0, help="kJ/mol")
    args = ap.parse_args()
    seeds, ref = {}, None
    for path in args.files:
        d = json.loads(path.read_text())
        ref = d["reference"] if ref is None else ref
        if abs(d["reference"] - ref) > 1e-9:
            raise SystemExit(f"{path}: reference {d['reference']} differs from {ref}")
        for r in d["seeds"]:
            seeds[int(r["seed"])] = (path.name, r)
    print("| seed | iterations (0 counted) | last regscore vs threshold | threshold first reached at | linear / k-NN R², "
          "production | core-region crossings (frozen) | ΔF, kJ/mol | − ref | stage time |")
    print("|---|---|---|---|---|---|---|---|---|")
    within = converged = first = 0
    for seed in sorted(seeds):
        name, r = seeds[seed]
        if not r.get("finished"):
            print(f"| {seed} | did not finish ({r.get('error')}) | | | | | | | |")
            continue
        its = r["iterations"]
        last = its[-1]
        passed_at = next((it["iteration"] for it in its[1:]
                          if it["regscore"] is not None and it["regscore"] >= it["threshold"]
                          and not it.get("floored")), None)
        p = r["production"]
        fz = p.get("frozen") or {}
        df, err = r["delta_f"], r["delta_f_error"]
        dev = None if df is None else df - ref
        converged += bool(r["converged"])
        first += bool(r["converged"] and len(its) == 2)
        within += dev is not None and abs(dev) <= args.tolerance
        err_text = fmt(err, ".2f") if not r.get("delta_f_error_note") else "undetermined"
        refuted = [it["iteration"] for it in its if it.get("confirmation") == "refuted"]
        note = f", stop at {', '.join(str(k - 1) for k in refuted)} refuted" if refuted else ""
        print(f"| {seed} | {len(its)}{'' if r['converged'] else ' (not converged)'}{note} | "
              f"{fmt(last['regscore'], '.4f')} vs {fmt(last['threshold'], '.4f')} | {fmt(passed_at, 'd')} | "
              f"{p['r2_ramachandran']:.3f} / {p['r2_knn']:.3f} | {fz.get('crossings', '-')} | "
              f"{fmt(df, '.2f')} ± {err_text} | {fmt(dev, '+.2f')} | {r['wall_seconds'] / 60:.1f} min |")
    n = len(seeds)
    print(f"\nreference {ref:.2f} kJ/mol; {n} seeds: {converged} converged, {first} of them at the first biased "
          f"iteration; {within} within {args.tolerance:g} kJ/mol")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
