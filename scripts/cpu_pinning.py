#!/usr/bin/env python
"""Steps per second of unbiased MD on OpenMM's CPU platform with and without ``md.pin``
(the MD's threads on fixed cores), for alanine dipeptide in implicit solvent (22 atoms)
and in a TIP3P box (712 atoms), at ``md.threads`` unset (every core) and 1, in interleaved
rounds within one process, on an otherwise idle machine.

    python scripts/cpu_pinning.py [--rounds 3] [--steps 10000] [--json FILE]

On a VM whose idle cores are slow to wake, OpenMM's threads handing work to each other
across cores cost more than the step itself on a small system; run the script alone, since
a busy second core hides exactly that.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
from script_exit import run_main, scratch_dir  # noqa: E402

SETTINGS = [("threads unset", None, False), ("threads unset, pinned", None, True),
            ("1 thread", 1, False), ("1 thread, pinned", 1, True)]


def rate(solvent: str, threads: int | None, pin: bool, steps: int, work: Path) -> tuple[float, dict]:
    """Steps per second of ``steps`` unbiased steps (after 200 to warm up), and what
    segment.json recorded about threads and cores."""
    from cvflow.config import config_from_dict
    from cvflow.sampler import run_segment
    from cvflow.system import build_system
    d = yaml.safe_load((ROOT / "configs" / "ala2-implicit.yaml").read_text())
    d["system"].update(pdb=str(ROOT / "systems" / "alanine-dipeptide" / "ala2.pdb"), solvent=solvent)
    d["md"].update(steps=steps, checkpoint_interval=steps, platform="CPU", threads=threads, pin=pin, save_atoms="all")
    cfg = config_from_dict(d)
    bundle = build_system(cfg.system, cfg.features.atoms)
    run_segment(cfg, bundle, Path(tempfile.mkdtemp(dir=work)), 200, 3, engine="none")
    t0 = time.perf_counter()
    res = run_segment(cfg, bundle, Path(tempfile.mkdtemp(dir=work)), steps, 3, engine="none")
    return steps / (time.perf_counter() - t0), {"atoms": bundle.n_atoms, "md_threads": res.threads,
                                                "md_cores": res.cores}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=10_000, help="steps per measurement (the box: a fifth)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    work = scratch_dir("cvflow-pinning-")
    rows: dict[str, dict] = {}
    for r in range(args.rounds):
        for solvent in ("implicit", "explicit"):
            steps = args.steps if solvent == "implicit" else max(args.steps // 5, 100)
            for name, threads, pin in SETTINGS:
                v, info = rate(solvent, threads, pin, steps, work)
                row = rows.setdefault(f"{solvent}: {name}", {"solvent": solvent, "threads": threads, "pin": pin,
                                                               "steps_per_second": [], **info})
                row["steps_per_second"].append(round(v, 1))
                print(f"round {r + 1} {solvent} ({info['atoms']} atoms), {name}: {v:,.0f} steps/s "
                      f"(threads {info['md_threads']}, cores {info['md_cores']})", flush=True)
    for row in rows.values():
        row["median"] = sorted(row["steps_per_second"])[len(row["steps_per_second"]) // 2]
    import openmm
    out = {"what": __doc__.split("\n\n")[0], "openmm": openmm.__version__, "cores": sorted(os.sched_getaffinity(0)),
           "rounds": args.rounds, "steps": args.steps, "rows": rows}
    print(json.dumps({k: v["median"] for k, v in rows.items()}, indent=1))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    run_main(main, __file__)
