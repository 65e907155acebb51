#!/usr/bin/env python
"""Is a bin-wise 2-D ABF stage at equilibrium? Freeze its bias and reweight by it exactly.

    python scripts/ala2_frozen_bias.py RUN_DIR ITER --seed 11 [--ns 10 10]
        [--projection-interval N] [--json docs/measurements/ala2-frozen-bias-cpu-vm.json]

On the CV of RUN_DIR/iter_ITER (a finished alanine-dipeptide run), from that iteration's
last frame: ``ns[0]`` ns of eABF as the loop runs it, then ``ns[1]`` ns with the ABF
estimate frozen (its counts set so high that new samples no longer move it; λ's coupling,
thermostat and walls unchanged). Under a frozen bias B(λ) that is a gradient, the stage's
stationary distribution is e^{−β[U + κ/2 (ξ − λ)² + B(λ)]}, so e^{βB(λ)} are the exact
weights of its frames, with B the least-squares integral of the frozen estimate. The row
gives ΔF(C7ax − C7eq) on the frozen part's frames by those weights and by the extended
estimator, the truth on the same frames (the metadynamics reference, as in
scripts/ala2_error_decomposition.py), and the curl of the frozen estimate
(scripts/abf_circulation.py). If both estimates agree with each other and not with the
truth, the frames are not at the equilibrium of any bias: the non-conservative estimate
drives λ, which is what projected ABF (``bias.projection_interval``) removes.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
from abf_circulation import block_circulation  # noqa: E402
from ala2_error_decomposition import crossings, delta_f, reference_log_weights  # noqa: E402
from ala2_stage_rerun import stage_setup  # noqa: E402

FROZEN_COUNT = 10 ** 12


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run")
    ap.add_argument("iteration", type=int)
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--ns", type=float, nargs=2, default=[10.0, 10.0])
    ap.add_argument("--projection-interval", type=int, default=0, help="0: bin-wise ABF (the default here)")
    ap.add_argument("--json", default=str(ROOT / "docs" / "measurements" / "ala2-frozen-bias-cpu-vm.json"))
    args = ap.parse_args()
    import mdtraj as md
    import openmm as mm
    import openmm.app as app
    import openmm.unit as u
    from cvflow.dataset import log_weights_extended, normalised_weights
    from cvflow.fes import connected_regions, fes_on_frames, integrate_2d, main_region
    from cvflow.report import phi_psi_degrees
    from cvflow.sampler import BIAS_GROUP, clone_system, make_bias
    from cvflow.units import kT as kT_of
    run = Path(args.run)

    def edit(raw):
        raw["bias"]["projection_interval"] = args.projection_interval or None
    cfg, bundle, start, cv, grid = stage_setup(run, args.iteration, edit)
    if grid.dim != 2:
        raise SystemExit("ala2_frozen_bias.py: this check is for 2-D CVs")
    bias = make_bias(cfg, bundle, cv, grid, args.seed)
    system = clone_system(bundle.system)
    force = bias.make_force()
    force.setForceGroup(BIAS_GROUP)
    system.addForce(force)
    dt = cfg.md.timestep
    integ = mm.LangevinMiddleIntegrator(cfg.md.temperature * u.kelvin, cfg.md.friction / u.picosecond, dt * u.picosecond)
    integ.setRandomNumberSeed(args.seed)
    sim = app.Simulation(bundle.topology, system, integ, mm.Platform.getPlatformByName("Reference"))
    sim.context.setPositions(start[-1])
    sim.context.setVelocitiesToTemperature(cfg.md.temperature * u.kelvin, args.seed)
    t0 = time.time()
    steps1 = int(round(args.ns[0] * 1000 / dt))
    sim.step(steps1)
    bias.take_colvar()
    # freeze: the estimate as applied, now with counts no sample can move
    nb = tuple(int(b) for b in grid.bins)
    full = float(bias.prm[5])
    count = bias.abf_count.astype(float)
    applied = bias.abf_sum / np.maximum(count, full)[:, None]
    if bias.projection_interval:
        bias.project()
        applied = applied + bias.applied
        bias.projection_interval = 0  # keep the last correction
    bias.abf_count[:] = FROZEN_COUNT
    bias.abf_sum[:] = applied * FROZEN_COUNT
    bias.applied[...] = 0.0
    est = applied.reshape(nb + (2,))  # κ(ξ − λ): ∇B, B = −A of the frozen bias
    usable = count.reshape(nb) > 0
    main = main_region(connected_regions(usable, grid.periodic), count.reshape(nb))
    b_pot = integrate_2d(np.where(main[..., None], est, np.nan), grid.widths, main)
    circ = block_circulation(est, grid.widths, usable)
    every = cfg.md.report_interval
    n_frames = int(round(args.ns[1] * 1000 / dt)) // every
    pos = np.empty((n_frames, bundle.n_atoms, 3))
    for i in range(n_frames):
        sim.step(every)
        pos[i] = sim.context.getState(getPositions=True).getPositions(asNumpy=True).value_in_unit(u.nanometer)
    col = bias.take_colvar()
    frame_steps = steps1 + every * (np.arange(n_frames) + 1)
    idx = np.searchsorted(col[:, 0].astype(np.int64), frame_steps)
    ok = idx < len(col)  # the last frame's row comes with the next step
    xi, lam = col[idx[ok], 1:3], col[idx[ok], 3:5]
    phi, psi = phi_psi_degrees(md.Trajectory(pos[ok], bundle.mdtraj_topology()))
    kT = kT_of(cfg.md.temperature)
    ax = phi > 0
    logw_b = fes_on_frames(grid.mesh().reshape(-1, 2), (b_pot / kT).reshape(-1), lam, grid.periods)
    logw_b = np.where(np.isfinite(logw_b), logw_b, -np.inf)
    logw_e, _ = log_weights_extended(xi, lam, bias.kappa, grid, 1.0 / kT)
    quarters = [delta_f(normalised_weights(log_weights_extended(xi[q], lam[q], bias.kappa, grid, 1.0 / kT)[0]),
                        ax[q], ~ax[q], kT) for q in np.array_split(np.arange(len(xi)), 4)]
    b_ok = circ[np.isfinite(circ)]
    row = {"run": str(run), "cv": str(cv), "seed": args.seed, "ns": args.ns,
           "projection_interval": args.projection_interval or None, "kappa": bias.kappa,
           "frozen_crossings": crossings(phi), "frozen_phi_positive": float(ax.mean()),
           "delta_f_frozen_bias_weights": delta_f(normalised_weights(logw_b), ax, ~ax, kT),
           "delta_f_extended": delta_f(normalised_weights(logw_e), ax, ~ax, kT),
           "delta_f_extended_quarters": quarters,
           "delta_f_truth_same_frames": delta_f(normalised_weights(reference_log_weights(phi, psi, kT)), ax, ~ax, kT),
           "frozen_estimate_max_block_circulation": float(np.abs(b_ok).max()),
           "frozen_estimate_signed_circulation": float(b_ok.sum()), "seconds": time.time() - t0}
    print(json.dumps(row))
    path = Path(args.json)
    rows = json.loads(path.read_text())["rows"] if path.exists() else []
    path.write_text(json.dumps({"rows": rows + [row]}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
