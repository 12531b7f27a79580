"""Shared helpers of the long-range data generators in ``examples/data/longrange``.

Units: positions Å, energies eV, forces eV/Å, charges e. GFN2-xTB through tblite
(``tblite.interface.Calculator``), tblite defaults (accuracy 1, electronic temperature 300 K).
Frames are written with ``examples/data/_datagen.py`` (extxyz, positions/forces 5 decimals,
energy 8 decimals, ``info['total_charge']``, ``info['frame_id']``), one complete frame per write,
so an interrupted run resumes where it stopped (frames whose id is already in the file are skipped).
"""
from __future__ import annotations

import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # examples/data: _datagen (extxyz writer)
import _datagen as D  # noqa: E402

HARTREE_EV = 27.211386245988  # CODATA 2018 (= ase.units.Hartree)
BOHR_A = 0.529177210903       # CODATA 2018 (= ase.units.Bohr)
SYMBOLS = {1: "H", 6: "C", 7: "N", 8: "O"}
NUMBERS = {v: k for k, v in SYMBOLS.items()}


def gfn2(numbers, positions, charge=0, uhf=0, max_iter=250):
    """GFN2-xTB energy (eV), forces (eV/Å) and Mulliken charges (e) of an open structure (Å).

    Raises RuntimeError when the SCF does not converge (tblite raises)."""
    from tblite.interface import Calculator

    calc = Calculator("GFN2-xTB", np.asarray(numbers), np.asarray(positions, float) / BOHR_A,
                      charge=float(charge), uhf=int(uhf))
    calc.set("verbosity", 0)
    calc.set("max-iter", int(max_iter))
    res = calc.singlepoint()
    energy = float(res.get("energy")) * HARTREE_EV
    forces = -np.asarray(res.get("gradient")) * (HARTREE_EV / BOHR_A)
    charges = np.asarray(res.get("charges"), dtype=float)
    if not (np.isfinite(energy) and np.all(np.isfinite(forces))):
        raise RuntimeError("non-finite GFN2-xTB energy or forces")
    return energy, forces, charges


def relax(numbers, positions, charge=0, fmax=0.005, steps=300):
    """GFN2-xTB minimum near ``positions`` (Å) with ASE's BFGS (for the monomers and chains)."""
    from ase import Atoms
    from ase.calculators.calculator import Calculator, all_changes
    from ase.optimize import BFGS

    class _GFN2(Calculator):
        implemented_properties = ["energy", "forces"]

        def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
            super().calculate(atoms, properties, system_changes)
            e, f, _ = gfn2(self.atoms.numbers, self.atoms.positions, charge)
            self.results = {"energy": e, "forces": f}

    atoms = Atoms(numbers=numbers, positions=positions)
    atoms.calc = _GFN2()
    BFGS(atoms, logfile=None).run(fmax=fmax, steps=steps)
    return atoms.positions.copy()


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    """Uniformly random proper rotation matrix (3×3)."""
    q = rng.normal(size=4)
    q /= np.linalg.norm(q)
    a, b, c, d = q
    return np.array([[a * a + b * b - c * c - d * d, 2 * (b * c - a * d), 2 * (b * d + a * c)],
                     [2 * (b * c + a * d), a * a - b * b + c * c - d * d, 2 * (c * d - a * b)],
                     [2 * (b * d - a * c), 2 * (c * d + a * b), a * a - b * b - c * c + d * d]])


def rotation_about(axis, angle: float) -> np.ndarray:
    """Rotation matrix by ``angle`` (radians) about ``axis`` (right hand)."""
    k = np.asarray(axis, float)
    k = k / np.linalg.norm(k)
    kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + np.sin(angle) * kx + (1 - np.cos(angle)) * kx @ kx


def min_distance(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)).min())


def write_frame(path: str, numbers, positions, energy: float, forces, info: dict) -> None:
    info = dict(info)
    info["energy"] = float(energy)
    D.append_frames(path, [D.format_frame([SYMBOLS[int(z)] for z in numbers], positions, info, forces=forces)])


def done_ids(path: str) -> set:
    return set(D.scan_frame_ids(path))


class Progress:
    """One status line every ``every`` seconds (frames done, rate, failures)."""

    def __init__(self, total: int, name: str, every: float = 10.0):
        self.total, self.name, self.every = total, name, every
        self.t0 = self.last = time.time()
        self.n = self.fail = self.skip = 0

    def step(self, ok: bool = True, skipped: bool = False, force: bool = False) -> None:
        if skipped:
            self.skip += 1
        elif ok:
            self.n += 1
        else:
            self.fail += 1
        now = time.time()
        if force or now - self.last >= self.every:
            self.last = now
            dt = now - self.t0
            k = self.n + self.fail
            print(f"[{self.name}] {self.n + self.skip}/{self.total} frames ({self.skip} already there, "
                  f"{self.fail} failed), {dt:.0f} s, {1000 * dt / max(k, 1):.0f} ms/frame", flush=True)

    def summary(self) -> float:
        dt = time.time() - self.t0
        print(f"[{self.name}] done: {self.n} new, {self.skip} already there, {self.fail} failed; "
              f"{dt:.1f} s wall", flush=True)
        return dt
