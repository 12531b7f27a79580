"""Helpers for the LAMMPS plugin tests: small exported So3krates models (the code path of every real
model: the exported stages with per-layer halo exchange), references from the ASE calculator, and
running the real ``lmp`` under ``mpirun``.

A 2-layer model's atom energies depend on neighbours of neighbours (receptive field 2 x cutoff), so
wrong or missing halo exchanges show up as wrong forces on any decomposition.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Dict, Optional, Sequence

import numpy as np
import torch

VENV_BIN = Path(sys.executable).parent
METADATA_NAME = "so3krates/metadata.json"
NKTV2P_METAL = 1.6021765e6        # LAMMPS' eV/Å^3 -> bar (units metal)
EV_TO_KCAL_MOL = 23.060549        # LAMMPS utils::get_conversion_factor(ENERGY, METAL2REAL)


def rewrite_metadata(src, dst, raw: Optional[str] = None, **changes) -> str:
    """Copy the exported file ``src`` to ``dst`` with its metadata replaced by ``raw`` (text; "" removes
    the metadata file) or updated with ``changes``: files the pair style must refuse."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for item in zin.infolist():
            data = zin.read(item.filename)
            if item.filename.endswith(METADATA_NAME):
                if raw == "":
                    continue
                data = (raw if raw is not None else json.dumps(dict(json.loads(data), **changes))).encode()
            zout.writestr(item, data)
    return str(dst)


# ------------------------------------------------------------------------------ structures
def random_box(n_per_axis: int = 3, spacing: float = 2.2, seed: int = 0, tilt=(0.0, 0.0, 0.0),
               symbols=("H", "O")):
    """A jittered lattice of H/O atoms in a (possibly triclinic, LAMMPS-canonical) cell."""
    from ase import Atoms

    rng = np.random.default_rng(seed)
    L = n_per_axis * spacing
    xy, xz, yz = tilt
    cell = np.array([[L, 0, 0], [xy, L, 0], [xz, yz, L]])
    frac = np.array([(a, b, c) for a in range(n_per_axis) for b in range(n_per_axis)
                     for c in range(n_per_axis)], dtype=float) / n_per_axis
    frac += rng.uniform(-0.08, 0.08, frac.shape)
    pos = frac @ cell
    sym = [symbols[k % len(symbols)] for k in range(len(pos))]
    rng.shuffle(sym)
    return Atoms(sym, positions=pos, cell=cell, pbc=True)


def write_data(atoms, path, type_symbols: Sequence[str]):
    """LAMMPS data file (atom_style atomic) for a LAMMPS-canonical cell (a along x, b in xy)."""
    c = np.asarray(atoms.cell).tolist()
    c = np.array(c)
    f = lambda v: repr(float(v))  # noqa: E731
    assert abs(c[0, 1]) < 1e-12 and abs(c[0, 2]) < 1e-12 and abs(c[1, 2]) < 1e-12
    masses = {"H": 1.008, "C": 12.011, "N": 14.007, "O": 15.999, "Si": 28.085}
    lines = ["toy system", "", f"{len(atoms)} atoms", f"{len(type_symbols)} atom types", "",
             f"0.0 {f(c[0, 0])} xlo xhi", f"0.0 {f(c[1, 1])} ylo yhi", f"0.0 {f(c[2, 2])} zlo zhi"]
    if abs(c[1, 0]) + abs(c[2, 0]) + abs(c[2, 1]) > 0:
        lines.append(f"{f(c[1, 0])} {f(c[2, 0])} {f(c[2, 1])} xy xz yz")
    lines += ["", "Masses", ""]
    lines += [f"{k + 1} {masses.get(s, 1.0)}" for k, s in enumerate(type_symbols)]
    lines += ["", "Atoms # atomic", ""]
    for k, (s, p) in enumerate(zip(atoms.get_chemical_symbols(), atoms.positions)):
        lines.append(f"{k + 1} {type_symbols.index(s) + 1} {f(p[0])} {f(p[1])} {f(p[2])}")
    Path(path).write_text("\n".join(lines) + "\n")


# ------------------------------------------------------------------------------ running LAMMPS
def lmp_env() -> Dict[str, str]:
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = "1"
    env["PATH"] = f"{VENV_BIN}:{env.get('PATH', '')}"
    return env


def run_lmp(workdir, script: str, nprocs: int = 1, timeout: float = 120.0,
            env: Optional[dict] = None) -> subprocess.CompletedProcess:
    """Run the real ``lmp`` launcher (plugin auto-loaded via the lammps.plugins entry point); ``env``: extra
    environment variables."""
    workdir = Path(workdir)
    (workdir / "in.lmp").write_text(script)
    cmd = [str(VENV_BIN / "lmp"), "-in", "in.lmp", "-log", "log.lammps", "-screen", "screen.txt"]
    if nprocs > 1:
        cmd = [str(VENV_BIN / "mpirun"), "-np", str(nprocs)] + cmd
    proc = subprocess.run(cmd, cwd=workdir, env=dict(lmp_env(), **(env or {})), capture_output=True, text=True,
                          timeout=timeout)
    screen = workdir / "screen.txt"
    proc.screen = screen.read_text() if screen.exists() else ""
    return proc


