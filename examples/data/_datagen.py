"""Shared helpers for the reference-data scripts in ``examples/data``.

Units everywhere in these files: positions in Å, energy in eV, forces in eV/Å, charge in
elementary charges. OpenMM works in nm internally; conversion happens only here.

Frames are stored as extended XYZ (ASE-readable) with

* ``info['energy']``        total GFN2-xTB energy (eV), only for labelled frames
* ``arrays['forces']``      GFN2-xTB forces (eV/Å), only for labelled frames
* ``info['total_charge']``  net charge (integer, e)
* ``info['frame_id']``      unique id used to resume interrupted runs
* ``info['subset']``        which sampler produced the frame

Note that ``ase.io.read`` moves ``energy``/``forces`` into a SinglePointCalculator, so read
them back with ``atoms.get_potential_energy()`` / ``atoms.get_forces()`` (or use
:func:`energy_forces`).

Files are written by :func:`append_frames`, one complete frame per ``write`` call, and checked
by :func:`scan_frame_ids`, which drops a trailing half-written frame (a killed run) so that
appending can resume safely.
"""

from __future__ import annotations

import contextlib
import io
import os
import random
import re
import zlib
from typing import Iterable

import numpy as np

# ---------------------------------------------------------------------------------------------
# extxyz I/O
# ---------------------------------------------------------------------------------------------

_ID_RE = re.compile(r'(?:^|\s)frame_id=(?:"([^"]*)"|(\S+))')


def _fmt_value(v) -> str:
    if isinstance(v, (bool, np.bool_)):
        return "T" if v else "F"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        return repr(float(v))
    s = str(v)
    if not s or any(c.isspace() for c in s) or any(c in s for c in '="'):
        s = '"' + s.replace('"', "'") + '"'
    return s


def format_frame(symbols, positions, info: dict, forces=None, cell=None) -> str:
    """One extxyz frame as text: positions Å and forces eV/Å with 5 decimals, energy eV with 8.
    ``cell`` (3×3 Å, rows = lattice vectors) makes the frame periodic (``Lattice``, pbc T T T);
    without it the frame is an open molecule or cluster (pbc F F F)."""
    positions = np.asarray(positions, dtype=float)
    n = len(symbols)
    if positions.shape != (n, 3) or not np.all(np.isfinite(positions)):
        raise ValueError(f"positions must be a finite ({n}, 3) array, got {positions.shape}")
    props = "species:S:1:pos:R:3" + (":forces:R:3" if forces is not None else "")
    keys = []
    if "energy" in info:
        keys.append(f"energy={float(info['energy']):.8f}")
    for k, v in info.items():
        if k in ("energy", "pbc", "Properties", "Lattice") or v is None:
            continue
        if isinstance(v, (list, tuple, np.ndarray)):
            continue
        keys.append(f"{k}={_fmt_value(v)}")
    if cell is None:
        pbc = ' pbc="F F F"'
    else:
        cell = np.asarray(cell, dtype=float).reshape(3, 3)
        if not np.all(np.isfinite(cell)) or abs(np.linalg.det(cell)) < 1e-6:
            raise ValueError(f"cell must be a finite, non-singular 3x3 matrix (Å), got {cell.tolist()}")
        pbc = ' Lattice="' + " ".join(f"{x:.6f}" for x in cell.ravel()) + '" pbc="T T T"'
    lines = [str(n), f"Properties={props} " + " ".join(keys) + pbc]
    if forces is None:
        for s, p in zip(symbols, positions):
            lines.append(f"{s} {p[0]:.5f} {p[1]:.5f} {p[2]:.5f}")
    else:
        forces = np.asarray(forces, dtype=float)
        if forces.shape != (n, 3):
            raise ValueError(f"forces must be ({n}, 3), got {forces.shape}")
        for s, p, f in zip(symbols, positions, forces):
            lines.append(f"{s} {p[0]:.5f} {p[1]:.5f} {p[2]:.5f} {f[0]:.5f} {f[1]:.5f} {f[2]:.5f}")
    return "\n".join(lines) + "\n"


