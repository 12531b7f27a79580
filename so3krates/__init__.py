"""so3krates: So3krates / SO3LR equivariant-transformer force fields with Euclidean fast attention.

Units everywhere inside the package: positions Å, energies eV, forces eV/Å, charges e.
Subpackages: ``so3krates.potential`` (model, training), ``so3krates.export`` (TorchScript files),
``so3krates.openmm`` (OpenMM forces), ``so3krates.ase`` (ASE calculator); the LAMMPS pair style
ships as a plugin inside this package (see ``so3krates.lammps``).
"""

__version__ = "0.1.0"
