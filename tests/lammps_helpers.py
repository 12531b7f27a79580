"""Helpers for the LAMMPS plugin tests: a toy model with the exported-file interface, a
Python reference on the periodic system, and running the real ``lmp`` under ``mpirun``.

The toy model has two message-passing layers, so the energy of an atom depends on the
neighbours of its neighbours (receptive field 2 x cutoff): a ghost shell of only one cutoff
would give wrong forces under domain decomposition. With ``num_globals=1`` it adds a global
term E_i += a * tanh(b * G) * h1_i with G = sum over all atoms of a per-atom coordination
quantity, exercising the MPI allreduce / adjoint scheme of the pair style.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from torch import Tensor

VENV_BIN = Path(sys.executable).parent
METADATA_NAME = "so3krates/metadata.json"
NKTV2P_METAL = 1.6021765e6        # LAMMPS' eV/Å^3 -> bar (units metal)
EV_TO_KCAL_MOL = 23.060549        # LAMMPS utils::get_conversion_factor(ENERGY, METAL2REAL)


class ToyTwoLayer(torch.nn.Module):
    """Two smooth message-passing layers; the same methods as an exported so3krates file."""

    def __init__(self, cutoff: float = 3.0, num_globals: int = 0):
        super().__init__()
        self.cutoff = float(cutoff)
        self.num_globals = int(num_globals)
        emb = torch.zeros(119, dtype=torch.float64)
        emb[1], emb[6], emb[8] = 0.3, 0.5, -0.7
        self.register_buffer("emb", emb)

    def _weights(self, r: Tensor):
        fc = 0.5 * (torch.cos(math.pi * r / self.cutoff) + 1.0)
        fc = torch.where(r < self.cutoff, fc, torch.zeros_like(fc))
        return fc * torch.exp(-0.5 * r), fc * (1.0 + 0.3 * r)

    @torch.jit.export
    def energies_from_vectors(self, vec: Tensor, atomic_numbers: Tensor, idx_i: Tensor, idx_j: Tensor,
                              n: int, total_charge: float, global_sums: Tensor) -> Tensor:
        r = torch.sqrt((vec * vec).sum(-1))
        w1, w2 = self._weights(r)
        h0 = self.emb.to(vec.dtype)[atomic_numbers]
        m1 = torch.zeros(n, dtype=vec.dtype, device=vec.device).index_add(0, idx_i, w1 * h0[idx_j])
        h1 = torch.tanh(h0 + m1)
        m2 = torch.zeros(n, dtype=vec.dtype, device=vec.device).index_add(0, idx_i, w2 * h1[idx_j])
        e = 0.7 * h1 * m2 + 0.2 * m1 * m1 + 0.1 * total_charge * h0 * h0
        if self.num_globals > 0:
            e = e + 0.3 * torch.tanh(0.05 * global_sums[0]) * h1
        return e

    @torch.jit.export
    def coordination(self, vec: Tensor, atomic_numbers: Tensor, idx_i: Tensor, n: int) -> Tensor:
        r = torch.sqrt((vec * vec).sum(-1))
        w1, w2 = self._weights(r)
        h0 = self.emb.to(vec.dtype)[atomic_numbers]
        return torch.zeros(n, dtype=vec.dtype, device=vec.device).index_add(0, idx_i, w1 * (1.0 + h0[idx_i]))

    @torch.jit.export
    def atomic_energies_from_edges(self, positions: Tensor, atomic_numbers: Tensor, idx_i: Tensor, idx_j: Tensor,
                                   nlocal: int, total_charge: float, num_unpaired_electrons: float,
                                   global_sums: Tensor) -> Tensor:
        vec = positions[idx_j] - positions[idx_i]
        keep = (vec * vec).sum(-1) < self.cutoff * self.cutoff
        return self.energies_from_vectors(vec[keep], atomic_numbers, idx_i[keep], idx_j[keep],
                                          positions.shape[0], total_charge, global_sums)

    @torch.jit.export
    def global_partials(self, positions: Tensor, atomic_numbers: Tensor, idx_i: Tensor, idx_j: Tensor,
                        nlocal: int, total_charge: float, num_unpaired_electrons: float) -> Tensor:
        if self.num_globals == 0:
            return torch.zeros(0, dtype=positions.dtype, device=positions.device)
        vec = positions[idx_j] - positions[idx_i]
        keep = (vec * vec).sum(-1) < self.cutoff * self.cutoff
        s = self.coordination(vec[keep], atomic_numbers, idx_i[keep], positions.shape[0])
        return s[:nlocal].sum().reshape(1)

    def forward(self, positions: Tensor, atomic_numbers: Tensor) -> Tensor:
        return positions.sum() * 0.0


def metadata(cutoff: float, num_globals: int = 0, species=(1, 8), receptive_field: Optional[float] = None,
             dtype: str = "float64", **extra) -> Dict:
    meta = {
        "format_version": 1, "package_version": "0.1.0", "model": "toy",
        "cutoff": cutoff, "cutoff_lr": 0.0, "num_layers": 2,
        "receptive_field": 2 * cutoff if receptive_field is None else receptive_field,
        "species": list(species), "symbols": [["X", "H", "He", "Li", "Be", "B", "C", "N", "O"][z] for z in species],
        "num_globals": num_globals, "dtype": dtype,
        "units": {"length": "Angstrom", "energy": "eV", "forces": "eV/Angstrom"},
        "entry_points": ["forward", "atomic_energies_from_edges", "global_partials"],
    }
    meta.update(extra)
    return meta


def save_toy(path, cutoff: float = 3.0, num_globals: int = 0, dtype: str = "float64",
             meta: Optional[Dict] = None, raw_metadata: Optional[str] = None) -> str:
    module = ToyTwoLayer(cutoff, num_globals).to(getattr(torch, dtype))
    scripted = torch.jit.script(module)
    if raw_metadata is None:
        raw_metadata = json.dumps(meta if meta is not None else metadata(cutoff, num_globals, dtype=dtype))
    extra = {} if raw_metadata == "" else {METADATA_NAME: raw_metadata}
    torch.jit.save(scripted, str(path), _extra_files=extra)
    return str(path)


# ------------------------------------------------------------------------------ reference
def reference(atoms, cutoff: float = 3.0, num_globals: int = 0, total_charge: float = 0.0):
    """Energy (eV), forces (eV/Å), virial W_ab = -dE/d(strain_ab) (eV) and atomic energies of
    the toy model on the periodic ASE ``atoms``, with ASE's neighbour list (all images)."""
    from ase.neighborlist import neighbor_list

    model = ToyTwoLayer(cutoff, num_globals)
    i, j, S = neighbor_list("ijS", atoms, cutoff)
    idx_i, idx_j = torch.as_tensor(i), torch.as_tensor(j)
    shifts = torch.as_tensor(S, dtype=torch.float64)
    pos0 = torch.as_tensor(atoms.positions, dtype=torch.float64)
    cell0 = torch.as_tensor(np.asarray(atoms.cell), dtype=torch.float64)
    z = torch.as_tensor(atoms.numbers)
    n = len(atoms)
    strain = torch.zeros(3, 3, dtype=torch.float64, requires_grad=True)
    pos = pos0.clone().requires_grad_(True)
    deform = torch.eye(3, dtype=torch.float64) + strain
    p = pos @ deform
    cell = cell0 @ deform
    vec = p[idx_j] - p[idx_i] + shifts @ cell
    g = torch.zeros(0, dtype=torch.float64)
    if num_globals:
        g = model.coordination(vec, z, idx_i, n).sum().reshape(1)
    e_atoms = model.energies_from_vectors(vec, z, idx_i, idx_j, n, total_charge, g)
    energy = e_atoms.sum()
    dpos, dstrain = torch.autograd.grad(energy, [pos, strain])
    return {"energy": energy.item(), "forces": -dpos.numpy(), "virial": -dstrain.numpy(),
            "atomic_energies": e_atoms.detach().numpy()}


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


