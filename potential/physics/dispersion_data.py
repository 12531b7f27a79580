"""Free-atom reference data for the SO3LR / MBD-style dispersion term.

Static dipole polarisabilities ``alpha_0`` (Bohr^3) and homonuclear C6 coefficients
(Hartree * Bohr^6) of the free neutral atoms H (Z=1) ... No (Z=102), as used by the
Tkatchenko-Scheffler (TS) scheme.

Source: the ``alpha_0(TS)`` and ``C6(TS)`` columns of ``vdw-params.csv`` shipped in the
public PyPI package ``pymbd`` 0.12.8 (libMBD, Mozilla Public License 2.0), neutral-atom rows
(N == Z). The table below was generated mechanically from that file; regenerate with::

    pip download pymbd==0.12.8 --no-deps   # sdist; data in src/pymbd/vdw-params.csv
    # keep rows with N == Z and 1 <= Z <= 102; columns symbol, Z, alpha_0(TS), C6(TS)

Agreement with the free-atom table of the reference JAX code (mlff ``ref.dat``): identical
for all elements except Y, Nb, Mo, Tc, Ru, In, Sn, Sb, W, Os, Po (differences in the last
printed digit only, e.g. Nb alpha 101.603 vs 101.6) and Cs (alpha 427.12 / C6 6582.08 here vs
399.9 / 6846 there). None of these are elements SO3LR was trained on.

``ase.calculators.vdwcorrection.vdWDB_alphaC6`` (ASE 3.29, Chu & Dalgarno 2004 + Ruiz 2012)
agrees for H, B, C, N, O, F, Al, Si, P, S, Cl, Sc-Zn, As, Se, Br, Ag, I, Au, but differs for
He, Li, Be, Ne, Na, Mg, Ar, Ca, Kr, Sr, Pd, Te, Pt and lacks K, Rb, Cs and most heavy
elements -- so it is not used as the source (Li, Na, Mg, K, Ca are SO3LR elements).

Units: atomic units (Bohr^3 and Hartree * Bohr^6). Conversion to Angstrom / eV is done in
:mod:`so3krates.potential.longrange` with the CODATA-2014 constants the reference uses.
"""
from typing import List, Tuple

