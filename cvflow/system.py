"""Config → OpenMM System, topology, positions and the atoms the features use.

Molecules come from a PDB file and OpenMM force-field XML files, in vacuum, implicit
solvent or an explicit water box with PME. Toys are one particle moving in the plane
on an analytic potential V(x, y) in kJ/mol and nm. z is held at 0 by a harmonic term
that does not couple to x or y: its stiffness ``cvflow_kz`` is set per run to m/Δt², the
stiffest that the time step integrates safely (ω Δt = 1), by :func:`confine_toy`.
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import openmm as mm
from openmm import app
from openmm import unit as u

from .config import ConfigError, SystemConfig, one_line

Z_RESTRAINT = "0.5*cvflow_kz*z^2"
Z_STIFFNESS = "cvflow_kz"


@dataclass
class SystemBundle:
    """What the sampler and the featuriser need to know about a system."""
    system: mm.System
    topology: app.Topology
    positions: np.ndarray  # (n_atoms, 3) nm
    is_toy: bool
    potential: str | None = None
    box: np.ndarray | None = None
    feature_atoms: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    @property
    def n_atoms(self) -> int:
        return self.system.getNumParticles()

    def mdtraj_topology(self):
        import mdtraj as md
        return md.Topology.from_openmm(self.topology)


def build_system(cfg: SystemConfig, atoms: str = "backbone") -> SystemBundle:
    """Build the system described by ``cfg``; ``atoms`` is the MDTraj selection for features."""
    return _build_toy(cfg) if cfg.is_toy else _build_molecule(cfg, atoms)


def _build_toy(cfg: SystemConfig) -> SystemBundle:
    system = mm.System()
    system.addParticle(cfg.mass)
    force = mm.CustomExternalForce(f"({cfg.potential}) + {Z_RESTRAINT}")
    force.addParticle(0, [])
    force.addGlobalParameter(Z_STIFFNESS, 1.0)
    force.setName("toy-potential")
    system.addForce(force)
    try:
        # validate the expression now: OpenMM parses it when a context is made
        ctx = mm.Context(system, mm.VerletIntegrator(0.001), mm.Platform.getPlatformByName("Reference"))
        ctx.setPositions([[0.0, 0.0, 0.0]])
        ctx.getState(getEnergy=True)
        del ctx
    except Exception as e:  # OpenMM raises a generic exception for a bad expression
        raise ConfigError(f"system.potential: OpenMM cannot use this expression: {one_line(e)}") from None
    top = app.Topology()
    chain = top.addChain()
    res = top.addResidue("TOY", chain)
    top.addAtom("P", app.element.carbon, res)
    start = np.zeros((1, 3))
    if cfg.start is not None:
        start[0, :2] = cfg.start
    return SystemBundle(system, top, start, True, cfg.potential, feature_atoms=np.array([0]))


def toy_positions(xy: np.ndarray) -> np.ndarray:
    """A toy's points, rows of (x, y) or (x, y, z) in nm, as positions (n, 1, 3) of its one
    particle (z = 0 where not given): what its CV files and energies take."""
    xy = np.asarray(xy, float)
    pos = np.zeros((len(xy), 1, 3))
    pos[:, 0, :xy.shape[1]] = xy
    return pos


def toy_z_stiffness(mass_amu: float, timestep_ps: float) -> float:
    """kJ/mol/nm² of the z restraint of a toy: m/Δt², so that ω Δt = 1 (stable; the thermal
    spread of z is then √(kT/m) Δt, e.g. 0.01 nm at kT = 1 kJ/mol, 1 amu and 10 fs)."""
    return float(mass_amu) / float(timestep_ps) ** 2


def confine_toy(context: mm.Context, bundle: "SystemBundle", timestep_ps: float) -> None:
    """Hold a toy's particle in the plane z = 0 for a run with this time step."""
    if bundle.is_toy:
        mass = bundle.system.getParticleMass(0).value_in_unit(u.dalton)
        context.setParameter(Z_STIFFNESS, toy_z_stiffness(mass, timestep_ps))