def run_lmp(workdir, script: str, nprocs: int = 1, timeout: float = 120.0) -> subprocess.CompletedProcess:
    """Run the real ``lmp`` launcher (plugin auto-loaded via the lammps.plugins entry point)."""
    workdir = Path(workdir)
    (workdir / "in.lmp").write_text(script)
    cmd = [str(VENV_BIN / "lmp"), "-in", "in.lmp", "-log", "log.lammps", "-screen", "screen.txt"]
    if nprocs > 1:
        cmd = [str(VENV_BIN / "mpirun"), "-np", str(nprocs)] + cmd
    proc = subprocess.run(cmd, cwd=workdir, env=lmp_env(), capture_output=True, text=True, timeout=timeout)
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
                           cutoff: float = 3.0, cutoff_lr: float = 4.0, species: Sequence[int] = (1, 8)):
    """Export a small random-weight So3krates (``num_layers`` layers, ``cutoff`` Å; with ``long_range``:
    electrostatics + dispersion + ZBL with ``cutoff_lr`` Å; ``efa_layers``: EFA per layer (periodic
    reciprocal-lattice variant in periodic boxes); ``charge_embedding``: charge and spin embeddings)
    with the package's exporter (no fallback: an exporter regression must fail the test).
    Every weight is random, including the EFA output layers that are zero-initialised (a fresh
    model's EFA contributes exactly 0). Returns the eager model."""
    from so3krates.export.exporter import export_potential
    from so3krates.potential.calculator import So3kratesPotential
    from so3krates.potential.config import So3kratesConfig
    from so3krates.potential.model import So3krates

    torch.manual_seed(seed)
    kw = dict(cutoff=cutoff, num_features=16, num_layers=num_layers, num_heads=2, num_features_head=8,
              degrees=[1, 2], num_radial_basis_fn=8, energy_regression_dim=16, species=list(species),
              layer_normalization_1=True, residual_mlp_1=True)
    if long_range:
        kw.update(electrostatic_energy_bool=True, cutoff_lr=cutoff_lr, zbl_repulsion_bool=True,
                  dispersion_energy_bool=True, dispersion_energy_scale=1.2, electrostatic_energy_scale=2.0,
                  dispersion_energy_cutoff_lr_damping=1.0)
    if charge_embedding:
        kw.update(use_charge_embed=True, use_spin_embed=True)
    if any(efa_layers):
        kw.update(efa_layers=list(efa_layers), efa_grid=50, efa_max_length=8.0)
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

    from so3krates.potential.calculator import So3kratesPotential

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


