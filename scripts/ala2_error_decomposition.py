#!/usr/bin/env python
"""Where the ΔF(C7ax − C7eq) error of a learned CV comes from, stage by stage.

    python scripts/ala2_error_decomposition.py RUN_DIR [RUN_DIR ...]
        [--json docs/measurements/ala2-error-decomposition-cpu-vm.json]

For every biased stage of finished `cvflow run` directories of alanine dipeptide (each
iteration after the first, and production), on that stage's own frames:

- **truth**: the frames reweighted by the metadynamics reference F(φ, ψ)
  (`docs/measurements/ala2-reference.npz`, from scripts/ala2_reference.py): a frame in
  (φ, ψ) cell c gets w ∝ e^{−βF_ref(c)}/n_c, with n_c the stage's frames in that cell. This
  is the reference's answer on exactly these frames, and it needs only that the frames in a
  cell be in equilibrium among themselves (φ and ψ are the slow motions of this molecule).
- **estimate**: the run's own reweighting (`bias.reweighting`, by default the extended one:
  ŵ ∝ e^{−βA(λ)}/ρ̃(λ)).
- **decomposition** over the bins of λ on the stage's grid: ŵ = p(λ) × p(state | λ). The
  estimate's marginal p(λ) with the truth's conditional, and the truth's marginal with the
  estimate's conditional, say which of the two carries the error. A wrong marginal is a
  wrong A(λ), the free energy along the CV; a wrong conditional means the frames at one λ
  are not in equilibrium across the states (the CV does not resolve them).
- ΔF(αR − β) (both φ < 0: ψ in (−120°, 50°) against the rest), estimated and true: a
  transition that the CVs resolve, for comparison.
- **crossings**: committed C7eq ↔ C7ax transitions (core sets φ in (20°, 120°) and
  φ < −20° or > 150°).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def crossings(phi: np.ndarray) -> int:
    core = np.where((phi > 20) & (phi < 120), 1, np.where((phi < -20) | (phi > 150), 0, -1))
    core = core[core >= 0]
    return int(np.count_nonzero(np.diff(core)))


def reference_log_weights(phi, psi, kT: float) -> np.ndarray:
    ref = np.load(ROOT / "docs" / "measurements" / "ala2-reference.npz")
    f, nb = ref["free_energy"], len(ref["phi"])
    cell = (np.clip(((phi + 180) / 360 * nb).astype(int), 0, nb - 1) * nb
            + np.clip(((psi + 180) / 360 * nb).astype(int), 0, nb - 1))
    n = np.bincount(cell, minlength=nb * nb).astype(float)
    return -f.reshape(-1)[cell] / kT - np.log(n[cell])


def delta_f(w: np.ndarray, a: np.ndarray, b: np.ndarray, kT: float) -> float:
    return float(-kT * np.log(w[a].sum() / w[b].sum()))


def quarter_delta_f(w: np.ndarray, phi_deg: np.ndarray, kT: float, parts: int = 4) -> list[float]:
    """ΔF(φ > 0 − φ ≤ 0) on each of ``parts`` contiguous blocks of frames (+inf for a block
    without C7ax frames): how a stage's estimate moves along it."""
    with np.errstate(divide="ignore"):
        return [delta_f(w[b], phi_deg[b] > 0, phi_deg[b] <= 0, kT)
                for b in np.array_split(np.arange(len(w)), parts)]


def decompose(lam_bin: np.ndarray, n_bins: int, ax: np.ndarray, w_est, w_true, kT: float) -> dict:
    def split(w):
        p = np.bincount(lam_bin, w, n_bins)
        q = np.where(p > 0, np.bincount(lam_bin, w * ax, n_bins) / np.maximum(p, 1e-300), 0.0)
        return p / p.sum(), q

    def df(p, q):
        return float(-kT * np.log((p * q).sum() / (p * (1 - q)).sum()))
    pe, qe = split(w_est)
    pt, qt = split(w_true)
    mixed = (qt > 0.02) & (qt < 0.98)
    return {"estimated_marginal_true_conditional": df(pe, qt), "true_marginal_estimated_conditional": df(pt, qe),
            "c7ax_weight_in_mixed_lambda_bins": float((pt * qt)[mixed].sum() / (pt * qt).sum())}


