"""Named states (boxes in observables that MDTraj computes) and the free energies between them.

A state is a box in torsions (φ, ψ, χ1, χ2, ω of one residue, degrees), in a distance
between two atom selections (nm), or in the RMSD to a reference structure (nm); see
:class:`cvflow.config.StateDef`. From weighted frames, a state's population is
P(S) = Σ_{j ∈ S} w_j / Σ_j w_j, and the free energy of S relative to the reference state R
(the first one in the config) is ΔF = −kT ln(P(S) / P(R)), in kJ/mol. Error bars come from a
bootstrap over contiguous blocks of frames (MD frames are correlated; whole blocks are
resampled), as the standard deviation over the resamples. When a state has weight in so few
blocks that some resamples have none, those resamples have no ΔF and the spread of the others
understates the error, so that ΔF's error is undetermined (NaN, null in JSON) and
``error_note`` says which state is short of blocks.
"""
from __future__ import annotations

import math

import numpy as np

TORSION_FUNCS = {"phi": "compute_phi", "psi": "compute_psi", "chi1": "compute_chi1", "chi2": "compute_chi2",
                 "omega": "compute_omega"}


def _in_box(values_deg: np.ndarray, box) -> np.ndarray:
    lo, hi = float(box[0]), float(box[1])
    if lo <= hi:
        return (values_deg >= lo) & (values_deg <= hi)
    return (values_deg >= lo) | (values_deg <= hi)  # wraps through ±180


def torsion_values(traj, name: str, residue: int | None) -> np.ndarray:
    """The torsion ``name`` (phi, psi, ...) of residue ``residue`` (default: the first residue
    that has it), in degrees, one per frame."""
    import mdtraj as md
    from .config import ConfigError
    idx, ang = getattr(md, TORSION_FUNCS[name])(traj)
    if idx.shape[0] == 0:
        raise ConfigError(f"states: the system has no {name} torsion")
    if residue is None:
        col = 0
    else:
        owners = [traj.topology.atom(int(q[1])).residue.index for q in idx]
        if residue not in owners:
            raise ConfigError(f"states: residue {residue} has no {name} torsion (residues with one: "
                              f"{sorted(set(owners))})")
        col = owners.index(residue)
    return np.degrees(ang[:, col])


def state_membership(traj, states: dict) -> dict[str, np.ndarray]:
    """For each named state, a boolean per frame: inside every box the state gives."""
    import mdtraj as md
    from .config import ConfigError, one_line
    out = {}
    for name, st in states.items():
        inside = np.ones(traj.n_frames, bool)
        for tors, box in st.torsion_boxes().items():
            inside &= _in_box(torsion_values(traj, tors, st.residue), box)
        if st.distance is not None:
            groups = []
            for sel in st.distance.between:
                try:
                    atoms = traj.topology.select(sel)
                except Exception as e:
                    raise ConfigError(f"states.{name}.distance: MDTraj cannot read the selection {sel!r}: "
                                      f"{one_line(e, 120)}") from None
                if len(atoms) == 0:
                    raise ConfigError(f"states.{name}.distance: the selection {sel!r} matches no atom")
                groups.append(traj.xyz[:, atoms].mean(1))
            d = np.linalg.norm(groups[0] - groups[1], axis=-1)
            inside &= (d >= st.distance.range[0]) & (d <= st.distance.range[1])
        if st.rmsd is not None:
            ref = md.load(str(st.rmsd.reference))
            atoms = traj.topology.select(st.rmsd.atoms)
            if ref.n_atoms != traj.n_atoms:
                raise ConfigError(f"states.{name}.rmsd.reference: {st.rmsd.reference} has {ref.n_atoms} atoms, "
                                  f"the system has {traj.n_atoms}")
            r = md.rmsd(traj, ref, 0, atom_indices=atoms)
            inside &= (r >= st.rmsd.range[0]) & (r <= st.rmsd.range[1])
        out[name] = inside
    return out


