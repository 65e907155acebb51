#!/usr/bin/env python
"""Re-run the frozen-bias production stage of finished runs with other frozen-stage settings.

    python scripts/frozen_rerun.py SEED=RUN_DIR [SEED=RUN_DIR ...] --out DIR
        [--set convergence.production_frozen_refreeze=2500000 ...] [--jobs 2] [--json FILE]

Everything before the frozen stage (the iterations, the production's eABF) is kept: each run
directory is copied with hard links into ``DIR/seedN``, its frozen stage and production
analysis are dropped, the settings are written into its config and ``config.resolved.yaml``,
and ``cvflow run --resume`` runs the frozen stage again, then the analysis (one thread
each, ``--jobs`` at a time). The frozen stage's seed comes from the run's, so with the run's
own settings the stage is the one it ran, bit for bit; only the changed settings change it.
A copy whose ``summary.json`` exists is only read. The JSON gives, per seed, the run's
ΔF before and after, with errors, transitions, ESS, the stage's length (with extensions),
its number of frozen biases and its wall time, against the metadynamics reference.
Used for the paper protocol's "Freezing again" rows in the README.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
from overrides import apply_overrides  # noqa: E402

#: the metadynamics reference with its bias frozen, exact weights (as scripts/ala2_paper.py's)
REFERENCE = json.loads((ROOT / "docs" / "measurements" / "ala2-reference-combined.json").read_text())["exact"]["delta_f"]


def prepare(src: Path, out: Path, settings: list[str]) -> Path:
    """The hard-linked copy of ``src`` in ``out`` without its frozen stage, with ``settings``
    in its config (returned) and in its config.resolved.yaml."""
    cfg_path = out.parent / f"{out.name}.yaml"
    if out.exists():
        return cfg_path
    shutil.copytree(src, out, copy_function=os.link)
    prod = out / "production"
    shutil.rmtree(prod / "frozen", ignore_errors=True)
    for name in ("weights.npy", "states.json", "fes_reweighted.csv"):
        (prod / name).unlink(missing_ok=True)
    (out / "summary.json").unlink(missing_ok=True)
    for name in ("run.log", "config.resolved.yaml", "manifest.json"):  # written to: copies, not links
        data = (out / name).read_bytes()
        (out / name).unlink()
        (out / name).write_bytes(data)
    man = json.loads((out / "manifest.json").read_text())
    for stage in ("production/frozen", "production/analysis"):
        man["stages"].pop(stage, None)
    man["current"] = None
    (out / "manifest.json").write_text(json.dumps(man))
    resolved = yaml.safe_load((out / "config.resolved.yaml").read_text())
    pdb = Path(resolved["config"]["system"]["pdb"])
    if not pdb.exists():  # the run's system file moved: the shipped one (the same molecule)
        resolved["config"]["system"]["pdb"] = str(ROOT / "systems" / "alanine-dipeptide" / "ala2.pdb")
    resolved["config"] = apply_overrides(resolved["config"], settings)
    (out / "config.resolved.yaml").write_text(yaml.safe_dump(resolved, sort_keys=False))
    cfg_path.write_text(yaml.safe_dump(resolved["config"], sort_keys=False))
    return cfg_path


def rerun(seed: int, src: Path, out: Path, settings: list[str]) -> dict:
    cfg = prepare(src, out, settings)
    if not (out / "summary.json").exists():
        env = dict(os.environ, OMP_NUM_THREADS="1", NUMBA_NUM_THREADS="1", MKL_NUM_THREADS="1")
        with open(out.parent / f"{out.name}.log", "a") as log:
            subprocess.run([sys.executable, "-m", "cvflow.cli", "run", str(cfg), "--out", str(out), "--resume", "-q"],
                           env=env, stdout=log, stderr=subprocess.STDOUT, check=False)
    return summarise(seed, src, out)


def summarise(seed: int, src: Path, out: Path) -> dict:
    row = {"seed": seed, "source": str(src)}
    for key, run in (("before", src), ("after", out)):
        if not (run / "summary.json").exists():
            row[key] = {"failed": True}
            continue
        s = json.loads((run / "summary.json").read_text())
        d = s["states"]["delta_f"]["C7ax"]
        fz = s["production"].get("frozen", {})
        seg = json.loads((run / "production" / "frozen" / "segment.json").read_text())
        rec_file = run / "production" / "frozen" / "frozen_bias.npz"
        rec = np.load(rec_file)
        from cvflow.config import config_from_dict
        dt = config_from_dict(yaml.safe_load((run / "config.resolved.yaml").read_text())["config"]).md.timestep
        transitions = d.get("transitions")
        if transitions is None:  # a summary from before cvflow counted them: count them on its frames
            transitions = count_transitions(run)
        row[key] = {"delta_f": d["value"], "error": d.get("error"), "error_note": d.get("error_note"),
                    "minus_reference": d["value"] - REFERENCE, "transitions": transitions,
                    "ess": s["states"].get("ess"), "frozen_steps": seg["steps"], "frozen_ns": seg["steps"] * dt / 1000,
                    "frozen_biases": int(len(rec["potentials"])) if "potentials" in rec.files else 1,
                    "extension": seg.get("extension"), "wall_seconds": fz.get("wall_seconds")}
    return row


def count_transitions(run: Path) -> int:
    """C7eq <-> C7ax transitions of a run's frozen stage, as cvflow counts them (stays of 5 ps)."""
    import mdtraj as md
    from cvflow.states import TRANSITION_DWELL_PS, state_transitions
    seg = run / "production" / "frozen"
    t = md.load_dcd(str(seg / "traj.dcd"), top=str(seg / "topology.pdb"))
    phi = np.degrees(md.compute_phi(t)[1][:, 0])
    from cvflow.config import config_from_dict
    cfg = config_from_dict(yaml.safe_load((run / "config.resolved.yaml").read_text())["config"])
    dwell = max(1, int(round(TRANSITION_DWELL_PS / (cfg.md.timestep * cfg.md.report_interval))))
    return state_transitions({"C7eq": phi <= 0, "C7ax": phi >= 0}, dwell)["C7ax"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", help="SEED=RUN_DIR")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--set", dest="settings", action="append", default=[], help="KEY=VALUE (dotted)")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    pairs = [(int(r.split("=", 1)[0]), Path(r.split("=", 1)[1]).resolve()) for r in a.runs]
    a.out.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(a.jobs) as ex:
        rows = list(ex.map(lambda p: rerun(p[0], p[1], a.out / f"seed{p[0]}", a.settings), pairs))
    rows.sort(key=lambda r: r["seed"])
    print(f"| seed | before: ΔF, kJ/mol (− ref), transitions | after: ΔF (− ref), transitions, "
          f"frozen biases, length |\n|---|---|---|")
    for r in rows:
        cells = []
        for key in ("before", "after"):
            b = r[key]
            if b.get("failed"):
                cells.append("failed")
                continue
            err = "undetermined" if b["error"] is None else f"{b['error']:.2f}"
            cells.append(f"{b['delta_f']:.2f} ± {err} ({b['minus_reference']:+.2f}), {b['transitions']}"
                         + ("" if key == "before" else
                            f", {b['frozen_biases']}, {b['frozen_ns']:.0f} ns"))
        print(f"| {r['seed']} | " + " | ".join(cells) + " |")
    ok = [r for r in rows if not r["after"].get("failed")]
    within = sum(abs(r["after"]["minus_reference"]) <= 1.0 for r in ok)
    print(f"\nreference {REFERENCE:.2f} kJ/mol; after: {within} of {len(ok)} within 1 kJ/mol "
          f"(before: {sum(abs(r['before']['minus_reference']) <= 1.0 for r in ok)})")
    if a.json:
        a.json.write_text(json.dumps({"settings": a.settings, "reference": REFERENCE, "runs": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