def stage_row(run: Path, stage: str, cv: Path, bundle, cfg, kT: float) -> dict:
    import mdtraj as md
    from cvflow import artifacts as art
    from cvflow.dataset import normalised_weights, stage_log_weights
    from cvflow.fes import CZARStats
    from cvflow.report import phi_psi_degrees
    from cvflow.sampler import load_frames
    from cvflow.workflow import cv_values
    seg = run / stage / "md"
    frames = load_frames(seg, bundle)
    phi, psi = phi_psi_degrees(md.Trajectory(frames, bundle.mdtraj_topology()))
    ax, eq = phi > 0, phi <= 0
    alpha = eq & (psi > -120) & (psi < 50)
    w_true = normalised_weights(reference_log_weights(phi, psi, kT))
    logw, _ = stage_log_weights(seg, 1.0 / kT, cfg.bias.reweighting, cv_values(cv, frames))
    w_est = normalised_weights(logw)
    header, rows = art.read_csv(seg / "colvar.csv")
    grid = CZARStats.load(seg / "czar.npz").grid
    lam = rows[:, [header.index(f"lambda{i + 1}") for i in range(grid.dim)]]
    k = np.clip(np.floor((lam - grid.mins) / grid.widths).astype(int), 0, np.asarray(grid.bins) - 1)
    lam_bin = np.ravel_multi_index(tuple(k.T), tuple(grid.bins))
    return {"run": run.name, "stage": stage, "frames": len(frames), "phi_positive": float(ax.mean()),
            "crossings": crossings(phi),
            "delta_f_estimate": delta_f(w_est, ax, eq, kT), "delta_f_truth_same_frames": delta_f(w_true, ax, eq, kT),
            **decompose(lam_bin, int(np.prod(grid.bins)), ax, w_est, w_true, kT),
            "alpha_beta_estimate": delta_f(w_est, alpha, eq & ~alpha, kT),
            "alpha_beta_truth": delta_f(w_true, alpha, eq & ~alpha, kT)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--json", default=str(ROOT / "docs" / "measurements" / "ala2-error-decomposition-cpu-vm.json"))
    args = ap.parse_args()
    import yaml
    from cvflow.config import Config
    from cvflow.system import build_system
    from cvflow.units import kT as kT_of
    rows = []
    print(f"{'stage':<22} {'cross':>5} {'est':>7} {'truth':>7} {'estA+trueC':>10} {'trueA+estC':>10} "
          f"{'αR−β est':>9} {'true':>6}")
    for run in map(Path, args.runs):
        raw = yaml.safe_load((run / "config.resolved.yaml").read_text())["config"]
        pdb = Path(raw["system"]["pdb"])
        if not pdb.exists():  # a run made elsewhere: the shipped structure
            raw["system"]["pdb"] = str(ROOT / "systems" / "alanine-dipeptide" / "ala2.pdb")
        cfg = Config.model_validate(raw)
        bundle = build_system(cfg.system, cfg.features.atoms)
        kT = kT_of(cfg.md.temperature)
        s = json.loads((run / "summary.json").read_text())
        its = s["iterations"]
        stages = [(f"iter_{it['index']:03d}", its[it["index"] - 1]["cv"]) for it in its if it["index"] > 0]
        stages.append(("production", s["final_cv"]))
        for stage, cv in stages:
            r = stage_row(run, stage, run / cv, bundle, cfg, kT)
            rows.append(r)
            print(f"{run.name + '/' + stage:<22} {r['crossings']:>5} {r['delta_f_estimate']:>7.2f} "
                  f"{r['delta_f_truth_same_frames']:>7.2f} {r['estimated_marginal_true_conditional']:>10.2f} "
                  f"{r['true_marginal_estimated_conditional']:>10.2f} {r['alpha_beta_estimate']:>9.2f} "
                  f"{r['alpha_beta_truth']:>6.2f}", flush=True)

    def rms(key, truth):
        return float(np.sqrt(np.mean([(r[key] - r[truth]) ** 2 for r in rows])))
    summary = {"stages": len(rows),
               "rms_error_estimate": rms("delta_f_estimate", "delta_f_truth_same_frames"),
               "rms_error_true_conditional": rms("estimated_marginal_true_conditional", "delta_f_truth_same_frames"),
               "rms_error_true_marginal": rms("true_marginal_estimated_conditional", "delta_f_truth_same_frames"),
               "rms_error_alpha_beta": rms("alpha_beta_estimate", "alpha_beta_truth")}
    print("RMS error over stages, kJ/mol: estimate {rms_error_estimate:.2f}; with the true conditional "
          "{rms_error_true_conditional:.2f}; with the true marginal {rms_error_true_marginal:.2f}; "
          "αR − β {rms_error_alpha_beta:.2f}".format(**summary))
    Path(args.json).write_text(json.dumps({"summary": summary, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