def check_states(cfg, bundle) -> None:
    """Evaluate the config's ``states`` on the starting structure (of the atoms that frames
    keep, ``md.save_atoms``), so that a selection that matches nothing, a torsion the system
    lacks or an RMSD reference of another size stops before any MD, not after the first
    iteration's. Raises :class:`cvflow.config.ConfigError`."""
    if not cfg.states or bundle.is_toy:
        return
    import mdtraj as md
    from .system import saved_atom_indices
    saved = saved_atom_indices(bundle, cfg.md.save_atoms)
    top = bundle.mdtraj_topology()
    pos = np.asarray(bundle.positions, np.float32)
    if saved is not None:
        top, pos = top.subset(saved), pos[saved]
    state_membership(md.Trajectory(pos[None], top), cfg.states)


def _free_energies(member: dict, w: np.ndarray, kT: float, ref: str) -> tuple[dict, dict]:
    tot = w.sum()
    pops = {k: float(w[m].sum() / tot) for k, m in member.items()}
    with np.errstate(divide="ignore"):
        dfs = {k: float(-kT * np.log(pops[k] / pops[ref])) if pops[ref] > 0 and pops[k] > 0 else float("nan")
               for k in member}
    return pops, dfs


#: a stay in a state lasts at least this long (ps) to count in :func:`state_transitions`.
#: Measured on the paper protocol's frozen stages (8 runs of 80,000 frames, 0.5 ps apart):
#: with 5-ps stays the counts were 0, 2, 11, 27, 67, 94, 118 and 168 where the crossings
#: between core regions (φ in 20–120° against φ ≤ −20° or ≥ 150°) were 0, 2, 15, 27, 67,
#: 100, 118 and 174; counting every change of box gave 99–7,264, almost all of them C5
#: frames recrossing φ = ±180°
TRANSITION_DWELL_PS = 5.0

#: a ΔF that rests on fewer transitions than this between its two states gets a warning. On
#: the paper protocol's frozen stages (19 runs of 40 ns), those with 0, 2, 11, 23 and 27
#: transitions missed the reference by 1.1–12.7 kJ/mol; the 13 within 1 kJ/mol had 57–798
#: (one run with 310 missed by 1.1: enough transitions are necessary, not sufficient;
#: README, "Transitions between states")
FEW_TRANSITIONS = 30

#: a ΔF whose two halves (first and second half of the frames) differ by more than this many
#: standard errors of their difference (each half's own block bootstrap) is said to drift.
#: On a stationary two-state series (40,000 frames, C7ax at 5 %, log-normal weights, 200
#: seeds each) 1.5 %, 0 % and 1.0 % of runs with 30, 100 and 300 transitions exceed 3; where
#: C7ax's share halves in the second half (ΔF moves by kT ln 2), 2 %, 13 % and 53 % do, and
#: where it falls to a quarter, 12 %, 67 % and 99 % (scripts/drift_check.py; README, "The two halves")
DRIFT_Z = 3.0


def state_transitions(member: dict[str, np.ndarray], min_dwell: int) -> dict[str, int]:
    """Transitions between the reference state (the first) and each other state, in frame
    order: a frame belongs to a state when it is in that state's box alone, and only stays of
    at least ``min_dwell`` consecutive frames count, so a trajectory that recrosses a shared
    box edge (C7eq {phi: [-180, 0]} and C7ax {phi: [0, 180]} at ±180°, where C5 lives) or
    makes a brief excursion does not add transitions. Counts both directions."""
    names = list(member)
    stack = np.array([member[k] for k in names])
    label = np.where(stack.sum(0) == 1, stack.argmax(0), -1)
    if not len(label):
        return {k: 0 for k in names[1:]}
    starts = np.r_[0, np.flatnonzero(np.diff(label)) + 1]
    lengths = np.diff(np.r_[starts, len(label)])
    stays = label[starts][(lengths >= min_dwell) & (label[starts] >= 0)]
    # consecutive stays in different states: a transition between them
    a, b = stays[:-1], stays[1:]
    moved = a != b
    out = {}
    for i, k in enumerate(names[1:], start=1):
        out[k] = int(np.count_nonzero(moved & (((a == 0) & (b == i)) | ((a == i) & (b == 0)))))
    return out