def _build_molecule(cfg: SystemConfig, atoms: str) -> SystemBundle:
    pdb_path = Path(cfg.pdb)
    if not pdb_path.is_file():  # a run's record whose PDB has moved since, and no copy kept
        raise ConfigError(f"system.pdb: file not found: {pdb_path}")
    try:
        pdb = app.PDBFile(str(pdb_path))
    except Exception as e:
        raise ConfigError(f"system.pdb: cannot read {pdb_path}: {one_line(e)}") from None
    files = list(cfg.forcefield)
    if cfg.solvent == "implicit":
        files.append(cfg.implicit_model)
    if cfg.solvent == "explicit":
        files.append(cfg.water_model)
    try:
        ff = app.ForceField(*files)
    except (ValueError, OSError, FileNotFoundError) as e:
        bad = next((f for f in files if not _ff_exists(f)), files)
        raise ConfigError(f"system.forcefield: cannot load force-field file {bad}: {one_line(e)}") from None
    topology, positions = pdb.topology, pdb.positions
    if cfg.solvent == "explicit":
        modeller = app.Modeller(topology, positions)
        try:
            modeller.addSolvent(ff, padding=cfg.padding * u.nanometer)
        except ValueError as e:
            raise ConfigError(f"system: cannot solvate {pdb_path}: {_template_message(e)}") from None
        topology, positions = modeller.topology, modeller.positions
    constraints = {"none": None, "HBonds": app.HBonds, "AllBonds": app.AllBonds, "HAngles": app.HAngles}[cfg.constraints]
    kwargs = dict(constraints=constraints, rigidWater=True)
    if cfg.solvent == "explicit":
        kwargs.update(nonbondedMethod=app.PME, nonbondedCutoff=cfg.cutoff * u.nanometer)
    else:
        kwargs.update(nonbondedMethod=app.NoCutoff)
    try:
        system = ff.createSystem(topology, **kwargs)
    except ValueError as e:
        raise ConfigError(f"system.pdb: the force field cannot parametrise {pdb_path.name}: {_template_message(e)}") from None
    pos = np.array(positions.value_in_unit(u.nanometer))
    import mdtraj as md
    mdtop = md.Topology.from_openmm(topology)
    try:
        sel = mdtop.select(atoms)
    except Exception as e:
        raise ConfigError(f"features.atoms: MDTraj cannot read the selection {atoms!r}: {one_line(e)}") from None
    if len(sel) < 3:
        raise ConfigError(f"features.atoms: the selection {atoms!r} matches {len(sel)} atoms; need at least 3")
    box = None
    if cfg.solvent == "explicit":
        box = np.array(topology.getPeriodicBoxVectors().value_in_unit(u.nanometer))
        half = float(np.diag(box).min()) / 2  # OpenMM's limit for the cutoff (reduced box vectors)
        if cfg.cutoff > half:
            raise ConfigError(f"system.cutoff: {cfg.cutoff:g} nm is more than half the water box "
                              f"({2 * half:.3g} nm across with system.padding {cfg.padding:g} nm); "
                              f"lower the cutoff to {half:.3g} nm or less, or raise the padding")
    return SystemBundle(system, topology, pos, False, None, box, np.asarray(sel, np.int64))


#: single-atom ion residues that a solvated system's frames leave out by default
ION_RESIDUES = {"NA", "CL", "K", "MG", "CA", "ZN", "LI", "RB", "CS", "F", "BR", "I", "Na+", "Cl-", "K+"}


def saved_atom_indices(bundle: SystemBundle, selection: str | None) -> np.ndarray | None:
    """The atoms each frame keeps (``md.save_atoms``), sorted indices; None: every atom.

    ``None`` (the default): every atom, except in a box of water, where the frames keep the
    solute (not water, not single-atom ions) and the feature atoms. ``"all"``: every atom.
    Any other value is an MDTraj selection; the feature atoms are always added, since the
    features (and the learned CV) are computed from them."""
    if bundle.is_toy or selection == "all":
        return None
    top = bundle.mdtraj_topology()
    if selection is None:
        if bundle.box is None:
            return None
        keep = [a.index for a in top.atoms if not a.residue.is_water
                and not (a.residue.n_atoms == 1 and a.residue.name in ION_RESIDUES)]
    else:
        try:
            keep = top.select(selection)
        except Exception as e:
            raise ConfigError(f"md.save_atoms: MDTraj cannot read the selection {selection!r}: {one_line(e)}") from None
        if len(keep) == 0:
            raise ConfigError(f"md.save_atoms: the selection {selection!r} matches no atom")
    idx = np.union1d(np.asarray(keep, np.int64), bundle.feature_atoms)
    return None if len(idx) == bundle.n_atoms else idx


