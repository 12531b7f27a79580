#!/usr/bin/env python
"""Charged molecular dimers at 4–16 Å (GFN2-xTB): like-charged ion pairs and ion–water pairs.

Subsets (``info['subset']``):

* ``cation_pair`` (total charge +2): NH4+ / CH3NH3+ with NH4+ / CH3NH3+ — Coulomb repulsion
  ≈ 14.4/R eV (3.6 eV at 4 Å, 0.9 eV at 16 Å);
* ``anion_pair`` (−2): HCOO− / CH3COO− with HCOO− / CH3COO−;
* ``ion_water`` (±1): one of the four ions with a water molecule — charge–dipole (∝ 1/R², and
  dependent on the orientation of the water relative to the ion) plus induction;
* ``opposite_pair`` (0, only with ``--opposite``): a cation with an anion. Vacuum GFN2-xTB moves
  charge between the ions when they are far apart (NH4+/HCOO−: Mulliken fragment charges
  ±0.98 at 4 Å, ±0.92 at 10 Å, ±0.85 at 16 Å), so these frames are kept only when both fragment
  charges are within ``--max-charge-transfer`` of ±1, which limits them to short distances; they
  are off by default (environment.md: opposite-charge pairs are unreliable in vacuum GFN2).

Geometries: each monomer is relaxed with GFN2-xTB; per frame two monomers (the first
``n_first`` atoms are monomer A) get random orientations, a centre-of-mass distance R uniform in
[``--rmin``, ``--rmax``] Å along a random direction (orientations redrawn until no intermolecular
atom pair is closer than ``--min-contact`` Å), and Gaussian displacements (``--noise`` Å).
The receptive field of a 2-layer model with a 3 Å cutoff is 6 Å: frames with ``min_distance`` > 6 Å
have no intermolecular atom pair a local model can connect.

``info``: ``frame_id``, ``subset``, ``pair`` (e.g. ``NH4+/CH3COO-``), ``n_first``,
``com_distance`` (Å), ``min_distance`` (Å, closest intermolecular atom pair), ``charge_a``,
``charge_b`` (GFN2 Mulliken fragment charges, e), ``total_charge``.

    OMP_NUM_THREADS=1 python examples/data/longrange/make_charged_dimers.py           # 1000 frames
    OMP_NUM_THREADS=1 python examples/data/longrange/make_charged_dimers.py --quick   # 60 frames -> build/
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402

MASSES = {1: 1.008, 6: 12.011, 7: 14.007, 8: 15.999}
TET = np.degrees(np.arccos(-1.0 / 3.0))  # 109.47°


def _three_substituents(centre, towards, length, angle_deg=TET, phase=0.0):
    """Three atoms bonded to ``centre`` (bond ``length`` Å), each at ``angle_deg`` from the bond
    ``centre → towards`` (staggered by 120°): a CH3 / NH3 group."""
    b = np.asarray(towards, float) - centre
    b /= np.linalg.norm(b)
    p = np.cross(b, [1.0, 0.0, 0.0])
    if np.linalg.norm(p) < 1e-3:
        p = np.cross(b, [0.0, 1.0, 0.0])
    p /= np.linalg.norm(p)
    q = np.cross(b, p)
    a = np.radians(angle_deg)
    out = []
    for k in range(3):
        t = phase + 2.0 * np.pi * k / 3.0
        d = np.cos(a) * b + np.sin(a) * (np.cos(t) * p + np.sin(t) * q)
        out.append(centre + length * d)
    return out


def monomers() -> dict:
    """Starting geometries (Å) and charges of the monomers, relaxed later."""
    m = {}
    s = 1.03 / np.sqrt(3.0)
    m["NH4+"] = ([7, 1, 1, 1, 1], np.array([[0, 0, 0], [s, s, s], [-s, -s, s], [-s, s, -s], [s, -s, -s]]), 1)
    c, n = np.zeros(3), np.array([0, 0, 1.50])
    pos = [c, n] + _three_substituents(c, n, 1.09) + _three_substituents(n, c, 1.03, phase=np.pi / 3)
    m["CH3NH3+"] = ([6, 7, 1, 1, 1, 1, 1, 1], np.array(pos), 1)
    a = np.radians(130.0 / 2)
    m["HCOO-"] = ([6, 8, 8, 1], np.array([[0, 0, 0], [1.25 * np.sin(a), 0, 1.25 * np.cos(a)],
                                          [-1.25 * np.sin(a), 0, 1.25 * np.cos(a)], [0, 0, -1.11]]), -1)
    a = np.radians(126.0 / 2)
    c1, c2 = np.zeros(3), np.array([0, 0, -1.54])
    pos = [c1, np.array([1.26 * np.sin(a), 0, 1.26 * np.cos(a)]), np.array([-1.26 * np.sin(a), 0, 1.26 * np.cos(a)]),
           c2] + _three_substituents(c2, c1, 1.09)
    m["CH3COO-"] = ([6, 8, 8, 6, 1, 1, 1], np.array(pos), -1)
    a = np.radians(104.5 / 2)
    m["H2O"] = ([8, 1, 1], np.array([[0, 0, 0], [0.96 * np.sin(a), 0, 0.96 * np.cos(a)],
                                     [-0.96 * np.sin(a), 0, 0.96 * np.cos(a)]]), 0)
    return m


CATIONS, ANIONS = ("NH4+", "CH3NH3+"), ("HCOO-", "CH3COO-")


def _centred(numbers, pos):
    w = np.array([MASSES[int(z)] for z in numbers])
    return pos - (w[:, None] * pos).sum(0) / w.sum()


def place_pair(rng, mono_a, mono_b, rmin, rmax, min_contact, noise):
    """Positions of A and B (B's centre of mass at distance R from A's) with random orientations."""
    (za, pa), (zb, pb) = mono_a, mono_b
    for _ in range(1000):
        r = rng.uniform(rmin, rmax)
        d = rng.normal(size=3)
        d /= np.linalg.norm(d)
        for _ in range(50):
            xa = pa @ C.random_rotation(rng).T
            xb = pb @ C.random_rotation(rng).T + r * d
            if C.min_distance(xa, xb) >= min_contact:
                xa = xa + rng.normal(scale=noise, size=xa.shape)
                xb = xb + rng.normal(scale=noise, size=xb.shape)
                return r, xa, xb
    raise RuntimeError("could not place the pair without contacts")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-o", "--output", default=None,
                    help="extxyz (default examples/data/longrange/charged_dimers.extxyz; --quick: build/data/)")
    ap.add_argument("--cation-pairs", type=int, default=400)
    ap.add_argument("--anion-pairs", type=int, default=400)
    ap.add_argument("--ion-water", type=int, default=200)
    ap.add_argument("--opposite", type=int, default=0, help="opposite-charge pairs (filtered, see above)")
    ap.add_argument("--max-charge-transfer", type=float, default=0.05,
                    help="e; opposite pairs whose Mulliken fragment charges differ more from ±1 are dropped")
    ap.add_argument("--rmin", type=float, default=4.0, help="Å, centre-of-mass distance")
    ap.add_argument("--rmax", type=float, default=16.0, help="Å")
    ap.add_argument("--min-contact", type=float, default=2.0, help="Å, closest intermolecular atom pair")
    ap.add_argument("--noise", type=float, default=0.01, help="Gaussian displacement, Å per component")
    ap.add_argument("--seed", type=int, default=2026)
    ap.add_argument("--quick", action="store_true", help="20 frames per subset into build/data/")
    args = ap.parse_args(argv)
    if args.quick:
        args.cation_pairs = args.anion_pairs = args.ion_water = 20
        args.opposite = min(args.opposite, 20)
    root = os.path.abspath(os.path.join(C.HERE, "..", "..", ".."))
    out = args.output or (os.path.join(root, "build", "data", "charged_dimers_quick.extxyz") if args.quick
                          else os.path.join(C.HERE, "charged_dimers.extxyz"))
    t0 = time.time()
    mono = {}
    for name, (z, p, q) in monomers().items():
        z = np.array(z)
        mono[name] = (z, _centred(z, C.relax(z, p, charge=q)), q)
    print(f"[charged_dimers] relaxed {len(mono)} monomers in {time.time() - t0:.1f} s", flush=True)

    plan = [("cation_pair", args.cation_pairs), ("anion_pair", args.anion_pairs),
            ("ion_water", args.ion_water), ("opposite_pair", args.opposite)]
    done = C.done_ids(out)
    prog = C.Progress(sum(n for _, n in plan), "charged_dimers")
    for subset, count in plan:
        rng = np.random.default_rng([args.seed, ["cation_pair", "anion_pair", "ion_water", "opposite_pair"].index(subset)])
        k = attempts = 0
        while k < count:
            attempts += 1
            if attempts > 20 * count + 100:
                print(f"[charged_dimers] {subset}: giving up after {attempts} attempts ({k} frames)", flush=True)
                break
            if subset == "cation_pair":
                a, b = rng.choice(CATIONS), rng.choice(CATIONS)
            elif subset == "anion_pair":
                a, b = rng.choice(ANIONS), rng.choice(ANIONS)
            elif subset == "ion_water":
                a, b = rng.choice(CATIONS + ANIONS), "H2O"
            else:
                a, b = rng.choice(CATIONS), rng.choice(ANIONS)
            (za, pa, qa), (zb, pb, qb) = mono[a], mono[b]
            r, xa, xb = place_pair(rng, (za, pa), (zb, pb), args.rmin, args.rmax, args.min_contact, args.noise)
            fid = f"{subset}:{attempts - 1}"
            if fid in done:
                k += 1
                prog.step(skipped=True)
                continue
            numbers = np.concatenate([za, zb])
            pos = np.vstack([xa, xb])
            charge = qa + qb
            try:
                e, f, q = C.gfn2(numbers, pos, charge)
            except Exception as exc:  # noqa: BLE001 - logged, frame left out
                print(f"[charged_dimers] {fid} failed: {exc}", flush=True)
                prog.step(ok=False)
                continue
            ca, cb = float(q[:len(za)].sum()), float(q[len(za):].sum())
            if subset == "opposite_pair" and max(abs(ca - qa), abs(cb - qb)) > args.max_charge_transfer:
                prog.step(ok=False)
                continue
            info = {"frame_id": fid, "subset": subset, "pair": f"{a}/{b}", "n_first": len(za),
                    "com_distance": round(float(r), 4), "min_distance": round(C.min_distance(xa, xb), 4),
                    "charge_a": round(ca, 4), "charge_b": round(cb, 4), "total_charge": int(charge)}
            C.write_frame(out, numbers, pos, e, f, info)
            k += 1
            prog.step()
    prog.summary()
    print(f"[charged_dimers] wrote {out} ({os.path.getsize(out) / 1e6:.2f} MB); {time.time() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main())