def append_frames(path: str, frames: Iterable[str]) -> None:
    """Append already formatted frames; each is written and flushed in one piece."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "a") as fh:
        for text in frames:
            fh.write(text)
            fh.flush()


def scan_frame_ids(path: str, repair: bool = True) -> list[str]:
    """Frame ids already in ``path`` (in order). A truncated last frame is cut off if ``repair``.

    Frames without a ``frame_id`` get ``<basename>:<index>``.
    """
    if not os.path.exists(path):
        return []
    ids: list[str] = []
    good_end = 0
    base = os.path.basename(path)
    with open(path, "rb") as fh:
        data = fh.read()
    pos = 0
    size = len(data)
    while pos < size:
        nl = data.find(b"\n", pos)
        if nl < 0:
            break
        head = data[pos:nl].strip()
        if not head:
            pos = nl + 1
            good_end = pos
            continue
        try:
            n = int(head)
        except ValueError:
            break
        end = nl + 1
        ok = True
        comment = b""
        for k in range(n + 1):
            e = data.find(b"\n", end)
            if e < 0:
                ok = False
                break
            if k == 0:
                comment = data[end:e]
            elif len(data[end:e].split()) < 4:
                ok = False
                break
            end = e + 1
        if not ok:
            break
        m = _ID_RE.search(comment.decode())
        ids.append((m.group(1) or m.group(2)) if m else f"{base}:{len(ids)}")
        pos = good_end = end
    if good_end < size and repair:
        print(f"[data] {path}: dropping a truncated last frame ({size - good_end} bytes)")
        with open(path, "r+b") as fh:
            fh.truncate(good_end)
    return ids


def energy_forces(atoms):
    """(energy eV, forces eV/Å) of a frame read by ASE, wherever ASE put them."""
    if atoms.calc is not None:
        return atoms.get_potential_energy(), atoms.get_forces()
    return atoms.info["energy"], atoms.arrays["forces"]


# ---------------------------------------------------------------------------------------------
# OpenMM helpers
# ---------------------------------------------------------------------------------------------

def forcefield():
    from openmm import app
    return app.ForceField("amber14-all.xml", "amber14/tip3p.xml")


def build_capped_peptide(sequence: str, phi, psi):
    """Ace-<sequence>-Nme with the given backbone dihedrals (degrees, one per residue).

    Built with PeptideBuilder (Gly placeholders become ACE/NME), hydrogens added by
    ``Modeller.addHydrogens`` with amber14 at pH 7. Seeded and on the Reference platform, so the
    same input gives the same atoms. Returns (topology, positions) in OpenMM units.
    """
    try:
        import PeptideBuilder
        from Bio.PDB import PDBIO
    except ImportError as e:  # pragma: no cover - message for users
        raise ImportError("building capped peptides needs PeptideBuilder: "
                          "pip install PeptideBuilder") from e
    from openmm import app

    n = len(sequence)
    phi = list(phi)
    psi = list(psi)
    if len(phi) != n or len(psi) != n:
        raise ValueError("need one phi and one psi per residue")
    # PeptideBuilder: phi[i] is phi of residue i+1, psi_im1[i] is psi of residue i.
    chain = "G" + sequence + "G"
    phis = phi + [-120.0]
    psis = [180.0] + psi
    with seeded_python_random(f"{sequence}/{phi}/{psi}/rotamers"):  # PeptideBuilder picks rotamers at random
        s = PeptideBuilder.make_structure(chain, phis, psis)
    res = list(s.get_residues())
    for a in list(res[0]):
        if a.get_id() not in ("CA", "C", "O"):
            res[0].detach_child(a.get_id())
    for a in list(res[-1]):
        if a.get_id() not in ("N", "CA"):
            res[-1].detach_child(a.get_id())
    res[0].resname = "ACE"
    res[-1].resname = "NME"
    pio = PDBIO()
    pio.set_structure(s)
    buf = io.StringIO()
    pio.save(buf)
    pdb = app.PDBFile(io.StringIO(buf.getvalue()))
    mod = app.Modeller(pdb.topology, pdb.positions)
    with seeded_python_random(f"{sequence}/{phi}/{psi}"):  # addHydrogens starts from random H
        # Reference platform: the default (CPU, all cores) is not bitwise reproducible
        import openmm
        mod.addHydrogens(forcefield(), pH=7.0, platform=openmm.Platform.getPlatformByName("Reference"))
    return mod.topology, mod.positions


@contextlib.contextmanager
def seeded_python_random(key: str):
    """Seed Python's ``random`` (which OpenMM's Modeller uses) from ``key``, restore it after."""
    state = random.getstate()
    random.seed(zlib.crc32(key.encode()))
    try:
        yield
    finally:
        random.setstate(state)


def residue_charges(system, topology) -> list[int]:
    """Integer net charge of each residue from the force field's partial charges."""
    import openmm
    nb = [f for f in system.getForces() if isinstance(f, openmm.NonbondedForce)][0]
    q = np.array([nb.getParticleParameters(i)[0]._value for i in range(nb.getNumParticles())])
    out = []
    for r in topology.residues():
        s = q[[a.index for a in r.atoms()]].sum()
        if abs(s - round(s)) > 1e-3:
            raise ValueError(f"residue {r.name}{r.id} has non-integer charge {s}")
        out.append(int(round(s)))
    return out