def reference_so3krates(model, atoms):
    """Energy and forces of the eager model on periodic ``atoms`` with ASE's neighbour lists."""
    from ase.neighborlist import neighbor_list

    cfg = model.config
    pos = torch.tensor(atoms.positions, requires_grad=True)
    cell = torch.tensor(np.asarray(atoms.cell))
    z = torch.tensor(atoms.numbers)
    n = len(atoms)

    def graph(rc):
        i, j, S = neighbor_list("ijS", atoms, rc)
        return torch.tensor(i), torch.tensor(j), pos[j] - pos[i] + torch.tensor(S, dtype=torch.float64) @ cell

    i, j, v = graph(cfg.cutoff)
    il, jl, vl = graph(cfg.cutoff_lr) if cfg.cutoff_lr else (i[:0], j[:0], v[:0])
    zero = torch.zeros(1, dtype=torch.float64)
    out = model(pos, z, v, i, j, vl, il, jl, torch.zeros(n, dtype=torch.long), 1, zero, zero,
                cell.reshape(1, 3, 3), torch.ones(1, 3, dtype=torch.bool))
    e = out["atomic_energies"].sum()
    return {"energy": e.item(), "forces": -torch.autograd.grad(e, pos)[0].numpy()}


def so3lr_dir() -> Path:
    """The SO3LR reference folder (../shared/reference/so3lr); missing is a failure, never a skip."""
    from helpers import so3lr_dir as _so3lr_dir

    return _so3lr_dir()


# ------------------------------------------------------------------------------ engine path in Python
def ghost_system(atoms, shell: float):
    """What one LAMMPS rank owning the whole periodic cell sees: the atoms of the cell first, then
    every periodic image within ``shell`` Å of the cell. Returns (positions [Ntot,3] Å, numbers,
    owner index of each atom)."""
    from helpers import periodic_images_within

    return periodic_images_within(atoms.positions, atoms.numbers, np.asarray(atoms.cell), shell)


def engine_edges(all_pos, nlocal: int, cutoff: float, cutoff_lr: float):
    """Edges the pair style hands the module: pairs within ``cutoff`` for every atom, within
    ``max(cutoff, cutoff_lr)`` for owned centres (both directions)."""
    from ase import Atoms
    from ase.neighborlist import neighbor_list

    rmax = max(cutoff, cutoff_lr)
    i, j, d = neighbor_list("ijd", Atoms(positions=all_pos, pbc=False), rmax)
    keep = (d < cutoff) | (i < nlocal)
    return torch.tensor(i[keep]), torch.tensor(j[keep])


