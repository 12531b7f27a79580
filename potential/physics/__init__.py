"""Physical energy terms of SO3LR: ZBL repulsion, electrostatics of predicted charges, vdW-QDO dispersion.

A port of mlff's ``ZBLRepulsionSparse``, ``ElectrostaticEnergySparse`` and ``DispersionEnergySparse``
(tag ``v1.0-lrs-gems``, the version SO3LR pinned for its published reference outputs). Each term is a
*pair energy* ``E_ij`` of an unordered pair of atoms (distances Å, charges e, energies eV); the model
(:mod:`so3krates.potential.model`) credits half of it to each atom of the pair. Electrostatics and
dispersion also give analytic first derivatives (``pair_energy_and_derivatives``), used by the
memory-lean inference pass. Everything is TorchScript-able and works in float32 and float64.
"""
