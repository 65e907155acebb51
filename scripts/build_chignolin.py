#!/usr/bin/env python
"""Build chignolin (GYDPETGTWG) from its sequence alone, offline, for configs/chignolin.yaml.

    python scripts/build_chignolin.py [--out systems/chignolin/chignolin.pdb]

1. PeptideBuilder lays out the chain from the sequence, as an extended strand (φ = −120°,
   ψ = 130°; proline φ = −65°): the unfolded state, with no knowledge of the fold.
2. PDBFixer adds the missing heavy atoms (the C-terminal OXT) and the hydrogens at pH 7
   (charged termini, Asp and Glu charged: net charge −2).
3. OpenMM minimises it with amber14 in implicit solvent (OBC2), so that the first MD
   steps start from a relaxed chain.

The result is the solute only; cvflow solvates it at load time (system.solvent: explicit,
a TIP3P box with `padding`, neutralised with Na+). Needs the `build` extra
(pip install -e ".[build]": PeptideBuilder and pdbfixer); the built PDB is shipped, so
running the example needs neither.
"""
from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SEQUENCE = "GYDPETGTWG"


def build(out: Path) -> None:
    import openmm as mm
    from Bio.PDB import PDBIO
    from openmm import app
    from openmm import unit as u
    from pdbfixer import PDBFixer
    import PeptideBuilder
    from PeptideBuilder import Geometry

    geos = []
    for aa in SEQUENCE:
        g = Geometry.geometry(aa)
        g.phi, g.psi_im1 = (-65.0 if aa == "P" else -120.0), 130.0
        geos.append(g)
    structure = PeptideBuilder.initialize_res(geos[0])
    for g in geos[1:]:
        PeptideBuilder.add_residue(structure, g)
    buf = io.StringIO()
    pio = PDBIO()
    pio.set_structure(structure)
    pio.save(buf)
    fixer = PDBFixer(pdbfile=io.StringIO(buf.getvalue()))
    fixer.findMissingResidues()
    fixer.findMissingAtoms()
    fixer.addMissingAtoms()
    fixer.addMissingHydrogens(7.0)
    ff = app.ForceField("amber14-all.xml", "implicit/obc2.xml")
    system = ff.createSystem(fixer.topology, nonbondedMethod=app.NoCutoff, constraints=app.HBonds)
    ctx = mm.Context(system, mm.VerletIntegrator(0.001), mm.Platform.getPlatformByName("Reference"))
    ctx.setPositions(fixer.positions)
    mm.LocalEnergyMinimizer.minimize(ctx, 1.0, 2000)
    state = ctx.getState(getPositions=True, getEnergy=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w") as fh:
        app.PDBFile.writeFile(fixer.topology, state.getPositions(), fh, keepIds=False)
    charge = sum(f.getParticleParameters(i)[0].value_in_unit(u.elementary_charge)
                 for f in system.getForces() if isinstance(f, mm.NonbondedForce) for i in range(f.getNumParticles()))
    print(f"{out}: {SEQUENCE}, {fixer.topology.getNumAtoms()} atoms, net charge {charge:+.0f} e, "
          f"energy after minimisation {state.getPotentialEnergy().value_in_unit(u.kilojoule_per_mole):.1f} kJ/mol")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(ROOT / "systems" / "chignolin" / "chignolin.pdb"))
    args = ap.parse_args()
    try:
        build(Path(args.out))
    except ImportError as e:
        print(f"error: {e.name} is missing; install the build extra: pip install -e \".[build]\"", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