def energy_script(data: str, model: str, elements: Sequence[str], units: str = "metal",
                  pair_style: str = "so3krates", extra: str = "", newton: str = "on") -> str:
    return f"""
units {units}
atom_style atomic
boundary p p p
newton {newton}
read_data {data}
pair_style {pair_style}
pair_coeff * * {model} {' '.join(elements)}
{extra}
compute pea all pe/atom
compute vir all pressure NULL virial
compute sa all stress/atom NULL virial
compute sasum all reduce sum c_sa[1] c_sa[2] c_sa[3] c_sa[4] c_sa[5] c_sa[6]
thermo_style custom step pe c_vir[*] c_sasum[*]
dump d all custom 1 forces.dump id type x y z fx fy fz c_pea
dump_modify d sort id format float %.17g
run 0
print "RESULT pe $(pe:%.17g) vol $(vol:%.17g)"
print "RESULT vir $(c_vir[1]:%.17g) $(c_vir[2]:%.17g) $(c_vir[3]:%.17g) $(c_vir[4]:%.17g) $(c_vir[5]:%.17g) $(c_vir[6]:%.17g)"
print "RESULT sasum $(c_sasum[1]:%.17g) $(c_sasum[2]:%.17g) $(c_sasum[3]:%.17g) $(c_sasum[4]:%.17g) $(c_sasum[5]:%.17g) $(c_sasum[6]:%.17g)"
"""


def parse_results(workdir, proc) -> Dict[str, np.ndarray]:
    text = proc.screen + proc.stdout
    if proc.returncode != 0:
        raise AssertionError(f"lmp failed (rc {proc.returncode}):\n{text[-3000:]}\n{proc.stderr[-2000:]}")
    out = {}
    for key in ("pe", "vir", "sasum"):
        m = re.findall(rf"^RESULT {key} (.*)$", text, re.M)
        assert m, f"no RESULT {key} in output:\n{text[-2000:]}"
        vals = m[-1].split()
        if key == "pe":
            out["pe"], out["vol"] = float(vals[0]), float(vals[2])
        else:
            out[key] = np.array([float(v) for v in vals])
    rows = np.loadtxt(Path(workdir) / "forces.dump", skiprows=9)
    rows = rows[np.argsort(rows[:, 0])]
    out["forces"] = rows[:, 5:8]
    out["atomic_energies"] = rows[:, 8]
    return out


def voigt(w: np.ndarray) -> np.ndarray:
    """3x3 virial -> LAMMPS order xx yy zz xy xz yz (symmetrised)."""
    s = 0.5 * (w + w.T)
    return np.array([s[0, 0], s[1, 1], s[2, 2], s[0, 1], s[0, 2], s[1, 2]])


def error_text(proc) -> str:
    return proc.screen + proc.stdout + proc.stderr


# ------------------------------------------------------------------------------ real model
def export_small_so3krates(path, long_range: bool, seed: int = 0, efa_layers: Sequence[bool] = (),
                           charge_embedding: bool = False, dtype: str = "float64", num_layers: int = 2,
                           cutoff: float = 3.0, cutoff_lr: float = 4.0, species: Sequence[int] = (1, 8),
                           efa_qk_degrees: int = 0):
    """Export a small random-weight So3krates (``num_layers`` layers, ``cutoff`` Å; with ``long_range``:
    electrostatics + dispersion + ZBL with ``cutoff_lr`` Å; ``efa_layers``: EFA per layer (periodic
    reciprocal-lattice variant in periodic boxes; ``efa_qk_degrees``: direction-dependent EFA queries/keys,
    open systems only); ``charge_embedding``: charge and spin embeddings)
    with the package's exporter (no fallback: an exporter regression must fail the test).
    Every weight is random, including the EFA output layers that are zero-initialised (a fresh
    model's EFA contributes exactly 0). Returns the eager model."""
    from so3krates.export.exporter import export_potential
    from so3krates.potential.potential import So3kratesPotential
    from so3krates.potential.config import So3kratesConfig
    from so3krates.potential.model import So3krates

    torch.manual_seed(seed)
    kw = dict(cutoff=cutoff, num_features=16, num_layers=num_layers, num_heads=2,
              degrees=[1, 2], num_radial_basis_fn=8, energy_regression_dim=16, species=list(species),
              layer_normalization_1=True, residual_mlp_1=True)
    if long_range:
        kw.update(electrostatic_energy_bool=True, cutoff_lr=cutoff_lr, zbl_repulsion_bool=True,
                  dispersion_energy_bool=True, dispersion_energy_scale=1.2, electrostatic_energy_scale=2.0,
                  dispersion_energy_cutoff_lr_damping=1.0)
    if charge_embedding:
        kw.update(use_charge_embed=True, use_spin_embed=True)
    if any(efa_layers):
        kw.update(efa_layers=list(efa_layers), efa_grid=50, efa_max_length=8.0, efa_qk_degrees=efa_qk_degrees)
    model = So3krates(So3kratesConfig(**kw)).double().eval()
    with torch.no_grad():  # random weights everywhere, so that every term contributes
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
        for layer in model.layers:
            blk = layer.efa
            if blk.mlp2 is not None:  # zero-initialised output layer of the EFA block
                blk.mlp2.weight.copy_(torch.randn_like(blk.mlp2.weight) / math.sqrt(blk.mlp2.weight.shape[1]))
                blk.mlp2.bias.copy_(0.3 * torch.randn_like(blk.mlp2.bias))
    export_potential(So3kratesPotential(model), path, dtype=dtype)
    return model


