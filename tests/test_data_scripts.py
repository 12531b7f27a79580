"""Fast checks of the reference-data scripts in examples/data (sampling, GFN2-xTB labels, resume).

Runs the real OpenMM samplers and tblite on a handful of frames in a temp dir (~30 s on one core).
Units: positions Å, energy eV, forces eV/Å.
"""

import os
import sys

import numpy as np
import pytest

# real dependencies, pinned in requirements.lock.txt: a missing one is a failure, never a skip
import ase.io as ase_io  # noqa: E402
import openmm  # noqa: E402,F401
import PeptideBuilder  # noqa: E402,F401
import tblite  # noqa: E402,F401

DATA = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples", "data")
sys.path.insert(0, DATA)
import _datagen  # noqa: E402
import label_xtb  # noqa: E402
import sample_fragments  # noqa: E402
import sample_peptides  # noqa: E402

PEP_ARGS = ["--n-dipeptide-gas", "2", "--n-ala3-gas", "0", "--n-dipeptide-water", "1",
            "--n-ala3-water", "0", "--n-traj-gas", "1", "--n-traj-water", "1", "--equil-steps", "10",
            "--equil-steps-water", "10", "--stride", "10", "--padding", "0.6"]
FRAG_ARGS = ["--residues", "C", "--n-per-residue", "1", "--n-traj", "1", "--equil-steps", "10",
             "--stride", "10", "--n-snapshots", "1", "--n-per-snapshot", "1",
             "--villin-equil-steps", "0", "--villin-stride", "1", "--villin-min-iter", "0"]


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    d = tmp_path_factory.mktemp("data")
    pep, frag, out = str(d / "pep.extxyz"), str(d / "frag.extxyz"), str(d / "labelled.extxyz")
    sample_peptides.main(["-o", pep] + PEP_ARGS)
    sample_fragments.main(["-o", frag] + FRAG_ARGS)
    assert label_xtb.main([pep, frag, "-o", out]) == 0
    return d, pep, frag, out


def test_sampled_and_labelled(generated):
    d, pep, frag, out = generated
    frames = ase_io.read(out, index=":")
    subsets = sorted(a.info["subset"] for a in frames)
    assert subsets == ["capped_aa", "dipeptide_gas", "dipeptide_gas", "dipeptide_water", "villin_cutout"]
    elements = set()
    for a in frames:
        e, f = _datagen.energy_forces(a)
        assert np.isfinite(e) and e < 0
        assert f.shape == (len(a), 3) and np.all(np.isfinite(f))
        assert np.abs(f).max() < 50
        assert isinstance(a.info["total_charge"], (int, np.integer))
        d_ = a.get_all_distances()
        np.fill_diagonal(d_, 10)
        assert d_.min() > 0.7
        elements.update(a.get_chemical_symbols())
    assert elements == {"H", "C", "N", "O", "S"}
    water = [a for a in frames if a.info["subset"] == "dipeptide_water"][0]
    assert len(water) == 22 + 3 * water.info["n_waters"]
    cut = [a for a in frames if a.info["subset"] == "villin_cutout"][0]
    assert len(cut) <= 60


def test_forces_match_finite_difference(generated):
    _, _, _, out = generated
    a = ase_io.read(out, index=0)
    e0, f_stored = _datagen.energy_forces(a)
    e, f = label_xtb.gfn2(a.numbers, a.positions, accuracy=0.01)
    assert abs(e - e0) < 1e-4
    np.testing.assert_allclose(f, f_stored, atol=2e-3)
    h = 1e-3
    rng = np.random.default_rng(0)
    for i, k in zip(rng.choice(len(a), 3, replace=False), rng.integers(0, 3, 3)):
        p = a.positions.copy()
        p[i, k] += h
        ep = label_xtb.gfn2(a.numbers, p, accuracy=0.01)[0]
        p[i, k] -= 2 * h
        em = label_xtb.gfn2(a.numbers, p, accuracy=0.01)[0]
        assert abs(-(ep - em) / (2 * h) - f[i, k]) < 5e-3, (i, k)


