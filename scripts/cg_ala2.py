#!/usr/bin/env python
"""Issue 21, data-driven: the VAE of ``cvflow cg`` trained on N = 50, 200, 500 and 5,000
frames of a cvflow run of alanine dipeptide, with their reweighting factors (as the config's
``cg.frame_weights`` uses them), against an independent reference.

    python scripts/cg_ala2.py --run runs/cg-ala2 [--n 50 200 500 5000] [--seeds 1 2 3]
        [--offsets 0 0.1 ...] [--jobs 2] [--ref-ns 25] [--json FILE] [--plot FILE]   (both default to the --work directory)

1. The run: ``cvflow run configs/cg-ala2.yaml`` (made here if ``--run`` has none).
2. The reference, without cvflow's sampling: plain OpenMM Langevin MD (the config's system
   and MD settings, CPU platform, one thread) started in C7eq and in C7ax, ``--ref-ns`` each.
   Within each basin (φ < 0, φ > 0) it gives the mean radius of gyration (all 22 atoms, as
   MDTraj's ``compute_rg``); the basins are weighted by the populations of the metadynamics
   reference (docs/measurements/ala2-reference.json: ΔF(C7ax − C7eq) = 8.41 ± 0.28 kJ/mol).
   Its error: block standard errors (10 blocks) and the population's error, in quadrature.
   The (φ, ψ) reference histogram is the metadynamics free energy, on 36 × 36 bins.
3. For each N, offset and seed, ``cvflow cg --from RUN`` with ``cg.n_frames: N`` and
   ``cg.frame_offset`` (evenly spaced frames of the config's ``cg.frames``, with their
   weights; other offsets give disjoint subsets): the Rg prediction with its 95 % credible
   interval (over the decoder's Laplace posterior draws), whether it holds the reference, the
   Jensen–Shannon divergence of the generated (φ, ψ) histogram to the reference, and what
   the training frames say by themselves (their weighted mean Rg, Kish ESS and the standard
   error as if the ESS frames were independent).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
KB = 0.0083144626


def reference_md(cfg_path: Path, ns: float, seed: int, start: str) -> dict:
    """Plain MD in one basin: frames every 0.5 ps → Rg and φ of each frame."""
    import mdtraj as md
    import openmm as mm
    from openmm import app, unit as u
    from cvflow.config import load_config
    from cvflow.system import build_system
    cfg = load_config(cfg_path)
    bundle = build_system(cfg.system, "all")
    T = cfg.md.temperature
    integ = mm.LangevinMiddleIntegrator(T * u.kelvin, cfg.md.friction / u.picosecond, cfg.md.timestep * u.picosecond)
    integ.setRandomNumberSeed(seed)
    sim = app.Simulation(bundle.topology, bundle.system, integ, mm.Platform.getPlatformByName("CPU"),
                         {"Threads": "1"})
    pos = bundle.positions.copy()
    top = md.Topology.from_openmm(bundle.topology)
    phi_idx = md.compute_phi(md.Trajectory(pos[None], top))[0][0]
    if start == "C7ax":  # rotate the C-terminal side of the φ bond to φ ≈ +60°
        pos = _set_phi(pos, phi_idx, top, np.deg2rad(60.0))
    sim.context.setPositions(pos * u.nanometer)
    sim.minimizeEnergy()
    sim.context.setVelocitiesToTemperature(T * u.kelvin, seed)
    every = int(round(0.5 / cfg.md.timestep))
    n = int(round(ns * 1000 / 0.5))
    xyz = np.empty((n, bundle.n_atoms, 3), np.float32)
    t0 = time.time()
    sim.step(50 * every)  # 25 ps of equilibration
    for i in range(n):
        sim.step(every)
        xyz[i] = sim.context.getState(getPositions=True).getPositions(asNumpy=True).value_in_unit(u.nanometer)
    traj = md.Trajectory(xyz, top)
    return {"rg": md.compute_rg(traj), "phi": np.degrees(md.compute_phi(traj)[1][:, 0]),
            "psi": np.degrees(md.compute_psi(traj)[1][:, 0]), "seconds": time.time() - t0}


def _set_phi(pos, idx, top, target):
    """Rotate the atoms on the CA side of the N–CA bond so that φ(C-N-CA-C) = target."""
    import mdtraj as md
    import networkx as nx
    g = top.to_bondgraph()
    a = [top.atom(int(i)) for i in idx]
    g2 = g.copy()
    g2.remove_edge(a[1], a[2])
    side = [n.index for n in nx.node_connected_component(g2, a[2])]
    cur = md.compute_dihedrals(md.Trajectory(pos[None], top), [idx])[0, 0]
    axis = pos[idx[2]] - pos[idx[1]]
    axis /= np.linalg.norm(axis)
    ang = target - cur
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    rot = np.eye(3) + np.sin(ang) * k + (1 - np.cos(ang)) * k @ k
    out = pos.copy()
    out[side] = (pos[side] - pos[idx[1]]) @ rot.T + pos[idx[1]]
    return out


def frames_rg(data: Path) -> dict:
    """The training frames' own weighted mean Rg (all atoms), their Kish ESS, and the standard
    error of that mean as if the ESS frames were independent: what the data say by themselves."""
    from cvflow.cg import weighted_mean_se
    d = np.load(data)
    x = d["positions"]
    c = x - x.mean(1, keepdims=True)
    own = weighted_mean_se(np.sqrt((c ** 2).sum(-1).mean(-1)), d["weights"])
    return {"rg_nm": own["mean"], "ess": own["ess"], "rg_se_nm": own["se_kish"], "rg_se_delta_nm": own["se"]}


def block_sem(x: np.ndarray, blocks: int = 10) -> float:
    m = np.array([b.mean() for b in np.array_split(x, blocks)])
    return float(m.std(ddof=1) / np.sqrt(blocks))


def reference(cfg_path: Path, ns: float, work: Path) -> dict:
    cache = work / f"reference-{ns:g}ns.npz"
    if cache.exists():
        d = np.load(cache)
        runs = {k: {"rg": d[f"{k}_rg"], "phi": d[f"{k}_phi"], "psi": d[f"{k}_psi"]} for k in ("C7eq", "C7ax")}
    else:
        from concurrent.futures import ProcessPoolExecutor
        import multiprocessing as mp
        with ProcessPoolExecutor(2, mp_context=mp.get_context("spawn")) as pool:
            futs = {k: pool.submit(reference_md, cfg_path, ns, s, k) for k, s in (("C7eq", 11), ("C7ax", 12))}
            runs = {k: f.result() for k, f in futs.items()}
        np.savez(cache, **{f"{k}_{q}": runs[k][q] for k in runs for q in ("rg", "phi", "psi")})
    rg = np.concatenate([runs["C7eq"]["rg"], runs["C7ax"]["rg"]])
    phi = np.concatenate([runs["C7eq"]["phi"], runs["C7ax"]["phi"]])
    meta = json.loads((ROOT / "docs/measurements/ala2-reference.json").read_text())
    kT = KB * 300.0
    dF, dF_err = meta["delta_f_C7ax_minus_C7eq"], meta["error"]
    p_ax = 1 / (1 + np.exp(dF / kT))
    eq, ax = rg[phi < 0], rg[phi > 0]
    mean = (1 - p_ax) * eq.mean() + p_ax * ax.mean()
    dp = p_ax * (1 - p_ax) * dF_err / kT
    err = float(np.sqrt(((1 - p_ax) * block_sem(eq)) ** 2 + (p_ax * block_sem(ax)) ** 2
                        + (dp * (ax.mean() - eq.mean())) ** 2))
    from cg_ala2_energy import reference as metadynamics  # its (φ, ψ) histogram, 36 × 36 bins of 10°
    h = metadynamics()["histogram"]
    return {"rg_nm": float(mean), "rg_error_nm": err, "rg_C7eq_nm": float(eq.mean()), "rg_C7ax_nm": float(ax.mean()),
            "frames": {"C7eq_basin": int(len(eq)), "C7ax_basin": int(len(ax))}, "p_C7ax": float(p_ax),
            "md_ns_per_start": ns, "phi_psi_histogram": (h / h.sum()).tolist()}


def plot_rg_against_n(rows: list[dict], ref: dict, path: Path) -> None:
    """Each run's predicted Rg with its 95 % credible interval against N, and the reference."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 4))
    ns = sorted({r["n"] for r in rows})
    runs = sorted({(r["seed"], r.get("offset", 0.0)) for r in rows})
    step = 0.06 if len(runs) <= 4 else 0.25 / len(runs)
    for k, (seed, off) in enumerate(runs):
        rs = sorted((r for r in rows if r["seed"] == seed and r.get("offset", 0.0) == off), key=lambda r: r["n"])
        n = np.array([r["n"] for r in rs]) * (1 + step * (k - (len(runs) - 1) / 2))
        m = np.array([r["rg_mean"] for r in rs])
        err = np.array([[r["rg_mean"] - r["rg_low"] for r in rs], [r["rg_high"] - r["rg_mean"] for r in rs]])
        label = f"training seed {seed}" + (f", frame offset {off:g}" if len(runs) > 3 else "")
        ax.errorbar(n, m, yerr=err, fmt="o", ms=4, capsize=3, label=label if len(runs) <= 6 else None)
    ax.axhspan(ref["rg_nm"] - 2 * ref["rg_error_nm"], ref["rg_nm"] + 2 * ref["rg_error_nm"], color="0.8",
               label="reference (plain MD + metadynamics populations, ±2σ)")
    ax.axhline(ref["rg_nm"], color="k", lw=0.8)
    ax.set_xscale("log")
    ax.set_xticks(ns)
    ax.minorticks_off()
    ax.set_xticklabels([str(n) for n in ns])
    ax.set_xlabel("training frames N")
    ax.set_ylabel("Rg (nm), mean and 95% credible interval")
    ax.set_title("alanine dipeptide: the VAE's predicted radius of gyration", fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default=str(ROOT / "configs" / "cg-ala2.yaml"))
    ap.add_argument("--run", default=str(ROOT / "runs" / "cg-ala2"))
    ap.add_argument("--n", type=int, nargs="+", default=[50, 200, 500, 5000])
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--offsets", type=float, nargs="+", default=[0.0],
                    help="cg.frame_offset values: other, disjoint subsets of N frames (a coverage check)")
    ap.add_argument("--jobs", type=int, default=1, help="cg runs at a time (one thread each when > 1)")
    ap.add_argument("--ref-ns", type=float, default=25.0)
    ap.add_argument("--note", default=None, help="a line for the JSON: what this sweep varied")
    ap.add_argument("--work", default=None, help="where the cg directories go (default: RUN/cg-sweep)")
    # the results go into the work directory unless named: a sweep never overwrites a committed file
    ap.add_argument("--json", default=None, help="the results (default: WORK/cg-ala2.json)")
    ap.add_argument("--plot", default=None, help="Rg against N (default: WORK/rg-vs-n.png)")
    args = ap.parse_args()
    run = Path(args.run)
    if not (run / "summary.json").exists():
        subprocess.run([sys.executable, "-m", "cvflow.cli", "run", args.config, "--out", str(run), "-q"]
                       + (["--resume"] if run.exists() else []), check=True)
    work = Path(args.work or run / "cg-sweep")
    work.mkdir(parents=True, exist_ok=True)
    ref = reference(Path(args.config), args.ref_ns, work)
    print(f"reference Rg {ref['rg_nm']:.5f} ± {ref['rg_error_nm']:.5f} nm")
    from cvflow.cg import js_divergence
    rows = []
    from cvflow.config import dump_config, load_config
    base = dump_config(load_config(args.config))  # every path resolved, so the copies may live anywhere
    jobs = [(n, off, seed) for n in args.n for off in args.offsets for seed in args.seeds]

    def name(n, off, seed):
        return f"n{n}-seed{seed}" + (f"-offset{off:g}" if off else "")

    def cg_run(job):
        n, off, seed = job
        out = work / name(*job)
        if (out / "cg.json").exists():
            return
        d = dict(base, seed=seed)
        d["cg"] = dict(base["cg"], n_frames=n, frame_offset=off)
        cfg = work / f"{name(*job)}.yaml"
        cfg.write_text(yaml.safe_dump(d))
        t0 = time.time()
        env = dict(os.environ, **({"OMP_NUM_THREADS": "1"} if args.jobs > 1 else {}))
        subprocess.run([sys.executable, "-m", "cvflow.cli", "cg", str(cfg), "--from", str(run), "--out", str(out),
                        "-q"] + (["--resume"] if out.exists() else []), check=True, env=env, stdout=subprocess.DEVNULL)
        print(f"{name(*job)}: {time.time() - t0:.0f} s", flush=True)

    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(args.jobs) as pool:
        list(pool.map(cg_run, jobs))
    for job in jobs:
        n, off, seed = job
        out = work / name(*job)
        info = json.loads((out / "cg.json").read_text())
        rg = info["observables"]["rg_nm"]
        gen = np.array(info["phi_psi"]["generated"])
        frames = frames_rg(out / "data.npz")
        row = {"n": n, "offset": off, "seed": seed, "rg_mean": rg["mean"], "rg_low": rg["low"], "rg_high": rg["high"],
               "rg_width": rg["high"] - rg["low"], "holds_reference": rg["low"] <= ref["rg_nm"] <= rg["high"],
               "js_to_reference_nats": js_divergence(np.array(ref["phi_psi_histogram"]), gen),
               "js_to_frames_nats": info["phi_psi"].get("js_to_frames_nats"),
               "frames": frames, "states": info.get("states")}
        ax = (info.get("states") or {}).get("C7ax")
        if ax:  # the minor conformer's population against the metadynamics one
            row["p_C7ax_holds_reference"] = ax["low"] <= ref["p_C7ax"] <= ax["high"]
        rows.append(row)
        print(json.dumps({k: row[k] for k in ("n", "offset", "seed", "rg_mean", "rg_low", "rg_high",
                                                "holds_reference", "js_to_reference_nats", "frames")}))
    summary = {"reference": {k: v for k, v in ref.items() if k != "phi_psi_histogram"}, "runs": rows,
               "per_n": {str(n): {"holds_reference": sum(r["holds_reference"] for r in rows if r["n"] == n),
                                  "of": sum(r["n"] == n for r in rows),
                                  "median_width_nm": float(np.median([r["rg_width"] for r in rows if r["n"] == n])),
                                  "frames_within_1.96_se": sum(abs(r["frames"]["rg_nm"] - ref["rg_nm"])
                                                               <= 1.96 * r["frames"]["rg_se_nm"] for r in rows if r["n"] == n),
                                  "js_to_reference_nats": [round(r["js_to_reference_nats"], 4) for r in rows
                                                           if r["n"] == n],
                                  "p_C7ax": [round(r["states"]["C7ax"]["mean"], 4) for r in rows
                                             if r["n"] == n and "p_C7ax_holds_reference" in r],
                                  "p_C7ax_holds_reference": sum(r.get("p_C7ax_holds_reference", False)
                                                                for r in rows if r["n"] == n)}
                         for n in args.n},
               "run": str(run), "config": str(args.config), **({"note": args.note} if args.note else {})}
    Path(args.json or work / "cg-ala2.json").write_text(json.dumps(summary, indent=1))
    plot_rg_against_n(rows, ref, Path(args.plot or work / "rg-vs-n.png"))
    for n, v in summary["per_n"].items():
        print(f"N={n}: reference inside the 95% interval in {v['holds_reference']} of {v['of']}; median width "
              f"{v['median_width_nm']:.5f} nm; JS {v['js_to_reference_nats']}; P(C7ax) {v['p_C7ax']} "
              f"(reference {ref['p_C7ax']:.3f} inside in {v['p_C7ax_holds_reference']})")
    return 0


if __name__ == "__main__":
    from script_exit import run_main
    run_main(main, __file__)
