#!/usr/bin/env python
"""Label configurations with GFN2-xTB (tblite): energy in eV, forces in eV/Å.

Reads any ASE-readable file(s) of configurations (positions in Å); the net charge of each
frame is taken from ``info['total_charge']`` (or ``info['charge']``, default 0) and the number
of unpaired electrons from ``info['num_unpaired_electrons']`` (or ``info['uhf']``, or
``info['multiplicity'] - 1``; default 0), the keys ``so3krates.potential.train.frames`` reads. Periodic frames are labelled as molecules
(the cell is ignored) unless ``--periodic`` is given.

Writes extxyz frames with ``info['energy']`` (eV), ``arrays['forces']`` (eV/Å),
``info['total_charge']`` (e) and all other scalar ``info`` keys of the input (``frame_id``,
``subset``, ...). Frames without ``frame_id`` get ``<input basename>:<index>``.

Resumable: frames whose id is already in the output, or listed in the failure log
(``<output>.failed``, one ``frame_id<TAB>reason`` line each; use ``--retry-failed`` to try
them again), are skipped. Frames whose SCF does not converge, or whose largest force exceeds
``--max-force``, are logged there and left out.

Example::

    OMP_NUM_THREADS=1 python examples/data/label_xtb.py build/data/peptides.extxyz \\
        -o examples/data/so3krates_demo.extxyz
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
from tqdm import tqdm

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _datagen as C  # noqa: E402

HARTREE_EV = 27.211386245988  # CODATA 2018, as ase.units.Hartree
BOHR_A = 0.529177210903       # CODATA 2018, as ase.units.Bohr


def gfn2(numbers, positions, charge=0, uhf=0, cell=None, method="GFN2-xTB", accuracy=1.0,
         etemp=300.0, max_iter=250):
    """GFN2-xTB energy (eV) and forces (eV/Å) of one configuration (positions in Å).

    Raises RuntimeError (tblite's TBLiteRuntimeError) when the SCF does not converge.
    """
    from tblite.interface import Calculator

    kw = {}
    if cell is not None:
        kw = {"lattice": np.asarray(cell, float) / BOHR_A, "periodic": np.array([True] * 3)}
    calc = Calculator(method, np.asarray(numbers), np.asarray(positions, float) / BOHR_A,
                      charge=float(charge), uhf=int(uhf), **kw)
    calc.set("verbosity", 0)
    calc.set("accuracy", float(accuracy))
    calc.set("temperature", float(etemp) * 3.166808578545117e-06)  # K -> Hartree
    calc.set("max-iter", int(max_iter))
    res = calc.singlepoint()
    energy = float(res.get("energy")) * HARTREE_EV
    forces = -np.asarray(res.get("gradient")) * (HARTREE_EV / BOHR_A)
    return energy, forces


def unpaired_electrons(info) -> int:
    for key in ("num_unpaired_electrons", "uhf"):
        if key in info:
            return int(round(float(info[key])))
    if "multiplicity" in info:
        return int(round(float(info["multiplicity"]))) - 1
    return 0


def iter_inputs(paths):
    import ase.io
    for path in paths:
        base = os.path.basename(path)
        for k, atoms in enumerate(ase.io.iread(path, index=":")):
            fid = str(atoms.info.get("frame_id", f"{base}:{k}"))
            yield fid, atoms


def count_frames(paths) -> int:
    n = 0
    for path in paths:
        if path.endswith((".extxyz", ".xyz")):
            n += len(C.scan_frame_ids(path, repair=False))
        else:
            import ase.io
            n += len(ase.io.read(path, index=":"))
    return n


def read_failed(path):
    out = {}
    if os.path.exists(path):
        with open(path) as fh:
            for line in fh:
                if line.strip():
                    fid, _, why = line.rstrip("\n").partition("\t")
                    out[fid] = why
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="+", help="ASE-readable files of configurations")
    p.add_argument("-o", "--output", required=True, help="extxyz file to append labelled frames to")
    p.add_argument("--failed-log", default=None, help="default: <output>.failed")
    p.add_argument("--retry-failed", action="store_true", help="try frames in the failure log again")
    p.add_argument("--method", default="GFN2-xTB")
    p.add_argument("--accuracy", type=float, default=1.0, help="tblite accuracy (lower is tighter)")
    p.add_argument("--etemp", type=float, default=300.0, help="electronic temperature, K")
    p.add_argument("--max-iter", type=int, default=250, help="SCF iterations")
    p.add_argument("--max-force", type=float, default=50.0,
                   help="eV/Å; frames with a larger force component are logged and left out")
    p.add_argument("--periodic", action="store_true", help="use the cell of periodic frames")
    p.add_argument("--limit", type=int, default=None, help="label at most this many new frames")
    args = p.parse_args(argv)

    failed_log = args.failed_log or args.output + ".failed"
    done = set(C.scan_frame_ids(args.output))
    failed = {} if args.retry_failed else read_failed(failed_log)
    total = count_frames(args.inputs)
    n_new = n_fail = n_skip = 0
    t0 = time.time()
    with tqdm(total=total, desc="label_xtb", unit="frame") as pbar:
        for fid, atoms in iter_inputs(args.inputs):
            pbar.update(1)
            if fid in done or fid in failed:
                n_skip += 1
                continue
            if args.limit is not None and n_new >= args.limit:
                break
            info = {k: v for k, v in atoms.info.items()
                    if np.isscalar(v) and k not in ("energy", "free_energy", "forces")}
            charge = int(round(float(info.get("total_charge", info.get("charge", 0)))))
            uhf = unpaired_electrons(info)
            cell = atoms.cell.array if (args.periodic and atoms.pbc.all()) else None
            try:
                if (int(atoms.numbers.sum()) - charge - uhf) % 2:
                    raise RuntimeError(f"odd number of electrons for total_charge={charge}, "
                                       f"uhf={uhf}: set info['num_unpaired_electrons'] or the charge")
                e, f = gfn2(atoms.numbers, atoms.positions, charge, uhf, cell, args.method,
                            args.accuracy, args.etemp, args.max_iter)
                if not (np.isfinite(e) and np.all(np.isfinite(f))):
                    raise RuntimeError("non-finite energy or forces")
                if np.abs(f).max() > args.max_force:
                    raise RuntimeError(f"largest force {np.abs(f).max():.1f} eV/A > --max-force")
            except Exception as exc:  # noqa: BLE001 - any failure is logged, frame skipped
                why = " ".join(str(exc).split())[:200] or type(exc).__name__
                with open(failed_log, "a") as fh:
                    fh.write(f"{fid}\t{why}\n")
                failed[fid] = why
                n_fail += 1
                pbar.set_postfix(failed=n_fail)
                continue
            info.update({"frame_id": fid, "energy": e, "total_charge": charge})
            C.append_frames(args.output, [C.format_frame(atoms.get_chemical_symbols(),
                                                         atoms.positions, info, forces=f, cell=cell)])
            done.add(fid)
            n_new += 1
    dt = time.time() - t0
    print(f"[label_xtb] {n_new} labelled, {n_skip} already done/failed before, {n_fail} failed now "
          f"({failed_log}); {dt:.1f} s")
    return n_fail


if __name__ == "__main__":
    main()
