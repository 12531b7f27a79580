#!/usr/bin/env python
"""Long alkane chains with charged termini, random conformations (GFN2-xTB).

X–(CH2)n–Y, n = 8 … 12 (``--n-range``), in three subsets (``info['subset']``):

* ``diammonium``    H3N+–(CH2)n–NH3+   (total charge +2)
* ``dicarboxylate`` −OOC–(CH2)n–COO−   (−2)
* ``ammonium``      H3N+–(CH2)n–CH3    (+1)

The two like charges of ``diammonium`` / ``dicarboxylate`` repel by ≈ 14.4/R eV, R their distance
(4.5–17 Å here, depending on the conformation: 0.8–3 eV): an energy that depends on where the far
end of the chain is, up to ~17 Å away, beyond the receptive field of a local model (2 layers ×
3 Å = 6 Å). ``ammonium`` has only one charge (induction of the chain, short-ranged by
comparison): the control.

Conformations: the backbone X, C1 … Cn, Y is built from internal coordinates (C–C 1.53, C–N 1.50,
C–C(OO) 1.54 Å; angles 112°) with backbone torsions drawn from trans (180° ± 12°, probability
``--p-trans``) or gauche± (±65° ± 12°); hydrogens are placed ideally (C–H 1.09, N–H 1.03 Å,
tetrahedral), carboxylates planar (C–O 1.26 Å, O–C–O 126°) with a random twist. Conformations
with atoms closer than 1.9 Å (any pair with an H, four or more bonds apart) or 2.9 Å (heavy atoms
four or more bonds apart) are redrawn. Each is then relaxed for ``--relax-steps`` BFGS steps with
GFN2-xTB (removes the strain of the ideal bond lengths and angles, keeps the conformation) and
displaced by Gaussian noise (``--noise`` Å), and the molecule is rotated randomly.

``info``: ``frame_id``, ``subset``, ``n_ch2``, ``end_distance`` (Å, between the terminal heavy
atoms N/C(OO)/C), ``total_charge``.

    OMP_NUM_THREADS=1 python examples/data/longrange/make_charged_chain.py           # 700 frames
    OMP_NUM_THREADS=1 python examples/data/longrange/make_charged_chain.py --quick   # 30 frames -> build/
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402

CC, CN, CCOO, CH, NH, CO = 1.53, 1.50, 1.54, 1.09, 1.03, 1.26
ANGLE = 112.0
SUBSETS = {"diammonium": ("NH3+", "NH3+"), "dicarboxylate": ("COO-", "COO-"), "ammonium": ("NH3+", "CH3")}
CHARGE = {"NH3+": 1, "COO-": -1, "CH3": 0}


def nerf(a, b, c, bond, angle_deg, torsion_deg):
    """Position of atom d with |cd| = bond, angle bcd, torsion abcd (natural extension reference frame)."""
    bc = c - b
    bc /= np.linalg.norm(bc)
    n = np.cross(b - a, bc)
    n /= np.linalg.norm(n)
    m = np.cross(n, bc)
    th, ph = np.radians(angle_deg), np.radians(torsion_deg)
    d2 = np.array([-bond * np.cos(th), bond * np.sin(th) * np.cos(ph), bond * np.sin(th) * np.sin(ph)])
    return c + d2[0] * bc + d2[1] * m + d2[2] * n


def methylene_h(a, b, c):
    """Two tetrahedral hydrogens on b (bonded to a and c)."""
    u, v = (b - a) / np.linalg.norm(b - a), (b - c) / np.linalg.norm(b - c)
    bis = (u + v) / np.linalg.norm(u + v)
    perp = np.cross(u, v)
    perp /= np.linalg.norm(perp)
    half = np.radians(109.47 / 2)
    return [b + CH * (np.cos(half) * bis + s * np.sin(half) * perp) for s in (1.0, -1.0)]


def three_h(centre, towards, length, phase):
    b = centre - towards
    b /= np.linalg.norm(b)
    p = np.cross(b, [1.0, 0.0, 0.0]) if abs(b[0]) < 0.9 else np.cross(b, [0.0, 1.0, 0.0])
    p /= np.linalg.norm(p)
    q = np.cross(b, p)
    a = np.radians(180.0 - 109.47)
    return [centre + length * (np.cos(a) * b + np.sin(a) * (np.cos(phase + 2 * np.pi * k / 3) * p
                                                            + np.sin(phase + 2 * np.pi * k / 3) * q)) for k in range(3)]


def build(rng, n, ends, p_trans):
    """Atomic numbers, positions (Å) and bond graph of X–(CH2)n–Y with random backbone torsions."""
    x, y = ends
    m = n + 2  # backbone: X-heavy, C1..Cn, Y-heavy
    lengths = [CN if x == "NH3+" else CCOO if x == "COO-" else CC] + [CC] * (n - 1) + \
        [CN if y == "NH3+" else CCOO if y == "COO-" else CC]
    bb = [np.zeros(3), np.array([lengths[0], 0, 0])]
    t = np.radians(180 - ANGLE)
    bb.append(bb[1] + lengths[1] * np.array([np.cos(t), np.sin(t), 0]))
    for k in range(3, m):
        r = rng.random()
        tor = 180.0 if r < p_trans else (65.0 if r < p_trans + (1 - p_trans) / 2 else -65.0)
        tor += rng.normal(scale=12.0)
        bb.append(nerf(bb[k - 3], bb[k - 2], bb[k - 1], lengths[k - 1], ANGLE, tor))
    z = [7 if x == "NH3+" else 6] + [6] * n + [7 if y == "NH3+" else 6]
    pos = list(bb)
    bonds = [(k, k + 1) for k in range(m - 1)]
    for k in range(1, m - 1):
        for h in methylene_h(bb[k - 1], bb[k], bb[k + 1]):
            bonds.append((k, len(pos)))
            pos.append(h)
            z.append(1)
    for end, c, nb, nb2 in ((x, 0, 1, 2), (y, m - 1, m - 2, m - 3)):
        if end in ("NH3+", "CH3"):
            for h in three_h(bb[c], bb[nb], NH if end == "NH3+" else CH, rng.uniform(0, 2 * np.pi)):
                bonds.append((c, len(pos)))
                pos.append(h)
                z.append(1)
        else:  # carboxylate: two O in a plane with a random twist about the C–C bond
            tw = rng.uniform(0, 360)
            for dt in (0.0, 180.0):
                bonds.append((c, len(pos)))
                pos.append(nerf(bb[nb2], bb[nb], bb[c], CO, 117.0, tw + dt))
                z.append(8)
    return np.array(z), np.array(pos), bonds


def topological_distances(n_atoms, bonds):
    d = np.full((n_atoms, n_atoms), 99, dtype=int)
    np.fill_diagonal(d, 0)
    adj = [[] for _ in range(n_atoms)]
    for i, j in bonds:
        adj[i].append(j)
        adj[j].append(i)
    for s in range(n_atoms):
        frontier, k = [s], 0
        while frontier:
            k += 1
            nxt = []
            for i in frontier:
                for j in adj[i]:
                    if d[s, j] > k:
                        d[s, j] = k
                        nxt.append(j)
            frontier = nxt
    return d


def clashes(z, pos, topo) -> bool:
    dist = np.sqrt(((pos[:, None] - pos[None]) ** 2).sum(-1))
    far = topo >= 4
    heavy = (z[:, None] > 1) & (z[None, :] > 1)
    return bool(np.any(far & heavy & (dist < 2.9)) or np.any(far & ~heavy & (dist < 1.9)))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-o", "--output", default=None,
                    help="extxyz (default examples/data/longrange/charged_chain.extxyz; --quick: build/data/)")
    ap.add_argument("--frames", type=int, nargs=3, default=[300, 250, 150], metavar=("DIAMMONIUM", "DICARBOXYLATE", "AMMONIUM"))
    ap.add_argument("--n-range", type=int, nargs=2, default=[8, 12], help="CH2 units, inclusive")
    ap.add_argument("--p-trans", type=float, default=0.6, help="probability of a trans backbone torsion")
    ap.add_argument("--relax-steps", type=int, default=12, help="GFN2-xTB BFGS steps per conformation")
    ap.add_argument("--noise", type=float, default=0.01, help="Gaussian displacement, Å per component")
    ap.add_argument("--seed", type=int, default=2026)
    ap.add_argument("--quick", action="store_true", help="10 frames per subset into build/data/")
    args = ap.parse_args(argv)
    if args.quick:
        args.frames = [10, 10, 10]
    root = os.path.abspath(os.path.join(C.HERE, "..", "..", ".."))
    out = args.output or (os.path.join(root, "build", "data", "charged_chain_quick.extxyz") if args.quick
                          else os.path.join(C.HERE, "charged_chain.extxyz"))
    done = C.done_ids(out)
    prog = C.Progress(sum(args.frames), "charged_chain")
    t0 = time.time()
    for s, (subset, ends) in enumerate(SUBSETS.items()):
        rng = np.random.default_rng([args.seed, s])
        charge = CHARGE[ends[0]] + CHARGE[ends[1]]
        for k in range(args.frames[s]):
            fid = f"{subset}:{k}"
            n = int(rng.integers(args.n_range[0], args.n_range[1] + 1))
            for _ in range(1000):
                z, pos, bonds = build(rng, n, ends, args.p_trans)
                if not clashes(z, pos, topological_distances(len(z), bonds)):
                    break
            noise = rng.normal(scale=args.noise, size=pos.shape)
            rot = C.random_rotation(rng)
            if fid in done:
                prog.step(skipped=True)
                continue
            try:
                if args.relax_steps > 0:
                    pos = C.relax(z, pos, charge=charge, fmax=0.05, steps=args.relax_steps)
                pos = (pos - pos.mean(0) + noise) @ rot.T
                e, f, _ = C.gfn2(z, pos, charge)
            except Exception as exc:  # noqa: BLE001 - logged, frame left out
                print(f"[charged_chain] {fid} failed: {exc}", flush=True)
                prog.step(ok=False)
                continue
            info = {"frame_id": fid, "subset": subset, "n_ch2": n,
                    "end_distance": round(float(np.linalg.norm(pos[n + 1] - pos[0])), 4), "total_charge": charge}
            C.write_frame(out, z, pos, e, f, info)
            prog.step()
    prog.summary()
    print(f"[charged_chain] wrote {out} ({os.path.getsize(out) / 1e6:.2f} MB); {time.time() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main())