def test_resume_skips_existing(generated):
    d, pep, frag, out = generated
    before = {p: open(p).read() for p in (pep, frag, out)}
    sample_peptides.main(["-o", pep] + PEP_ARGS)
    sample_fragments.main(["-o", frag] + FRAG_ARGS)
    label_xtb.main([pep, frag, "-o", out])
    for p, text in before.items():
        assert open(p).read() == text, f"{p} changed on a rerun"
    # one more dipeptide frame: only it is sampled and labelled
    pep2, out2 = str(d / "pep2.extxyz"), str(d / "labelled2.extxyz")
    open(pep2, "w").write(before[pep])
    open(out2, "w").write(before[out])
    args = list(PEP_ARGS)
    args[1] = "3"
    sample_peptides.main(["-o", pep2] + args)
    ids = _datagen.scan_frame_ids(pep2)
    assert len(ids) == len(set(ids)) == 4 and ids[:3] == _datagen.scan_frame_ids(pep)
    label_xtb.main([pep2, frag, "-o", out2])
    ids_out = _datagen.scan_frame_ids(out2)
    assert len(ids_out) == len(set(ids_out)) == 6
    assert open(out2).read().startswith(before[out])


def test_truncated_file_is_repaired_and_failures_logged(tmp_path):
    good = _datagen.format_frame(["O", "H", "H"], [[0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0]],
                                 {"frame_id": "w/0", "total_charge": 0})
    bad = _datagen.format_frame(["H", "H"], [[0, 0, 0], [0.3, 0, 0]], {"frame_id": "h2/squeezed"})
    odd = _datagen.format_frame(["H"], [[0, 0, 0]], {"frame_id": "h/odd", "total_charge": 0})
    src = tmp_path / "in.extxyz"
    src.write_text(good + bad + odd + good[:-20])  # last frame cut off mid-line
    assert _datagen.scan_frame_ids(str(src)) == ["w/0", "h2/squeezed", "h/odd"]
    assert src.read_text() == good + bad + odd
    out = str(tmp_path / "out.extxyz")
    assert label_xtb.main([str(src), "-o", out]) == 2
    log = open(out + ".failed").read()
    assert "h2/squeezed" in log and "max-force" in log and "h/odd" in log
    assert _datagen.scan_frame_ids(out) == ["w/0"]
    assert label_xtb.main([str(src), "-o", out]) == 0  # failures are not retried by default


def test_periodic_water_box_sampled_and_labelled_with_its_cell(tmp_path):
    """sample_water_boxes writes periodic frames (Lattice, pbc T T T); label_xtb --periodic labels
    them with periodic GFN2-xTB and keeps the cell (the open-cluster energy of the same atoms differs)."""
    import sample_water_boxes

    raw, out = str(tmp_path / "boxes.extxyz"), str(tmp_path / "labelled.extxyz")
    sample_water_boxes.main(["-o", raw, "--n-water-box", "1", "--n-ala3-water-box", "0", "--water-edges", "1.0",
                             "--equil-steps", "10", "--stride", "10"])
    assert label_xtb.main([raw, "-o", out, "--periodic"]) == 0
    (a,) = ase_io.read(out, index=":")
    assert a.info["subset"] == "water_box" and a.pbc.all()
    np.testing.assert_allclose(a.cell.lengths(), [10.0, 10.0, 10.0], atol=1e-4)
    assert len(a) == 3 * a.info["n_waters"] and a.get_chemical_symbols().count("O") == a.info["n_waters"]
    e, f = _datagen.energy_forces(a)
    assert np.isfinite(e) and np.all(np.isfinite(f)) and np.abs(f).max() < 50
    assert abs(f.sum(axis=0)).max() < 1e-2  # periodic: no net force
    e_open, _ = label_xtb.gfn2(a.numbers, a.positions)
    assert abs(e_open - e) > 0.1, "the label ignored the cell"
    d_ = a.get_all_distances(mic=True)
    np.fill_diagonal(d_, 10)
    assert d_.min() > 0.7
