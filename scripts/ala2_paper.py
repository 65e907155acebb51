#!/usr/bin/env python
"""Alanine dipeptide at the paper's protocol over several seeds, against the metadynamics reference.

    python scripts/ala2_paper.py [--config configs/ala2-paper.yaml] [--seeds 1 2 3 4] [--jobs 2]
                                 [--out runs/ala2-paper] [--json docs/measurements/ala2-paper-cpu-vm.json]
                                 [--set bias.stride=2 ...]

Each seed is one `cvflow run` (one thread each, ``--jobs`` at a time; a finished run
directory is only read, an unfinished one is resumed). The table gives, per seed and
iteration: regscore and threshold (and whether it was floored), the R² of a linear
regression of the CV onto (cos φ, sin φ, cos ψ, sin ψ) on that iteration's frames (and,
since a linear fit scores even ξ = (φ, ψ) at about 0.5, the R² of a k-nearest-neighbour
regression of those four on the CV: how far the CV determines φ and ψ), the
fraction of frames with φ > 0, recoveries from blow-ups, and the wall time of each part;
then, for the production run, ΔF(C7ax − C7eq) with its block-bootstrap error against the
reference (docs/measurements/ala2-reference-combined.json: scripts/ala2_reference.py's
metadynamics with its bias frozen, exact weights; see the README). For every
biased stage it also gives ΔF on the same frames by both reweightings (``extended``, by λ,
and ``czar``, by the CZAR F(ξ) over ρ̃(ξ)), whichever the run used. With
``convergence.production_frozen_steps`` the run's ΔF comes from the stage under the
frozen bias (exact weights); the table then also gives that stage's C7eq ↔ C7ax crossings
and the ΔF of its four quarters, and the two estimators above on the eABF stage before it.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
from overrides import apply_overrides  # noqa: E402


def run_one(config: str, out: Path, seed: int, settings: list[str] = ()) -> float:
    """`cvflow run` for one seed (resumed when unfinished); returns its wall time, s."""
    t0 = time.time()
    if (out / "summary.json").exists():
        return 0.0
    cfg_text = Path(config).read_text()
    seeded = out.parent / f"{out.name}.yaml"
    out.parent.mkdir(parents=True, exist_ok=True)
    import yaml
    cfg = apply_overrides(yaml.safe_load(cfg_text), settings)
    cfg["seed"] = seed
    base = Path(config).resolve().parent
    cfg["system"]["pdb"] = str((base / cfg["system"]["pdb"]).resolve())
    seeded.write_text(yaml.safe_dump(cfg, sort_keys=False))
    cmd = [sys.executable, "-m", "cvflow.cli", "run", str(seeded), "--out", str(out), "-q"]
    if out.exists() and any(out.iterdir()):
        cmd.append("--resume")
    env = dict(os.environ, OMP_NUM_THREADS="1", NUMBA_NUM_THREADS="1", MKL_NUM_THREADS="1")
    with open(out.parent / f"{out.name}.log", "a") as log:
        subprocess.run(cmd, check=False, env=env, stdout=log, stderr=subprocess.STDOUT)
    return time.time() - t0


def delta_f_both(seg_dir: Path, cv_path: Path, frames, phi, kT: float) -> dict:
    """ΔF(C7ax − C7eq) = −kT ln(P(φ > 0)/P(φ ≤ 0)) on a biased stage's frames, reweighted by
    each estimator (the run itself used ``bias.reweighting``), on the same frames."""
    from cvflow.dataset import stage_log_weights
    from cvflow.workflow import cv_values
    xi = cv_values(cv_path, frames)
    out = {}
    for est in ("extended", "czar"):
        logw, _ = stage_log_weights(seg_dir, 1.0 / kT, est, xi)
        w = np.exp(logw - np.max(logw))
        out[est] = float(-kT * np.log(w[phi > 0].sum() / w[phi <= 0].sum()))
    return out


def knn_r2(z: np.ndarray, y: np.ndarray, k: int = 25) -> float:
    """How far the CV ``z`` determines ``y`` (here cos φ, sin φ, cos ψ, sin ψ), by any
    function: R² of a k-nearest-neighbour regression of y on the standardised z, fitted on
    the even frames and scored on the odd ones; the weakest of y's columns
    (:func:`cvflow.convergence.knn_regscores`, the ``convergence.score: knn`` of the loop).
    ξ = (φ, ψ) itself scores 0.999 on production frames, where the linear ``r2_ramachandran``
    gives it only 0.48–0.56 (a linear fit of the CV on cos/sin cannot follow φ and ψ themselves)."""
    from cvflow.convergence import knn_regscores
    return float(np.min(knn_regscores(z, y, k=k)))


def analyse(config: str, out: Path) -> dict:
    import mdtraj as md
    from cvflow.config import load_config
    from cvflow.convergence import regscore
    from cvflow.cvs import ramachandran_features
    from cvflow.sampler import load_frames
    from cvflow.system import build_system
    from cvflow.dataset import stage_log_weights
    from cvflow.workflow import adaptive_production_dir, cv_values, production_md_dir
    from ala2_error_decomposition import crossings, delta_f, quarter_delta_f
    if not (out / "summary.json").exists():
        log = out.parent / f"{out.name}.log"
        return {"run": str(out), "finished": False,
                "error": log.read_text().strip().splitlines()[-1] if log.exists() and log.read_text().strip() else "?"}
    cfg = load_config(config)
    bundle = build_system(cfg.system, cfg.features.atoms)
    s = json.loads((out / "summary.json").read_text())
    rows = []
    for it in s["iterations"]:
        d = out / f"iter_{it['index']:03d}"
        frames = load_frames(d / "md", bundle)
        t = md.Trajectory(frames, bundle.mdtraj_topology())
        phi = np.degrees(md.compute_phi(t)[1][:, 0])
        xi = cv_values(out / it["cv"], frames)
        kT = 0.00831446261815324 * cfg.md.temperature
        biasing_cv = out / s["iterations"][it["index"] - 1]["cv"] if it["index"] > 0 else None
        both = delta_f_both(d / "md", biasing_cv, frames, phi, kT) if biasing_cv is not None else None
        rows.append({"delta_f_by_estimator": both, "iteration": it["index"], "regscore": it["regscore"],
                     "regscore_per_output": it.get("regscore_per_output"), "threshold": it["threshold"],
                     "bootstrap_quantile": it.get("bootstrap_quantile"), "floored": it.get("threshold_floored"),
                     "confirmation": it.get("confirmation"),
                     "r2_ramachandran": regscore(ramachandran_features(t), xi),
                     "r2_knn": knn_r2(xi, ramachandran_features(t)),
                     "phi_positive": float(np.mean(phi > 0)), "recoveries": len(it.get("recoveries") or []),
                     "seconds": it.get("seconds"), "states": it.get("states")})
    kT = 0.00831446261815324 * cfg.md.temperature
    # the production's eABF stage, by both estimators of a running bias
    adaptive = adaptive_production_dir(out)
    frames = load_frames(adaptive, bundle)
    phi = np.degrees(md.compute_phi(md.Trajectory(frames, bundle.mdtraj_topology()))[1][:, 0])
    both = delta_f_both(adaptive, out / s["final_cv"], frames, phi, kT)
    prod_seconds = s["production"]["wall_seconds"]
    frozen = None
    if production_md_dir(out) != adaptive:  # the stage under the frozen bias: exact weights
        frames = load_frames(production_md_dir(out), bundle)
        phi = np.degrees(md.compute_phi(md.Trajectory(frames, bundle.mdtraj_topology()))[1][:, 0])
        logw, _ = stage_log_weights(production_md_dir(out), 1.0 / kT)
        w = np.exp(logw - logw.max())
        frozen = {"delta_f": delta_f(w, phi > 0, phi <= 0, kT), "quarters": quarter_delta_f(w, phi, kT),
                  "crossings": crossings(phi), "phi_positive": float(np.mean(phi > 0)),
                  "seconds": s["production"]["frozen"]["wall_seconds"]}
        prod_seconds += frozen["seconds"]
    t = md.Trajectory(frames, bundle.mdtraj_topology())  # the production frames the run weighs
    xi = cv_values(out / s["final_cv"], frames)
    states = s.get("states") or {}
    df = (states.get("delta_f") or {}).get("C7ax", {})
    return {"run": str(out), "finished": True, "converged": s["converged"], "iterations": rows,
            "production": {"r2_ramachandran": regscore(ramachandran_features(t), xi),
                           "r2_knn": knn_r2(xi, ramachandran_features(t)),
                           "r2_ramachandran_of_phi_psi": regscore(ramachandran_features(t), np.column_stack(
                               [md.compute_phi(t)[1][:, 0], md.compute_psi(t)[1][:, 0]])),
                           "phi_positive": float(np.mean(phi > 0)), "seconds": prod_seconds,
                           "recoveries": len(s["production"].get("recoveries") or []),
                           "ess": states.get("ess"), "weights": states.get("weights"),
                           "delta_f_by_estimator": both, "frozen": frozen},
            "delta_f": df.get("value"), "delta_f_error": df.get("error"), "delta_f_error_note": df.get("error_note"),
            "wall_seconds": sum((it.get("wall_seconds") or 0) for it in s["iterations"]) + prod_seconds}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default=str(ROOT / "configs" / "ala2-paper.yaml"))
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4])
    ap.add_argument("--jobs", type=int, default=2, help="runs at a time (one thread each)")
    ap.add_argument("--out", default="runs/ala2-paper")
    ap.add_argument("--reference", default=str(ROOT / "docs" / "measurements" / "ala2-reference-combined.json"),
                    help="scripts/ala2_reference_combine.py's JSON (its exact-weight value), or "
                         "scripts/ala2_reference.py's (its bias-surface value)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config key for every seed (dotted, YAML value), e.g. bias.stride=2")
    args = ap.parse_args()
    outs = [Path(args.out) / f"seed{s}" for s in args.seeds]
    with ThreadPoolExecutor(args.jobs) as pool:
        walls = list(pool.map(lambda a: run_one(args.config, *a, args.set), zip(outs, args.seeds)))
    ref = json.loads(Path(args.reference).read_text())
    if "exact" in ref:
        ref_df, ref_err, how = ref["exact"]["delta_f"], ref["exact"]["error"], "metadynamics bias frozen, exact weights"
    else:
        ref_df, ref_err, how = ref["delta_f_C7ax_minus_C7eq"], ref["error"], "well-tempered metadynamics surface"
    results = []
    print(f"reference ΔF(C7ax − C7eq) = {ref_df:.2f} ± {ref_err:.2f} kJ/mol ({how})")
    for seed, out, wall in zip(args.seeds, outs, walls):
        r = analyse(args.config, out)
        r["seed"], r["wall_seconds_this_call"] = seed, wall
        results.append(r)
        if not r["finished"]:
            print(f"seed {seed}: did not finish: {r['error']}")
            continue
        print(f"seed {seed}: converged={r['converged']} after {len(r['iterations'])} iterations, "
              f"{r['wall_seconds'] / 60:.1f} min of stage time")
        print(f"  {'iter':>4} {'regscore':>9} {'threshold':>10} {'confirm':>9} {'R2 phi/psi':>10} {'kNN R2':>6} {'phi>0':>6} {'recov':>5} "
              f"{'md s':>6} {'train s':>7} {'boot s':>6} {'dF ext':>7} {'dF czar':>7}")
        for it in r["iterations"]:
            sec = it["seconds"] or {}
            f = lambda v, p: "-" if v is None else format(v, p)  # noqa: E731
            thr = f(it["threshold"], ".4f") + ("*" if it["floored"] else " ")
            print(f"  {it['iteration']:>4} {f(it['regscore'], '.4f'):>9} {thr:>10} {it.get('confirmation') or '-':>9} "
                  f"{it['r2_ramachandran']:>10.3f} "
                  f"{it['r2_knn']:>6.3f} "
                  f"{it['phi_positive']:>6.3f} {it['recoveries']:>5} {f(sec.get('md'), '.0f'):>6} "
                  f"{f(sec.get('training'), '.0f'):>7} {f(sec.get('bootstrap'), '.0f'):>6} "
                  f"{f((it['delta_f_by_estimator'] or {}).get('extended'), '.2f'):>7} "
                  f"{f((it['delta_f_by_estimator'] or {}).get('czar'), '.2f'):>7}")
        p = r["production"]
        dev = None if r["delta_f"] is None else r["delta_f"] - ref_df
        print(f"  production: R2 {p['r2_ramachandran']:.3f} (kNN {p['r2_knn']:.3f}; (phi, psi) themselves "
              f"{p['r2_ramachandran_of_phi_psi']:.3f}), phi>0 {p['phi_positive']:.3f}, "
              f"ΔF(C7ax − C7eq) = {f(r['delta_f'], '.2f')} "
              + (f"kJ/mol (error undetermined: {r['delta_f_error_note']}) " if r.get("delta_f_error_note")
                 else f"± {f(r['delta_f_error'], '.2f')} kJ/mol ") +
              f"(reference {ref_df:.2f}; difference {f(dev, '+.2f')}; weights {p['weights']}), "
              f"{p['seconds']:.0f} s; the eABF stage: extended {p['delta_f_by_estimator']['extended']:.2f}, "
              f"czar {p['delta_f_by_estimator']['czar']:.2f} kJ/mol")
        if p["frozen"]:
            fz = p["frozen"]
            print(f"  frozen stage: {fz['crossings']} crossings, phi>0 {fz['phi_positive']:.3f}, quarters "
                  + ", ".join(f"{q:.2f}" if np.isfinite(q) else ("no C7ax" if q > 0 else "no C7eq")
                              for q in fz["quarters"]) + " kJ/mol")
    if args.json:
        Path(args.json).write_text(json.dumps({"config": args.config, "settings": args.set, "reference": ref_df,
                                               "reference_error": ref_err, "seeds": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
