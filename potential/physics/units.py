"""Physical constants of the SO3LR terms: CODATA-2014 values, identical to ``ase.units``, which the
reference code (mlff) uses. Lengths Å, energies eV, charges e."""

BOHR: float = 0.5291772105638411  # Å per Bohr (ase.units.Bohr)
HARTREE: float = 27.211386024367243  # eV per Hartree (ase.units.Hartree)
FINE_STRUCTURE: float = 0.007297352566206496  # ase.units.alpha
KE: float = 14.399645351950548  # Coulomb constant e²/(4π ε0) in eV·Å/e² (= HARTREE * BOHR)