def efa_contribution(model, atoms) -> float:
    """|E(model) - E(model with the EFA blocks switched off)| (eV) on ``atoms``: proves that a test's
    EFA model really uses its global attention."""
    import copy

    from so3krates.potential.potential import So3kratesPotential

    def energy(m):
        pot = So3kratesPotential(m)
        out = pot(torch.tensor(atoms.positions), torch.tensor(atoms.numbers), torch.tensor(np.asarray(atoms.cell)),
                  torch.tensor(atoms.pbc), 0.0, 0.0, False, False)
        return float(out["energy"].detach())

    off = copy.deepcopy(model)
    with torch.no_grad():
        for layer in off.layers:
            if layer.efa.mlp2 is not None:
                layer.efa.mlp2.weight.zero_()
                layer.efa.mlp2.bias.zero_()
                layer.efa.mlp1.weight.zero_()
                layer.efa.mlp1.bias.zero_()
    return abs(energy(model) - energy(off))


def ase_reference(model_path, atoms, charge: float = 0.0, stress: bool = True):
    """Energy (eV), forces (eV/Å), per-atom energies (eV) and, periodic, the virial W = -stress·V (eV,
    3x3) from the ASE calculator (so3krates.ase.So3kratesCalculator) on ``atoms``."""
    from so3krates.ase import So3kratesCalculator

    atoms = atoms.copy()
    atoms.info["charge"] = charge
    atoms.calc = So3kratesCalculator(str(model_path))
    out = {"energy": atoms.get_potential_energy(), "forces": atoms.get_forces(),
           "atomic_energies": atoms.get_potential_energies()}
    if stress and atoms.pbc.all():
        s = atoms.get_stress(voigt=False)
        out["virial"] = -s * atoms.get_volume()
    return out


def compare(res, ref, rtol: float, virial: bool = True) -> Dict[str, float]:
    """Assert LAMMPS results (parse_results, units metal) equal the reference: energy to ``rtol``
    relative, forces to ``rtol`` relative to the largest force, the virial (compute pressure ... virial)
    to ``rtol`` relative to its largest component. Returns the errors."""
    e_err = abs(res["pe"] - ref["energy"]) / max(1.0, abs(ref["energy"]))
    fscale = max(1.0, float(np.abs(ref["forces"]).max()))
    f_err = float(np.abs(res["forces"] - ref["forces"]).max()) / fscale
    errs = {"energy": e_err, "forces": f_err}
    assert e_err < rtol, (res["pe"], ref["energy"])
    assert f_err < rtol, f_err
    if virial and "virial" in ref:
        w = res["vir"] * res["vol"] / NKTV2P_METAL
        wref = voigt(ref["virial"])
        v_err = float(np.abs(w - wref).max()) / max(1.0, float(np.abs(wref).max()))
        errs["virial"] = v_err
        assert v_err < rtol, (w, wref)
        # per-atom virial (compute stress/atom, ghost parts reverse-communicated) sums to it
        wa = -res["sasum"] / NKTV2P_METAL
        errs["per_atom_virial_sum"] = float(np.abs(wa - wref).max()) / max(1.0, float(np.abs(wref).max()))
        assert errs["per_atom_virial_sum"] < rtol, (wa, wref)
    return errs


def place_in_box(atoms, cell) -> "object":
    """``atoms`` (a molecule) centred in a periodic, LAMMPS-canonical ``cell`` (rows, Å), wrapped."""
    a = atoms.copy()
    a.cell = np.asarray(cell, dtype=float)
    a.pbc = True
    centre = 0.5 * np.asarray(cell).sum(0)
    a.positions = a.positions - a.positions.mean(0) + centre
    a.wrap()
    return a


def so3lr_dir() -> Path:
    """The SO3LR reference folder (../shared/reference/so3lr); missing is a failure, never a skip."""
    from helpers import so3lr_dir as _so3lr_dir

    return _so3lr_dir()
