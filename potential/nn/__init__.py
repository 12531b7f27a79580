"""Network blocks of So3krates, in the order the data flows through them:

``basis`` (radial bases, cutoff functions, spherical harmonics) → ``embedding`` (atom types, total
charge and spin) → per layer ``attention`` (pair messages on the local graph, exchange block) and
``efa`` / ``efa_periodic`` / ``efa_block`` (Euclidean fast attention, global) combined by ``layer`` →
``readout`` (per-atom energy, partial charges, Hirshfeld ratios). ``exact`` and ``activation`` are
shared helpers; ``lebedev`` holds the spherical quadratures of EFA.
"""
