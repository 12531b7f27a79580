"""Shared test helpers: small random models, structures, reference paths."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
SO3LR_DIR = SHARED / "reference" / "so3lr"


def so3lr_dir() -> Path:
    """The SO3LR reference folder; a missing folder is a failure, never a skip (CI provides ../shared)."""
    assert (SO3LR_DIR / "params.pkl").is_file(), f"reference data missing: {SO3LR_DIR} (CI provides ../shared)"
    return SO3LR_DIR


def small_config(long_range: bool = True, efa: bool = False, periodic_efa: bool = False, **kw):
    """A small random So3krates config (fast in tests). Lengths in Å."""
    from so3krates.potential.config import So3kratesConfig
    args = dict(num_features=16, num_layers=2, num_heads=2, degrees=[1, 2],
                cutoff=3.0, cutoff_fn="phys", radial_basis_fn="bernstein", num_radial_basis_fn=8,
                layer_normalization_1=True, residual_mlp_1=True, message_normalization="avg_num_neighbors",
                avg_num_neighbors=6.0, energy_regression_dim=16, energy_activation_fn="silu",
                energy_learn_atomic_type_scales=True, energy_learn_atomic_type_shifts=True,
                species=[1, 6, 8])
    if long_range:
        args.update(zbl_repulsion_bool=True, electrostatic_energy_bool=True, electrostatic_energy_scale=4.0,
                    dispersion_energy_bool=True, dispersion_energy_scale=1.2, cutoff_lr=4.5,
                    dispersion_energy_cutoff_lr_damping=1.0, use_charge_embed=True, use_spin_embed=True)
    if efa:
        args.update(efa_layers=[True, True], efa_grid=50, efa_max_length=12.0)
        if periodic_efa:
            args.update(efa_periodic_kcut=2.0)
    args.update(kw)
    return So3kratesConfig(**args)


def small_model(seed: int = 0, dtype=torch.float64, **kw):
    """Random-weight model; biases and per-type shifts perturbed so nothing is trivially zero."""
    from so3krates.potential.model import So3krates
    torch.manual_seed(seed)
    model = So3krates(small_config(**kw))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.to(dtype).eval()


def random_molecule(n: int = 12, seed: int = 0, box: float = 5.0, species=(1, 6, 8)):
    """Random open structure with atoms at least 0.9 Å apart. Returns (positions Å, numbers)."""
    rng = np.random.default_rng(seed)
    pos = []
    while len(pos) < n:
        p = rng.uniform(0, box, 3)
        if all(np.linalg.norm(p - q) > 0.9 for q in pos):
            pos.append(p)
    z = rng.choice(list(species), size=n)
    return np.array(pos), z


def random_periodic(n: int = 20, seed: int = 1, skew: bool = True):
    """Random periodic structure in a (skewed) triclinic cell. Returns (positions, numbers, cell rows)."""
    rng = np.random.default_rng(seed)
    cell = np.diag([6.5, 7.0, 7.5])
    if skew:
        cell[1, 0] = 1.2
        cell[2, 0] = -0.8
        cell[2, 1] = 0.9
    pos = []
    while len(pos) < n:
        f = rng.uniform(0, 1, 3)
        p = f @ cell
        ok = True
        for q in pos:
            d = p - q
            frac = np.linalg.solve(cell.T, d)
            frac -= np.round(frac)
            if np.linalg.norm(frac @ cell) < 0.9:
                ok = False
                break
        if ok:
            pos.append(p)
    z = rng.choice([1, 6, 8], size=n)
    return np.array(pos), z, cell


def periodic_images_within(pos, z, cell, shell: float):
    """Owned atoms (the unit cell) plus every periodic image within ``shell`` Å of the cell: what one
    LAMMPS rank owning the whole cell sees. Returns (positions [Ntot, 3] Å, numbers, owner index)."""
    pos = np.asarray(pos, dtype=float)
    z = np.asarray(z)
    cell = np.asarray(cell, dtype=float)
    inv = np.linalg.inv(cell)
    heights = 1.0 / np.linalg.norm(inv, axis=0)
    reps = np.ceil(shell / heights).astype(int)
    out_pos, out_z, owner = [pos], [z], [np.arange(len(z))]
    frac = pos @ inv
    for a in range(-reps[0], reps[0] + 1):
        for b in range(-reps[1], reps[1] + 1):
            for c in range(-reps[2], reps[2] + 1):
                if a == b == c == 0:
                    continue
                f = frac + np.array([a, b, c])
                # distance from the unit cell in each direction (fractional excess times height)
                excess = np.maximum(np.maximum(-f, f - 1.0), 0.0) * heights
                keep = np.linalg.norm(excess, axis=1) < shell
                if keep.any():
                    out_pos.append(f[keep] @ cell)
                    out_z.append(z[keep])
                    owner.append(np.arange(len(z))[keep])
    return np.concatenate(out_pos), np.concatenate(out_z), np.concatenate(owner)