def make_platform(name: str = "CPU"):
    import openmm
    plat = openmm.Platform.getPlatformByName(name)
    props = {"Threads": "1"} if name == "CPU" else {}
    return plat, props


def equilibrated_langevin(system, positions, temperature: float, friction: float, timestep_fs: float,
                          seed: int, platform: str, equil_steps: int, min_iterations: int = 200):
    """An OpenMM Context for sampling: LangevinMiddleIntegrator (K, 1/ps, fs) seeded with ``seed``,
    positions set, minimised (``min_iterations``, tolerance 10 kJ/mol/nm; 0 skips it), velocities
    drawn at ``temperature`` and ``equil_steps`` steps run. Returns (context, integrator)."""
    import openmm
    from openmm import unit

    integ = openmm.LangevinMiddleIntegrator(temperature * unit.kelvin, friction / unit.picosecond,
                                            timestep_fs * unit.femtosecond)
    integ.setRandomNumberSeed(seed)
    plat, props = make_platform(platform)
    ctx = openmm.Context(system, integ, plat, props)
    ctx.setPositions(positions)
    if min_iterations > 0:
        openmm.LocalEnergyMinimizer.minimize(ctx, 10.0, min_iterations)
    ctx.setVelocitiesToTemperature(temperature * unit.kelvin, seed)
    integ.step(equil_steps)
    return ctx, integ


def periodic_frame(context, symbols, info: dict) -> str:
    """The context's current state as one periodic extxyz frame (positions wrapped into the box and
    the box vectors, both in Å; ``format_frame`` with ``cell``)."""
    from openmm import unit

    st = context.getState(getPositions=True, enforcePeriodicBox=True)
    xyz = st.getPositions(asNumpy=True).value_in_unit(unit.angstrom)
    cell = st.getPeriodicBoxVectors(asNumpy=True).value_in_unit(unit.angstrom)
    return format_frame(symbols, xyz, info, cell=cell)


def elements_of(topology) -> list[str]:
    return [a.element.symbol for a in topology.atoms()]


def check_fragment(numbers, positions, charge, min_dist=0.7) -> str | None:
    """Reason to reject a configuration (None if fine): clashes or odd electron count."""
    numbers = np.asarray(numbers)
    if (int(numbers.sum()) - int(charge)) % 2:
        return "odd electron count"
    pos = np.asarray(positions)
    d = np.linalg.norm(pos[:, None] - pos[None], axis=-1)
    d[np.diag_indices(len(pos))] = np.inf
    if d.min() < min_dist:
        return f"atoms {d.min():.2f} Å apart"
    return None