def frozen_extension(transitions: dict[str, int], steps: int, target: int, max_steps: int,
                     granularity: int = 1, reference: str = "the reference state") -> tuple[int, str | None]:
    """How long a frozen-bias stage should run in all, after ``steps`` steps that made
    ``transitions`` (state → count with the reference state, :func:`state_transitions`):
    ``steps`` when every count reaches ``target``; else a fifth more than the steps that the
    slowest pair's rate so far says it needs for ``target`` (a Poisson count that just
    reaches its expectation falls short half the time), and at least a quarter more than
    ``steps``, up to ``max_steps``, a multiple of ``granularity``. No extension when
    ``steps`` already reaches ``max_steps``, or when that rate says ``max_steps`` is too
    short (a pair with no transition at all, or too few to reach ``target`` within it): the
    stage ends and its ΔF carries the usual warning. A ``target`` above
    :data:`FEW_TRANSITIONS` (asked for a smaller error bar) that the cap cannot reach still
    goes on to the cap when the rate says the cap gives at least :data:`FEW_TRANSITIONS`.
    Returns the new length and a line that says why (None when it has enough)."""
    if not transitions:
        return steps, None
    name, fewest = min(transitions.items(), key=lambda kv: kv[1])
    if fewest >= target:
        return steps, None
    made = f"{fewest} transition(s) between {reference} and {name} in {steps:,} steps, fewer than {target}"
    if steps >= max_steps:
        return steps, f"{made}; the stage is at its maximum length ({max_steps:,} steps): not extended"
    need = math.inf if fewest == 0 else steps * target / fewest
    if need > max_steps:
        at = "no transition yet" if fewest == 0 else f"at this rate {target} need about {need:,.0f} steps"
        at_cap = fewest * max_steps / steps
        if at_cap < min(target, FEW_TRANSITIONS):
            return steps, f"{made}; {at}, beyond the maximum length ({max_steps:,} steps): not extended"
        return max_steps, (f"{made}; {at}, beyond the maximum length: going on to it ({max_steps:,} steps, "
                           f"about {at_cap:.0f} at this rate)")
    new = max(1.2 * need, 1.25 * steps)
    new = _rounded_up(new, granularity, max_steps)
    return new, f"{made}; at this rate {target} need about {need:,.0f} steps: going on to {new:,}"


def _rounded_up(steps: float, granularity: int, max_steps: int) -> int:
    """``steps`` rounded up to a multiple of ``granularity``, at most ``max_steps``."""
    return min(max_steps, int(math.ceil(steps / granularity)) * granularity)


def drift_extension(delta_f: dict, steps: int, max_steps: int, granularity: int = 1,
                    reference: str = "the reference state") -> tuple[int, str | None]:
    """How long a frozen-bias stage should run in all when, after ``steps`` steps, a ΔF
    between states drifts (:func:`drifts`: its two halves differ by more than
    :data:`DRIFT_Z` standard errors): twice as long, up to ``max_steps``, a multiple of
    ``granularity``, so that its halves then compare what it has sampled with as much again.
    ``steps`` and None when nothing drifts or the stage is at its maximum length (the final
    analysis's warning then says so). The most drifting ΔF names the reason."""
    drifting = [(k, d) for k, d in delta_f.items() if drifts(d)]
    if not drifting or steps >= max_steps:
        return steps, None
    name, d = max(drifting, key=lambda kv: kv[1]["halves_z"])
    new = _rounded_up(2 * steps, granularity, max_steps)
    h1, h2 = d["halves"]
    return new, (f"ΔF({name} − {reference}) drifts: {h1:.2f} kJ/mol on the first half of the frames and {h2:.2f} "
                 f"on the second, {d['halves_z']:.1f} standard errors apart: going on to {new:,} steps")


