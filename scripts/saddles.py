#!/usr/bin/env python
"""Issue 19, saddles: the Müller–Brown loop (configs/muller-brown.yaml) over seeds, with and
without transition-state frames, and the distance from the final decoded curve to each
saddle point (tests/toy_checks.py: saddle_checks). The table goes to --json.

    python scripts/saddles.py --seeds 1 2 3 4 5 --jobs 2 --work /tmp/saddles \
        --json docs/measurements/muller-brown-saddles.json
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from toy_checks import MB_CONFIG, MB_SADDLES, run_pool, run_toy, saddle_checks, write_measurement  # noqa: E402

TEMPERATURE_K = float(yaml.safe_load(MB_CONFIG.read_text())["md"]["temperature"].split()[0])


def one(seed: int, augmented: bool, work: Path, sets: dict) -> dict:
    name = f"{'ts' if augmented else 'plain'}-s{seed}"
    over = {"seed": seed, "model": {} if augmented else {"transition_states": None}}
    for sec, vals in sets.items():
        over.setdefault(sec, {}).update(vals) if isinstance(vals, dict) else over.__setitem__(sec, vals)
    secs = run_toy(MB_CONFIG, work / name, over)
    r = {"name": name, "seed": seed, "transition_states": augmented, "run_seconds": round(secs, 1)}
    r.update(saddle_checks(work / name, TEMPERATURE_K))
    r["within_0.05_of_both"] = bool(max(r["saddle_distance"]) <= 0.05)
    print(json.dumps(r), flush=True)
    return r


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    ap.add_argument("--arms", nargs="+", default=["ts", "plain"], choices=["ts", "plain"])
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--work", type=Path, default=Path("/tmp/saddles"))
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--set", dest="sets", default="{}", help="YAML mapping of config overrides")
    args = ap.parse_args()
    sets = yaml.safe_load(args.sets) or {}
    jobs = [(s, arm == "ts") for arm in args.arms for s in args.seeds]
    rows = run_pool(one, jobs, args.jobs, args.work, sets)
    summary = {}
    for arm in args.arms:
        rs = [r for r in rows if r["transition_states"] == (arm == "ts")]
        summary["with transition states" if arm == "ts" else "without"] = {
            "runs": len(rs), "converged": sum(r["converged"] for r in rs),
            "distance_to_saddle_1": [r["saddle_distance"][0] for r in rs],
            "distance_to_saddle_2": [r["saddle_distance"][1] for r in rs],
            "within_0.05_of_both": sum(r["within_0.05_of_both"] for r in rs)}
    out = {"config": str(MB_CONFIG.relative_to(ROOT)), "saddles_nm": MB_SADDLES.tolist(),
           "temperature_K": TEMPERATURE_K, "overrides": sets, "summary": summary, "runs": rows}
    write_measurement(args.json, out, summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