# (Z, symbol, alpha_0 [Bohr^3], C6 [Hartree * Bohr^6])
FREE_ATOM_TABLE: Tuple[Tuple[int, str, float, float], ...] = (
    (1, 'H', 4.5, 6.5),
    (2, 'He', 1.38, 1.46),
    (3, 'Li', 164.2, 1387.0),
    (4, 'Be', 38.0, 214.0),
    (5, 'B', 21.0, 99.5),
    (6, 'C', 12.0, 46.6),
    (7, 'N', 7.4, 24.2),
    (8, 'O', 5.4, 15.6),
    (9, 'F', 3.8, 9.52),
    (10, 'Ne', 2.67, 6.38),
    (11, 'Na', 162.7, 1556.0),
    (12, 'Mg', 71.0, 627.0),
    (13, 'Al', 60.0, 528.0),
    (14, 'Si', 37.0, 305.0),
    (15, 'P', 25.0, 185.0),
    (16, 'S', 19.6, 134.0),
    (17, 'Cl', 15.0, 94.6),
    (18, 'Ar', 11.1, 64.3),
    (19, 'K', 292.9, 3897.0),
    (20, 'Ca', 160.0, 2221.0),
    (21, 'Sc', 120.0, 1383.0),
    (22, 'Ti', 98.0, 1044.0),
    (23, 'V', 84.0, 832.0),
    (24, 'Cr', 78.0, 602.0),
    (25, 'Mn', 63.0, 552.0),
    (26, 'Fe', 56.0, 482.0),
    (27, 'Co', 50.0, 408.0),
    (28, 'Ni', 48.0, 373.0),
    (29, 'Cu', 42.0, 253.0),
    (30, 'Zn', 40.0, 284.0),
    (31, 'Ga', 60.0, 498.0),
    (32, 'Ge', 41.0, 354.0),
    (33, 'As', 29.0, 246.0),
    (34, 'Se', 25.0, 210.0),
    (35, 'Br', 20.0, 162.0),
    (36, 'Kr', 16.8, 129.6),
    (37, 'Rb', 319.2, 4691.0),
    (38, 'Sr', 199.0, 3170.0),
    (39, 'Y', 126.737, 1968.58),
    (40, 'Zr', 119.97, 1677.91),
    (41, 'Nb', 101.603, 1263.61),
    (42, 'Mo', 88.4225785, 1028.73),
    (43, 'Tc', 80.083, 1390.87),
    (44, 'Ru', 65.895, 609.754),
    (45, 'Rh', 56.1, 469.0),
    (46, 'Pd', 23.68, 157.5),
    (47, 'Ag', 50.6, 339.0),
    (48, 'Cd', 39.7, 452.0),
    (49, 'In', 70.22, 707.046),
    (50, 'Sn', 55.95, 587.417),
    (51, 'Sb', 43.67197, 459.322),
    (52, 'Te', 37.65, 396.0),
    (53, 'I', 35.0, 385.0),
    (54, 'Xe', 27.3, 285.9),
    (55, 'Cs', 427.12, 6582.08),
    (56, 'Ba', 275.0, 5727.0),
    (57, 'La', 213.7, 3884.5),
    (58, 'Ce', 204.7, 3708.33),
    (59, 'Pr', 215.8, 3911.84),
    (60, 'Nd', 208.4, 3908.75),
    (61, 'Pm', 200.2, 3847.68),
    (62, 'Sm', 192.1, 3708.69),
    (63, 'Eu', 184.2, 3511.71),
    (64, 'Gd', 158.3, 2781.53),
    (65, 'Tb', 169.5, 3124.41),
    (66, 'Dy', 164.64, 2984.29),
    (67, 'Ho', 156.3, 2839.95),
    (68, 'Er', 150.2, 2724.12),
    (69, 'Tm', 144.3, 2576.78),
    (70, 'Yb', 138.9, 2387.53),
    (71, 'Lu', 137.2, 2371.8),
    (72, 'Hf', 99.52, 1274.8),
    (73, 'Ta', 82.53, 1019.92),
    (74, 'W', 71.041, 847.93),
    (75, 'Re', 63.04, 710.2),
    (76, 'Os', 55.055, 596.67),
    (77, 'Ir', 42.51, 359.1),
    (78, 'Pt', 39.68, 347.1),
    (79, 'Au', 36.5, 298.0),
    (80, 'Hg', 33.9, 392.0),
    (81, 'Tl', 69.92, 717.44),
    (82, 'Pb', 61.8, 697.0),
    (83, 'Bi', 49.02, 571.0),
    (84, 'Po', 45.013, 530.92),
    (85, 'At', 38.93, 457.53),
    (86, 'Rn', 33.54, 390.63),
    (87, 'Fr', 317.8, 4224.44),
    (88, 'Ra', 246.2, 4851.32),
    (89, 'Ac', 203.3, 3604.41),
    (90, 'Th', 217.0, 4047.54),
    (91, 'Pa', 154.4, 2367.42),
    (92, 'U', 127.8, 1877.1),
    (93, 'Np', 150.5, 2507.88),
    (94, 'Pu', 132.2, 2117.27),
    (95, 'Am', 131.2, 2110.98),
    (96, 'Cm', 143.6, 2403.22),
    (97, 'Bk', 125.3, 1985.82),
    (98, 'Cf', 121.5, 1891.92),
    (99, 'Es', 117.5, 1851.1),
    (100, 'Fm', 113.4, 1787.07),
    (101, 'Md', 109.4, 1701.0),
    (102, 'No', 105.4, 1578.18),
)

MAX_Z: int = 102


def _column(k: int) -> List[float]:
    out = [0.0] * (MAX_Z + 1)  # index 0 is a placeholder (no element 0)
    for row in FREE_ATOM_TABLE:
        out[row[0]] = float(row[k])
    return out


#: alpha_0 by atomic number (index 0 unused, = 0.0), Bohr^3
FREE_ATOM_ALPHA: List[float] = _column(2)
#: C6 by atomic number (index 0 unused, = 0.0), Hartree * Bohr^6
FREE_ATOM_C6: List[float] = _column(3)