def _ff_exists(name: str) -> bool:
    try:
        app.ForceField(name)
        return True
    except Exception:
        return False


def _template_message(e: Exception) -> str:
    """OpenMM's first sentence, which names the residue (e.g. 'No template found for residue 1 (ALA)')."""
    msg = one_line(e, 400)
    return msg.split(".  ")[0]


def clone_system(system: mm.System) -> mm.System:
    """A deep copy of an OpenMM System (to add forces without touching the original)."""
    return mm.XmlSerializer.deserialize(mm.XmlSerializer.serialize(system))


def choose_platform(name: str, n_atoms: int, system: mm.System | None = None) -> mm.Platform:
    """The OpenMM platform to use. ``auto``: Reference for systems of ≤ 100 particles
    without implicit solvent (alanine dipeptide in vacuum, measured: Reference 45k, CPU 10k
    steps/s on this project's 2-core VM; on an H100 machine Reference 88k, CUDA 33k);
    otherwise a GPU platform when present (implicit solvent on the H100: CUDA 16.7k, CPU
    3.1k), else CPU (implicit solvent, 2-core VM: CPU 3.5k, Reference 0.3k steps/s)."""
    has_gb = system is not None and any("GB" in type(system.getForce(i)).__name__
                                        for i in range(system.getNumForces()))
    available = [mm.Platform.getPlatform(i).getName() for i in range(mm.Platform.getNumPlatforms())]
    if name != "auto":
        why = platform_problem(name)
        if why is not None:
            usable = [p for p in available if p == "Reference" or platform_problem(p) is None]
            raise ConfigError(f"md.platform: OpenMM platform {name!r} cannot be used here: {why} "
                              f"(usable: {', '.join(usable)}; or md.platform: auto)")
        return mm.Platform.getPlatformByName(name)
    if "CPU" not in available or (n_atoms <= 100 and not has_gb):
        return mm.Platform.getPlatformByName("Reference")
    for gpu in ("CUDA", "OpenCL"):
        if gpu in available and platform_problem(gpu) is None:
            return mm.Platform.getPlatformByName(gpu)
    return mm.Platform.getPlatformByName("CPU")


@functools.lru_cache(maxsize=None)
def platform_problem(name: str) -> str | None:
    """None when OpenMM platform ``name`` can create a Context here; else why not, in one
    line (the plugin's load failure, or the error from creating a Context)."""
    available = [mm.Platform.getPlatform(i).getName() for i in range(mm.Platform.getNumPlatforms())]
    if name not in available:
        failures = [f for f in mm.Platform.getPluginLoadFailures() if name.lower() in f.lower()]
        if failures:
            return "its plugin did not load: " + one_line(failures[0], 200)
        hint = " (the CUDA platform comes with pip install 'openmm[cuda12]')" if name == "CUDA" else ""
        return "OpenMM has no such platform installed" + hint
    try:
        s = mm.System()
        s.addParticle(1.0)
        mm.Context(s, mm.VerletIntegrator(0.001), mm.Platform.getPlatformByName(name))
        return None
    except Exception as e:
        return one_line(e, 200)


def usable_cores() -> int:
    """Cores this process may run on (its affinity: a batch job's allocation, a container's
    limit, taskset; not the whole node)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def platform_properties(platform: mm.Platform, threads: int | None) -> dict:
    """The Context properties for ``platform``. On the CPU platform: ``md.threads`` and
    ``DeterministicForces``, which costs nothing measurable (alanine dipeptide in 85 waters:
    about 900 steps/s either way). Without it, even one thread does not give the same
    trajectory twice in water (the nonbonded forces differ in their last bits from one
    Context to the next); with it, one thread does, and two threads still do not, in vacuum
    or in water (scripts/cpu_determinism.py): the trajectories part within a few thousand
    steps."""
    if platform.getName() != "CPU":
        return {}
    props = {"DeterministicForces": "true"}
    if threads:
        props["Threads"] = str(threads)
    return props


def cpu_reproducible(platform: mm.Platform, threads: int | None) -> bool:
    """Whether MD on ``platform`` gives the same bits run after run (see
    :func:`platform_properties`): Reference always; CPU on one thread only."""
    if platform.getName() == "Reference":
        return True
    if platform.getName() == "CPU":
        n = threads or int(platform.getPropertyDefaultValue("Threads") or 0) or os.cpu_count() or 1
        return n == 1
    return False
