#!/usr/bin/env python
"""Cumulene torsion set: H2C=(C=)n-2 CH2 chains, C3 … C9, terminal CH2 twisted 0–180°, GFN2-xTB.

The energy of a cumulene depends on the relative twist φ of its two terminal CH2 groups (the
π systems of neighbouring double bonds are orthogonal, so the preferred twist alternates with the
number of double bonds: 90° for C3, C5, C7, C9; 0° for C4, C6, C8) and the ends are
2.6 Å (C3) … 10.2 Å (C9) apart (H…H 3.7 … 11.7 Å): for the longer chains the twist lies beyond
the receptive field of a local model with a 3 Å cutoff and two layers. This is the EFA paper's
cumulene experiment (Frank et al., arXiv 2412.08541: C9H4 torsion profile), redone with
GFN2-xTB for a series of lengths.

Geometries: for each chain length the planar (φ = 0) molecule is relaxed with GFN2-xTB (the
chain along z, CH2 planes in xz); then for every frame the hydrogens of the last carbon are
rotated about the chain axis by φ (uniform in [0°, 180°]), every atom is displaced by Gaussian
noise (``--noise``, Å per Cartesian component: small "thermal" distortions that give non-zero
forces), and the molecule is rotated randomly as a whole.

Labels: GFN2-xTB (tblite defaults), energy (eV), forces (eV/Å). ``info``: ``frame_id``,
``subset`` (``C3`` … ``C9``), ``n_carbons``, ``twist_deg`` (φ before the noise),
``end_distance`` (Å, C1…Cn), ``total_charge`` 0.

Two committed files: ``cumulenes.extxyz`` (the default: odd chains C3, C5, C7, C9, 250 frames each,
all with the energy minimum at 90°) and ``cumulenes_all.extxyz`` (every length C3 … C9, 150 each).
In the full series the sign of the torsion term alternates with the chain length, so a model must
also count the carbons modulo 2 across the molecule — a second long-range problem on top of the
orientation one (docs/efa.md).

    OMP_NUM_THREADS=1 python examples/data/longrange/make_cumulenes.py            # cumulenes.extxyz, 1000 frames
    OMP_NUM_THREADS=1 python examples/data/longrange/make_cumulenes.py --lengths 3 4 5 6 7 8 9 \
        --frames-per-length 150 -o examples/data/longrange/cumulenes_all.extxyz   # 1050 frames
    OMP_NUM_THREADS=1 python examples/data/longrange/make_cumulenes.py --quick    # 40 frames -> build/
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402

# starting geometry (Å, degrees); relaxed with GFN2-xTB before use
CC_TERMINAL, CC_INNER, CH, HCH = 1.31, 1.28, 1.09, 117.0


def planar_cumulene(n: int) -> tuple[np.ndarray, np.ndarray]:
    """C_nH_4 along z (atom order: C1 … Cn, H1, H2 on C1, H3, H4 on Cn), both CH2 in the xz plane."""
    bonds = [CC_TERMINAL] + [CC_INNER] * (n - 3) + [CC_TERMINAL] if n > 2 else [CC_TERMINAL]
    z = np.concatenate([[0.0], np.cumsum(bonds)])
    z -= z.mean()
    carbons = np.stack([np.zeros(n), np.zeros(n), z], axis=1)
    a = np.radians(HCH / 2)
    dx, dz = CH * np.sin(a), CH * np.cos(a)
    h = np.array([[dx, 0, z[0] - dz], [-dx, 0, z[0] - dz], [dx, 0, z[-1] + dz], [-dx, 0, z[-1] + dz]])
    numbers = np.array([6] * n + [1] * 4)
    return numbers, np.vstack([carbons, h])


def twisted(pos: np.ndarray, n: int, phi: float) -> np.ndarray:
    """Rotate the two H of the last carbon about the chain axis (C1→Cn) by ``phi`` radians."""
    out = pos.copy()
    axis = pos[n - 1] - pos[0]
    rot = C.rotation_about(axis, phi)
    centre = pos[n - 1]
    out[n + 2:n + 4] = (pos[n + 2:n + 4] - centre) @ rot.T + centre
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-o", "--output", default=None,
                    help="extxyz (default examples/data/longrange/cumulenes.extxyz; --quick: build/data/)")
    ap.add_argument("--lengths", type=int, nargs="+", default=[3, 5, 7, 9], help="carbon counts")
    ap.add_argument("--frames-per-length", type=int, default=250)
    ap.add_argument("--noise", type=float, default=0.01, help="Gaussian displacement, Å per component")
    ap.add_argument("--seed", type=int, default=2026)
    ap.add_argument("--quick", action="store_true", help="10 frames per length into build/data/")
    args = ap.parse_args(argv)
    if args.quick:
        args.frames_per_length = 10
    root = os.path.abspath(os.path.join(C.HERE, "..", "..", ".."))
    out = args.output or (os.path.join(root, "build", "data", "cumulenes_quick.extxyz") if args.quick
                          else os.path.join(C.HERE, "cumulenes.extxyz"))
    done = C.done_ids(out)
    total = len(args.lengths) * args.frames_per_length
    prog = C.Progress(total, "cumulenes")
    t0 = time.time()
    for n in args.lengths:
        numbers, pos0 = planar_cumulene(n)
        pos0 = C.relax(numbers, pos0)
        # the relaxed chain, re-aligned along z (it stays linear and planar by symmetry)
        pos0 -= pos0[:n].mean(0)
        rng = np.random.default_rng([args.seed, n])
        for k in range(args.frames_per_length):
            fid = f"C{n}:{k}"
            phi = rng.uniform(0.0, np.pi)
            noise = rng.normal(scale=args.noise, size=pos0.shape)
            rot = C.random_rotation(rng)
            if fid in done:
                prog.step(skipped=True)
                continue
            pos = (twisted(pos0, n, phi) + noise) @ rot.T
            try:
                e, f, _ = C.gfn2(numbers, pos, 0)
            except Exception as exc:  # noqa: BLE001 - logged, frame left out
                print(f"[cumulenes] {fid} failed: {exc}", flush=True)
                prog.step(ok=False)
                continue
            info = {"frame_id": fid, "subset": f"C{n}", "n_carbons": n, "twist_deg": round(float(np.degrees(phi)), 3),
                    "end_distance": round(float(np.linalg.norm(pos[n - 1] - pos[0])), 4), "total_charge": 0}
            C.write_frame(out, numbers, pos, e, f, info)
            prog.step()
    prog.summary()
    print(f"[cumulenes] wrote {out} ({os.path.getsize(out) / 1e6:.2f} MB); {time.time() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main())