def state_free_energies(member: dict[str, np.ndarray], w: np.ndarray, kT: float, blocks: int = 10,
                        resamples: int = 200, seed: int = 0, min_dwell: int | None = None) -> dict:
    """Populations and ΔF (kJ/mol, relative to the first state) with block-bootstrap errors.

    Parameters
    ----------
    member : name → (n,) bool, which frames are in each state
    w : (n,) array
        Frame weights (any normalisation); frames in time order.
    kT : float, kJ/mol
    min_dwell : frames in a row that make a stay in a state (:func:`state_transitions`);
        when given (frames of a trajectory), each ΔF records its ``transitions``

    Each ΔF also records ``halves``: its value on the first and on the second half of the
    frames alone (the usual check that an estimate is not drifting: a λ held in one region
    through the second half, as in seed 9 of the paper protocol, moves them far apart), and
    ``halves_errors`` (σ₁, σ₂: each half's own block bootstrap) and ``halves_z``: their
    difference over its standard error √(σ₁² + σ₂²), with √2 σ for a half whose own error is
    undetermined (σ the whole's); above :data:`DRIFT_Z` the estimate drifts (:func:`drifts`).
    ``halves_weight``: each half's share of the weight.
    """
    names = list(member)
    ref = names[0]
    w = np.asarray(w, float)
    n = len(w)
    pops, dfs = _free_energies(member, w, kT, ref)
    edges = np.linspace(0, n, min(blocks, n) + 1).astype(int)
    rng = np.random.default_rng(seed)
    nb = len(edges) - 1
    boot_p, boot_f, done = _block_bootstrap(member, w, kT, ref, edges, resamples, rng)
    in_blocks = {k: sum(bool(w[edges[b]:edges[b + 1]][m[edges[b]:edges[b + 1]]].sum() > 0) for b in range(nb))
                 for k, m in member.items()}

    def err(vals):
        vals = np.asarray(vals, float)
        vals = vals[np.isfinite(vals)]
        return float(vals.std(ddof=1)) if len(vals) > 1 else float("nan")

    moves = state_transitions(member, min_dwell) if min_dwell is not None else {}
    mid = n // 2
    parts = (slice(0, mid), slice(mid, n)) if mid >= 1 else ()
    # each half's ΔF and its own block-bootstrap error: the whole's error includes the drift
    # it is to detect (with 10 blocks, |h1 − h2| / 2σ_whole cannot exceed about √10)
    halves, half_errors = [], []
    for part in parts:
        hm, hw = {k: m[part] for k, m in member.items()}, w[part]
        halves.append(_free_energies(hm, hw, kT, ref)[1])
        hedges = np.linspace(0, len(hw), min(blocks, len(hw)) + 1).astype(int)
        boot = _block_bootstrap(hm, hw, kT, ref, hedges, resamples, rng)[1]
        half_errors.append({k: err(v) if np.all(np.isfinite(v)) else float("nan") for k, v in boot.items()})

    def delta_f_entry(k):
        entry = {"value": dfs[k], "error": err(boot_f[k]), "blocks_with_weight": {ref: in_blocks[ref], k: in_blocks[k]}}
        if k in moves:
            entry["transitions"] = moves[k]
        if halves:
            entry["halves"] = [h[k] for h in halves]
        lost = int(np.sum(~np.isfinite(boot_f[k])))
        if lost and np.isfinite(dfs[k]):
            # resamples without weight in one of the two states have no ΔF; the spread of
            # the rest is not an error bar (seed 5 of ala2-paper: C7eq in 1 of 10 blocks, ± 0.0002)
            rare = min((ref, k), key=in_blocks.get)
            entry["error"] = float("nan")
            entry["error_note"] = (f"{rare} has weight in {in_blocks[rare]} of {nb} blocks of frames, so "
                                   f"{lost} of {done} block resamples had none; sample longer")
        if half_errors:
            entry["halves_errors"] = [e[k] for e in half_errors]
        # a half whose own resamples lost a state (its error undetermined) counts √2 times the
        # whole's error, what half the frames would give were they stationary
        spread = float(np.hypot(*[e[k] if np.isfinite(e[k]) else np.sqrt(2.0) * entry["error"]
                                  for e in half_errors])) if half_errors else float("nan")
        if halves and np.all(np.isfinite(entry["halves"])) and np.isfinite(spread) and spread > 0:
            entry["halves_z"] = float(abs(entry["halves"][1] - entry["halves"][0]) / spread)
        return entry
    total = w.sum()
    return {"reference_state": ref, "frames": int(n), "blocks": nb,
            "halves_weight": [float(w[part].sum() / total) if total > 0 else float("nan") for part in parts],
            "populations": {k: {"value": pops[k], "error": err(boot_p[k])} for k in names},
            "delta_f": {k: delta_f_entry(k) for k in names if k != ref},
            "units": "kJ/mol; delta_f = F(state) - F(reference_state); errors: block bootstrap standard deviation, "
                     "undetermined (null, with error_note) when a block resample has no weight in a state"}