def engine_emulate(module, all_pos, all_z, owner, owned_sets, cell, pbc=(True, True, True),
                   total_charge: float = 0.0, skin: float = 0.3):
    """The pair style's scheme in Python, with ``owned_sets`` (indices into the images of
    :func:`ghost_system`) as MPI ranks: each rank gets its owned atoms first and every other image as
    ghosts; sum stages are summed over ranks, exchange stages copy the owners' per-atom values to every
    image, and the backward pass combines the adjoints in reverse stage order (allreduce / reverse
    communication). Returns energy (eV), forces on the cell's atoms (eV/Å, ghost forces added to their
    owners), the virial W = -dE/dε (eV, 3x3, incl. the explicit box term) and per-rank layer counts."""
    meta_cut, meta_lr = module.cutoff, max(module.cutoff_lr, 0.0)
    kinds = list(module.engine_stage_kinds())
    width = module.engine_exchange_width()
    n_cell = int(owner.max()) + 1
    ranks = []
    for owned in owned_sets:
        order = np.concatenate([owned, np.setdiff1d(np.arange(len(all_z)), owned)])
        pos = torch.tensor(all_pos[order], requires_grad=True)
        c = torch.tensor(np.asarray(cell), requires_grad=True)
        edges = engine_edges(all_pos[order], len(owned), meta_cut + skin, meta_lr + skin)
        st, out = module.engine_begin(pos, torch.tensor(all_z[order]), edges[0], edges[1], len(owned),
                                      total_charge, 0.0, c, torch.tensor(pbc))
        ranks.append({"order": order, "own": owner[order], "nl": len(owned), "pos": pos, "cell": c, "st": st,
                      "out": out, "g": [], "G": [], "counts": [int(v) for v in st["cnt"]]})
    for s, kind in enumerate(kinds):
        if kind == "exchange":
            vals = torch.zeros(n_cell, width, dtype=torch.float64)
            for r in ranks:
                vals[r["own"][:r["nl"]]] = r["out"].detach()
        else:
            total = sum(r["out"].detach() for r in ranks)
        for r in ranks:
            r["g"].append(r["out"])
            G = (vals[r["own"]] if kind == "exchange" else total).clone().requires_grad_(True)
            r["G"].append(G)
            r["st"], r["out"] = module.engine_continue(r["st"], s + 1, G)
    lam = [r["out"][:r["nl"]].sum() for r in ranks]
    energy = float(sum(float(v.detach()) for v in lam))
    for s in reversed(range(len(kinds))):
        a = []
        for k, r in enumerate(ranks):
            gr = torch.autograd.grad(lam[k], r["G"][s], retain_graph=True, allow_unused=True)[0]
            a.append(torch.zeros_like(r["G"][s]) if gr is None else gr)
        if kinds[s] == "exchange":
            adj = torch.zeros(n_cell, width, dtype=torch.float64)
            for r, ar in zip(ranks, a):
                adj.index_add_(0, torch.tensor(r["own"]), ar)
            per_rank = [adj[r["own"][:r["nl"]]] for r in ranks]
        else:
            per_rank = [sum(a)] * len(ranks)
        for k, r in enumerate(ranks):
            if r["g"][s].requires_grad:
                lam[k] = lam[k] + (per_rank[k] * r["g"][s]).sum()
    forces = np.zeros((n_cell, 3))
    virial = np.zeros((3, 3))
    for k, r in enumerate(ranks):
        gp, gc = torch.autograd.grad(lam[k], [r["pos"], r["cell"]], allow_unused=True)
        gp = gp.numpy()
        gc = np.zeros((3, 3)) if gc is None else gc.numpy()
        np.add.at(forces, r["own"], -gp)
        virial += -(r["pos"].detach().numpy().T @ gp) - np.asarray(cell).T @ gc
    return {"energy": energy, "forces": forces, "virial": virial, "counts": [r["counts"] for r in ranks]}


def prune_stats(model_path, atoms, skin: float = 0.3, total_charge: float = 0.0) -> Dict[str, float]:
    """Pruned vs unpruned engine path of an exported file on one emulated rank that owns the periodic
    ``atoms`` (images within the module's ghost shell + ``skin``): largest differences of energy and
    forces, and the (atom, layer) feature updates each path computes."""
    from so3krates.export.metadata import load_exported

    module, meta = load_exported(model_path)
    all_pos, all_z, owner = ghost_system(atoms, module.engine_ghost_shell() + skin)
    n = len(atoms)
    L = int(meta["num_layers"])
    out = {}
    for prune in (True, False):
        module.prune = prune
        out[prune] = engine_emulate(module, all_pos, all_z, owner, [np.arange(n)], np.asarray(atoms.cell),
                                    total_charge=total_charge, skin=skin)
    cnt = out[True]["counts"][0]
    return {"max_abs_diff_energy": abs(out[True]["energy"] - out[False]["energy"]),
            "max_abs_diff_forces": float(np.abs(out[True]["forces"] - out[False]["forces"]).max()),
            "atom_layers_pruned": float(sum(cnt[:L])), "atom_layers_full": float(L * len(all_z)),
            "atoms_total": float(len(all_z)), "atoms_local": float(n), "energy": out[True]["energy"],
            "forces": out[True]["forces"], "virial": out[True]["virial"]}
