"""Input checks shared by the potential and the engine entry points (TorchScript-able).

Every check raises ``ValueError`` with a message that names the problem and the fix. (Inside a
scripted/exported module, TorchScript re-raises it as ``torch.jit.Error`` whose message ends in
``builtins.ValueError: <message>``.) Units: Å.
"""
from typing import List

import torch
from torch import Tensor


def format_float(x: float, decimals: int = 4) -> str:
    """Fixed-point text of x (TorchScript's str.format has no format specs such as {:.4f})."""
    scale = 1
    for _ in range(decimals):
        scale = scale * 10  # int (10 ** n is a float in TorchScript)
    v = int(round(abs(x) * scale))
    frac = str(v % scale)
    while len(frac) < decimals:
        frac = "0" + frac
    sign = "-" if x < 0 and v != 0 else ""
    return sign + str(v // scale) + "." + frac


def chemical_symbol(z: int) -> str:
    symbols = ["X", "H", "He", "Li", "Be", "B", "C", "N", "O", "F", "Ne", "Na", "Mg", "Al", "Si",
               "P", "S", "Cl", "Ar", "K", "Ca", "Sc", "Ti", "V", "Cr", "Mn", "Fe", "Co", "Ni",
               "Cu", "Zn", "Ga", "Ge", "As", "Se", "Br", "Kr", "Rb", "Sr", "Y", "Zr", "Nb", "Mo",
               "Tc", "Ru", "Rh", "Pd", "Ag", "Cd", "In", "Sn", "Sb", "Te", "I", "Xe", "Cs", "Ba",
               "La", "Ce", "Pr", "Nd", "Pm", "Sm", "Eu", "Gd", "Tb", "Dy", "Ho", "Er", "Tm", "Yb",
               "Lu", "Hf", "Ta", "W", "Re", "Os", "Ir", "Pt", "Au", "Hg", "Tl", "Pb", "Bi", "Po",
               "At", "Rn", "Fr", "Ra", "Ac", "Th", "Pa", "U", "Np", "Pu", "Am", "Cm", "Bk", "Cf",
               "Es", "Fm", "Md", "No", "Lr", "Rf", "Db", "Sg", "Bh", "Hs", "Mt", "Ds", "Rg", "Cn",
               "Nh", "Fl", "Mc", "Lv", "Ts", "Og"]
    if 0 <= z < len(symbols):
        return symbols[z]
    return "Z=" + str(z)


def check_structure(positions: Tensor, atomic_numbers: Tensor, cell: Tensor, pbc: Tensor) -> None:
    """Shapes, dtypes and finiteness of one structure: positions [N,3] float (Å),
    atomic_numbers [N] integer, cell [3,3] float (Å, rows a, b, c), pbc [3] bool."""
    check_shapes(positions, atomic_numbers, cell, pbc)
    check_finite(positions, cell)


def check_shapes(positions: Tensor, atomic_numbers: Tensor, cell: Tensor, pbc: Tensor) -> None:
    """The shape and dtype part of ``check_structure`` (reads no tensor data: no host synchronisation)."""
    if positions.dim() != 2 or positions.shape[1] != 3:
        raise ValueError("positions must have shape [N, 3] (Å); got {}. Pass one row per atom."
                         .format(positions.shape))
    if not positions.is_floating_point():
        raise ValueError("positions must be a floating-point tensor (Å), got {}; convert with "
                         "positions.to(torch.float64)".format(positions.dtype))
    n = positions.shape[0]
    if atomic_numbers.dim() != 1 or atomic_numbers.shape[0] != n:
        raise ValueError("atomic_numbers must have shape [N] = [{}] matching positions; got {}"
                         .format(n, atomic_numbers.shape))
    if atomic_numbers.is_floating_point() or atomic_numbers.dtype == torch.bool:
        raise ValueError("atomic_numbers must be an integer tensor (e.g. torch.long), got {}; "
                         "convert with atomic_numbers.long()".format(atomic_numbers.dtype))
    if cell.dim() != 2 or cell.shape[0] != 3 or cell.shape[1] != 3:
        raise ValueError("cell must have shape [3, 3] (Å, rows are the lattice vectors; zeros "
                         "for an open system); got {}".format(cell.shape))
    if not cell.is_floating_point():
        raise ValueError("cell must be a floating-point tensor (Å), got {}".format(cell.dtype))
    if pbc.dim() != 1 or pbc.shape[0] != 3:
        raise ValueError("pbc must have shape [3] (one bool per lattice vector); got {}"
                         .format(pbc.shape))
    if pbc.is_floating_point():
        raise ValueError("pbc must be a bool tensor, e.g. torch.tensor([True, True, True]); got {}"
                         .format(pbc.dtype))


def check_finite(positions: Tensor, cell: Tensor) -> None:
    """The finiteness part of ``check_structure``."""
    finite = torch.isfinite(positions).all(dim=1)
    if not bool(finite.all()):
        bad = torch.nonzero(~finite)[:, 0]
        raise ValueError("positions contain NaN or inf at {} atom(s), first at index {}: check "
                         "the input structure, or the simulation for an explosion (smaller time "
                         "step, minimise first)".format(bad.shape[0], int(bad[0])))
    if not bool(torch.isfinite(cell).all()):
        raise ValueError("cell contains NaN or inf: give finite lattice vectors (Å)")


def is_open(cell: Tensor, pbc: Tensor) -> bool:
    """A structure is open (no periodicity) when pbc is all False or the cell is all zeros."""
    return (not bool(pbc.to(torch.bool).any())) or bool((cell == 0).all())


def check_cell(cell: Tensor, pbc: Tensor) -> None:
    """A periodic cell must have non-zero volume (lattice vectors linearly independent)."""
    if is_open(cell, pbc):
        return
    c = cell.detach().to(torch.float64)
    norms = torch.linalg.norm(c, dim=1)
    p = pbc.to(torch.bool)
    for d in range(3):
        if bool(p[d]) and float(norms[d]) == 0.0:
            raise ValueError("periodic cell has a zero lattice vector {} (zero volume): give the "
                             "lattice vector in Å or set pbc to False in that direction"
                             .format(["a", "b", "c"][d]))
    if bool(p.all()):
        det = torch.linalg.det(c)
        if abs(float(det)) <= 1e-10 * float(norms.prod()):
            raise ValueError("periodic cell has zero volume (det = {} Å^3): its lattice "
                             "vectors are linearly dependent. Give three independent lattice "
                             "vectors (rows of the cell, in Å), or a zero cell / pbc=False for an "
                             "open system".format(format_float(float(det), 6)))


def known_elements(z: Tensor, known: Tensor) -> Tensor:
    """[N] bool: atomic number z[n] is one the model knows (``known``: bool table indexed by atomic
    number); computed on the device, no host synchronisation."""
    inside = (z >= 0) & (z < known.shape[0])
    return inside & known[z.clamp(0, known.shape[0] - 1)]


def check_species(atomic_numbers: Tensor, known: Tensor, species: List[int]) -> None:
    """known: bool table indexed by atomic number (True for the elements the model knows)."""
    z = atomic_numbers.to(torch.long)
    if z.numel() == 0:
        return
    ok = known_elements(z, known)
    if not bool(ok.all()):
        bad = torch.nonzero(~ok)[:, 0]
        i = int(bad[0])
        zi = int(z[i])
        names: List[str] = []
        for s in species:
            names.append(chemical_symbol(s))
        raise ValueError("unknown element {} (atomic number {}) at atom index {} ({} atom(s) "
                         "affected): the model only knows {}. Remove those atoms or use a model "
                         "trained on that element".format(chemical_symbol(zi), zi, i,
                                                          bad.shape[0], ", ".join(names)))


def check_min_distance(edge_vectors: Tensor, idx_i: Tensor, idx_j: Tensor, shifts: Tensor,
                       min_distance: float = 0.1) -> None:
    """Raise if two atoms (or an atom and a periodic image) are closer than min_distance Å (one host
    synchronisation when they are not)."""
    if edge_vectors.shape[0] == 0:
        return
    d = torch.linalg.norm(edge_vectors.detach(), dim=1)
    dmin = float(d.min())
    if dmin < min_distance:
        k = int(torch.argmin(d))
        dshow = format_float(dmin, 4)
        i = int(idx_i[k])
        j = int(idx_j[k])
        if i == j:
            raise ValueError("atom {} is {} Å from its own periodic image (closer than {} "
                             "Å): the cell is far too small; check the cell units (Å) and "
                             "lattice vectors".format(i, dshow, format_float(min_distance, 2)))
        image = ""
        if bool((shifts[k] != 0).any()):
            sk = shifts[k].to(torch.long)
            image = " (periodic image [{}, {}, {}])".format(int(sk[0]), int(sk[1]), int(sk[2]))
        raise ValueError("atoms {} and {}{} are {} Å apart, closer than {} Å: the structure "
                         "has overlapping atoms. Remove duplicates, check units (positions must "
                         "be in Å) or relax the structure".format(i, j, image, dshow,
                                                                  format_float(min_distance, 2)))


def structure_flags(positions: Tensor, atomic_numbers: Tensor, cell: Tensor, pbc: Tensor, known: Tensor) -> Tensor:
    """[4] bool, formed on the inputs' device without reading anything back: [positions and cell finite,
    every element known to the model (``known_elements``), the structure open (``is_open``), the periodic
    cell valid (``check_cell``'s conditions; True for an open structure)]."""
    p = pbc.to(torch.bool)
    finite = torch.isfinite(positions).all() & torch.isfinite(cell).all()
    known_all = known_elements(atomic_numbers.to(torch.long), known).all()
    open_sys = (~p.any()) | (cell == 0).all()
    c = cell.detach().to(torch.float64)
    norms = torch.linalg.norm(c, dim=1)
    zero_vector = (p & (norms == 0.0)).any()
    flat = p.all() & (torch.linalg.det(c).abs() <= 1e-10 * norms.prod())
    cell_ok = open_sys | ~(zero_vector | flat)
    return torch.stack([finite, known_all, open_sys, cell_ok])


def check_inputs(positions: Tensor, atomic_numbers: Tensor, cell: Tensor, pbc: Tensor, known: Tensor,
                 species: List[int]) -> bool:
    """``check_structure`` + ``check_species`` + ``check_cell`` with one host synchronisation (one read-back
    of ``structure_flags``) instead of about twenty; the same errors (the detailed checks run only when a
    flag is down). Returns whether the structure is open (``is_open``)."""
    check_shapes(positions, atomic_numbers, cell, pbc)
    f = structure_flags(positions, atomic_numbers, cell, pbc, known).to(torch.long)
    bits = int((f * torch.tensor([1, 2, 4, 8], dtype=torch.long, device=f.device)).sum())  # the read-back
    if (bits & 11) != 11:  # not finite, unknown element or invalid cell: the detailed checks raise
        check_finite(positions, cell)
        check_species(atomic_numbers, known, species)
        check_cell(cell, pbc)
    return (bits & 4) != 0