def _block_bootstrap(member: dict[str, np.ndarray], w: np.ndarray, kT: float, ref: str, edges: np.ndarray,
                     resamples: int, rng) -> tuple[dict, dict, int]:
    """Populations and ΔF of ``resamples`` resamples of the blocks between ``edges`` (name →
    list of values each), and how many resamples had weight at all."""
    boot_p = {k: [] for k in member}
    boot_f = {k: [] for k in member}
    nb = len(edges) - 1
    done = 0
    for _ in range(resamples if nb >= 2 else 0):
        pick = rng.integers(nb, size=nb)
        idx = np.concatenate([np.arange(edges[b], edges[b + 1]) for b in pick])
        if w[idx].sum() <= 0:
            continue
        done += 1
        p, f = _free_energies({k: m[idx] for k, m in member.items()}, w[idx], kT, ref)
        for k in member:
            boot_p[k].append(p[k])
            boot_f[k].append(f[k])
    return boot_p, boot_f, done


def delta_f_text(d: dict) -> str | None:
    """"value ± error kJ/mol" of a ΔF entry, "value kJ/mol, error undetermined: …" when its
    block resamples could not bound it (``error_note``), or None where it is undefined (NaN,
    or null in a JSON file read back: a state without weight)."""
    v, e = d.get("value"), d.get("error")
    if v is None or not np.isfinite(v):
        return None
    if d.get("error_note"):
        text = f"{v:.2f} kJ/mol, error undetermined: {d['error_note']}"
    else:
        text = f"{v:.2f} ± {e:.2f} kJ/mol" if e is not None and np.isfinite(e) else f"{v:.2f} kJ/mol"
    if d.get("halves"):
        text += " (halves " + ", ".join("undefined" if h is None or not np.isfinite(h) else f"{round(h, 2) + 0.0:.2f}"
                                        for h in d["halves"]) + ")"
    if drifts(d):
        text += f", drifting: its halves differ by {d['halves_z']:.1f} standard errors"
    t = d.get("transitions")
    if t is not None:
        text += (f", only {t} transition{'' if t == 1 else 's'} between them: too few for the error bar to hold"
                 if t < FEW_TRANSITIONS else f", {t} transitions")
    return text


def drifts(d: dict) -> bool:
    """Whether a ΔF entry's two halves differ by more than :data:`DRIFT_Z` standard errors of
    their difference (a state held through one half: the estimate is not converged)."""
    z = d.get("halves_z")
    return z is not None and z > DRIFT_Z


#: a half of the frames with less than this share of the weight holds next to nothing
NO_WEIGHT = 1e-6


def weightless_half_hint(states: dict) -> str | None:
    """What to say instead of "sample longer" when one half of the frames carries almost no
    weight (``halves_weight`` under :data:`NO_WEIGHT`): the bias held the system where the
    unbiased ensemble hardly goes (seed 9 of the paper protocol: 3.6·10⁻¹⁶ in its second
    half), which more of the same sampling does not mend. None otherwise."""
    shares = states.get("halves_weight") or []
    if not shares or not all(np.isfinite(shares)) or min(shares) >= NO_WEIGHT:
        return None
    which = "first" if shares[0] < shares[1] else "second"
    return (f"the {which} half of the frames carries {min(shares):.2g} of the weight: the bias held the system where "
            "the unbiased ensemble hardly goes, which sampling longer does not mend; a frozen bias filled without a "
            "ceiling does that (convergence.production_frozen_fill_kT, 20 by default), else check that the final CV "
            "separates these states (the report's state and Ramachandran plots)")


def population_text(p: dict) -> str:
    """"value ± error" of a population entry (the error omitted when it is undefined)."""
    e = p.get("error")
    return f"{p['value']:.4f} ± {e:.4f}" if e is not None and np.isfinite(e) else f"{p['value']:.4f}"


def format_states(res: dict) -> list[str]:
    """Lines for the terminal: each state's population and ΔF against the reference state."""
    ref = res["reference_state"]
    lines = []
    for k, p in res["populations"].items():
        line = f"{k:>12}: population {population_text(p)}"
        if k != ref:
            text = delta_f_text(res["delta_f"][k])
            if text is not None:
                line += f"   ΔF({k} − {ref}) = {text}"
            else:  # a state without weight: no free energy difference, say which
                empty = [s for s in (ref, k) if res["populations"][s]["value"] <= 0]
                line += (f"   ΔF({k} − {ref}) undefined: no weight in {' and '.join(empty)} "
                         "(not sampled in these frames)")
        lines.append(line)
    return lines
