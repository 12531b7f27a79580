#!/usr/bin/env python
"""Write the LAMMPS setup of a SO3LR example: data file (atom_style atomic) + PDB + the input files.

    python examples/lammps/build.py peptide --out runs/lammps/peptide      # Ac-Ala3-NHMe in water
    python examples/lammps/build.py ala15   --out runs/lammps/ala15        # Ala15 helix in water

Systems come from ``so3krates.systems`` (the builders the GEMS examples and benchmarks use): ``peptide`` is
``systems.ala3`` (Ac-Ala3-NHMe, PPII, amber14 hydrogens, ``Modeller.addSolvent`` TIP3P; ``--padding``
Å around the peptide, default 15), ``ala15`` is ``systems.ala15`` (``ala15_folded.xyz`` of the
SO3LR reference + tiled TIP3P; ``--padding`` Å, default 10). The data file is written by
``systems.write_lammps_data`` (one atom type per element, by atomic number: ``H C N O``), and
``in.<system>.metal.lmp`` / ``in.<system>.real.lmp`` are copied next to it. With ``--model`` the
model's elements are checked against the system (``_gems.check_elements``).

Units: positions Å and masses g/mol in the data file (valid for ``units metal`` and ``units real``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT / "examples" / "gems"))  # _gems.check_elements (the GEMS examples' driver)

from so3krates import systems  # noqa: E402

SYSTEMS = {
    "peptide": ("Ac-Ala3-NHMe in TIP3P water", 15.0),
    "ala15": ("15-residue alanine helix (ala15_folded.xyz) in TIP3P water", 10.0),
}


def build(name: str, padding: float):
    """The MolSystem of example ``name`` with ``padding`` Å of water around the solute."""
    if name == "peptide":
        system = systems.ala3(padding_nm=padding / 10.0)
    elif name == "ala15":
        system = systems.ala15(padding=padding)
    else:
        raise SystemExit(f"error: unknown system {name!r}; choose one of {', '.join(SYSTEMS)}")
    system.name = name
    return system


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(prog="build.py", description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("system", choices=sorted(SYSTEMS), help="which example")
    p.add_argument("--out", default=None, help="output folder (default runs/lammps/<system>)")
    p.add_argument("--padding", type=float, default=None,
                   help="water around the solute, Å (default: 15 for peptide, 10 for ala15)")
    p.add_argument("--model", default=None, help="exported model (so3lr.pt) to check the elements against")
    args = p.parse_args(argv)

    padding = args.padding if args.padding is not None else SYSTEMS[args.system][1]
    out = Path(args.out) if args.out else ROOT / "runs" / "lammps" / args.system
    out.mkdir(parents=True, exist_ok=True)
    system = build(args.system, padding)
    if args.model:
        import _gems

        _gems.check_elements(system, _gems.model_metadata(args.model))
    elements = systems.write_lammps_data(system, out / f"{args.system}.data")
    systems.write_pdb(system, out / f"{args.system}.pdb")
    inputs = []
    for units in ("metal", "real"):
        src = HERE / f"in.{args.system}.{units}.lmp"
        shutil.copy(src, out / src.name)
        inputs.append(src.name)
    info = {"system": args.system, "description": system.description, "atoms": system.n_atoms,
            "box_A": [float(v) for v in system.cell.diagonal()], "elements": elements,
            "data": f"{args.system}.data", "inputs": inputs}
    (out / "system.json").write_text(json.dumps(info, indent=1))
    print(f"wrote {out / info['data']} ({system.n_atoms} atoms, box "
          f"{' x '.join(f'{v:.1f}' for v in info['box_A'])} Å, elements {' '.join(elements)}) and {', '.join(inputs)}")
    print(f"run:  cd {out} && mpirun -np 2 lmp -in {inputs[0]} -var model /path/to/so3lr.pt")
    return info


if __name__ == "__main__":
    main()
