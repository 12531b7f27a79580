"""The measurements of ``benchmarks/gpu_check.sh`` (a borrowed GPU machine, or this CPU machine for CI).

    python benchmarks/gpu_bench.py prepare --carry build/gpu_carry [--quick]    # here, with .venv
    python benchmarks/gpu_bench.py run --carry build/gpu_carry --device cuda --out DIR [--quick]
    python benchmarks/gpu_bench.py finalize --out DIR [--parts DIR/parts.tsv]   # table + shell parts

``prepare`` writes what the device run needs into the carry folder: ``systems/*.npz``
(``so3krates.systems.save_arrays``: TIP3P water boxes of ~3k, ~9k, ~25k atoms and the ~24k-atom
crambin system; ``--quick``: one ~450-atom box), ``models/*.pt`` (float32 TorchScript exports of the
shipped demo model and, without ``--quick``, of SO3LR converted from ../shared/reference/so3lr) and
``manifest.json``. The wheels are downloaded by the shell script.

``run`` measures, each point in a fresh process of this Python (so peak memory is per point):

* ``module``  the exported module (``torch.jit.load`` onto the device) called as the engines call it,
  ``module(positions, numbers, cell, pbc, charge, 0., True, False)`` (energy + forces), float32, on
  every carried system: warm-up calls, then timed calls each ended by ``torch.cuda.synchronize``;
  ms/step, atom-steps/s, peak GPU memory (``torch.cuda.max_memory_allocated``), energy.
* ``agreement``  the forces and energy of the smallest system from the device run against a CPU
  float32 evaluation of the same file (each model).
* ``openmm``  MD with ``so3krates.openmm.python_force`` (``openmm.PythonForce``; the route that
  needs no openmm-torch) on OpenMM's CUDA platform (CPU platform with ``--device cpu``): ms/step and
  ns/day for a few tens of Verlet steps (0.5 fs) on the ~3k water box with the demo model; skipped
  with a message when ``openmm`` cannot be imported. If the CUDA platform fails, the same run on
  OpenMM's CPU platform with the model on the GPU is tried.

``--quick`` (with ``--device cpu`` what CI runs): the small box only, 1 warm-up + 2 timed calls,
10 MD steps. The JSON (``gpu_check.json`` in ``--out``) is rewritten after every point, so a run
killed by its time limit still leaves what it measured. Units: Å, eV, eV/Å, ms, MiB.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
import _measure  # noqa: E402  (stdlib only)

DEMO_CKPT = ROOT / "examples" / "models" / "so3krates_demo.ckpt"
SO3LR_PARAMS = ROOT.parent / "shared" / "reference" / "so3lr" / "params.pkl"
FULL_SYSTEMS = {"water3k": 3000, "water9k": 9000, "water25k": 25000, "crambin": None}
QUICK_SYSTEMS = {"water_small": 450}
TIMESTEP_FS = 0.5
ENERGY_RTOL = 1e-4        # agreement flags (float32, different summation order on the GPU)
FORCE_ATOL = 5e-3         # eV/Å, largest component difference


# ============================================================================ prepare (here, .venv)
def prepare(carry: Path, quick: bool) -> Dict[str, Any]:
    from so3krates import systems

    (carry / "systems").mkdir(parents=True, exist_ok=True)
    (carry / "models").mkdir(parents=True, exist_ok=True)
    manifest: Dict[str, Any] = {"quick": quick, "systems": {}, "models": {}, "skipped": [],
                                "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    for name, n in (QUICK_SYSTEMS if quick else FULL_SYSTEMS).items():
        t0 = time.perf_counter()
        try:
            system = systems.water_box(n) if n else systems.crambin()
        except Exception as exc:  # noqa: BLE001  (crambin needs PeptideBuilder)
            manifest["skipped"].append(f"system {name}: {type(exc).__name__}: {exc}")
            print(f"  system {name}: SKIPPED ({exc})", flush=True)
            continue
        path = carry / "systems" / f"{name}.npz"
        systems.save_arrays(system, path)
        manifest["systems"][name] = {"file": f"systems/{name}.npz", "atoms": system.n_atoms,
                                     "charge": system.charge, "description": system.description,
                                     "box_A": [float(v) for v in system.cell.diagonal()],
                                     "bytes": path.stat().st_size}
        print(f"  system {name}: {system.n_atoms} atoms, {path.stat().st_size / 2**20:.2f} MiB "
              f"({time.perf_counter() - t0:.0f} s)", flush=True)

    from so3krates.export.exporter import export_checkpoint
    models = {"demo": DEMO_CKPT}
    if not quick:
        models["so3lr"] = SO3LR_PARAMS
    for name, source in models.items():
        out = carry / "models" / f"{name}_f32.pt"
        t0 = time.perf_counter()
        try:
            if name == "so3lr":
                if not source.is_file():
                    raise FileNotFoundError(f"{source} not found")
                from so3krates.potential.convert import convert_to_checkpoint
                ckpt = carry / "models" / "so3lr.ckpt"
                convert_to_checkpoint(source, ckpt)
                meta = export_checkpoint(str(ckpt), str(out), dtype="float32")
                ckpt.unlink()
            else:
                meta = export_checkpoint(str(source), str(out), dtype="float32")
        except Exception as exc:  # noqa: BLE001
            manifest["skipped"].append(f"model {name}: {type(exc).__name__}: {exc}")
            print(f"  model {name}: SKIPPED ({exc})", flush=True)
            continue
        manifest["models"][name] = {"file": f"models/{name}_f32.pt", "source": os.path.relpath(source, ROOT),
                                    "dtype": "float32", "cutoff": meta.get("cutoff"),
                                    "cutoff_lr": meta.get("cutoff_lr"), "species": meta.get("species"),
                                    "bytes": out.stat().st_size}
        print(f"  model {name}: {out.stat().st_size / 2**20:.2f} MiB ({time.perf_counter() - t0:.0f} s)", flush=True)
    _measure.write_json(carry / "manifest.json", manifest)
    return manifest


# ============================================================================ workers (own process)
def _use_site() -> None:
    """Import so3krates from $GPU_CHECK_SITE (the layout gpu_check.sh made), not from an editable install."""
    site = os.environ.get("GPU_CHECK_SITE")
    if site:
        sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in type(f).__module__]
        sys.path.insert(0, site)


def _sync(torch, device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def worker_info(p: Dict[str, Any]) -> Dict[str, Any]:
    import platform
    out: Dict[str, Any] = {"python": platform.python_version(), "platform": platform.platform(),
                           "cpus": os.cpu_count()}
    try:
        import numpy
        out["numpy"] = numpy.__version__
    except ImportError as exc:
        out["numpy"] = f"not importable: {exc}"
    import torch
    out.update(torch=torch.__version__, torch_cuda=torch.version.cuda, cuda_available=torch.cuda.is_available())
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        out.update(device_name=props.name, device_memory_gib=round(props.total_memory / 2**30, 1),
                   capability=f"{props.major}.{props.minor}", cudnn=torch.backends.cudnn.version(),
                   device_count=torch.cuda.device_count())
    _use_site()
    try:
        import so3krates
        out["so3krates"] = os.path.dirname(so3krates.__file__)
    except ImportError as exc:
        out["so3krates"] = f"not importable: {exc}"
    try:
        import openmm
        out["openmm"] = openmm.__version__
        out["openmm_platforms"] = [openmm.Platform.getPlatform(i).getName() for i in range(openmm.Platform.getNumPlatforms())]
        out["openmm_plugin_failures"] = [str(f)[:300] for f in openmm.Platform.getPluginLoadFailures()]
    except Exception as exc:  # noqa: BLE001
        out["openmm"] = f"not importable: {type(exc).__name__}: {exc}"
    return out


def worker_module(p: Dict[str, Any]) -> Dict[str, Any]:
    """The exported module on ``p['device']``: energy + forces per call on the box of ``p['npz']``."""
    import numpy as np
    import torch

    device = p["device"]
    torch.set_num_threads(int(p.get("threads", 1)))
    extra = {"so3krates/metadata.json": ""}
    t0 = time.perf_counter()
    module = torch.jit.load(p["model"], map_location=device, _extra_files=extra)
    module = module.to(device).eval()
    for parameter in module.parameters():
        parameter.requires_grad_(False)
    meta = json.loads(extra["so3krates/metadata.json"] or "{}")
    dtype = getattr(torch, meta.get("dtype", "float32"))
    with np.load(p["npz"]) as d:
        pos = torch.tensor(d["positions"], dtype=dtype, device=device)
        z = torch.tensor(d["numbers"], dtype=torch.long, device=device)
        cell = torch.tensor(d["cell"], dtype=dtype, device=device)
        charge = float(d["charge"]) if "charge" in d else 0.0
    pbc = torch.ones(3, dtype=torch.bool, device=device)
    mode = p.get("mode", "ordinary")
    if mode in ("capturable", "graph"):  # fixed-shape pair lists, no host read-back (docs/gpu.md)
        if not hasattr(module.potential, "capturable"):
            return {"skipped": "this model file has no capturable mode (exported before it existed)"}
        module.potential.capturable = True
        module.potential.reset_static_plan()
    if mode == "graph" and not device.startswith("cuda"):
        return {"skipped": "CUDA graphs need a CUDA device"}
    _sync(torch, device)
    load_s = time.perf_counter() - t0
    res: Dict[str, Any] = {}
    graph_doc: Dict[str, Any] = {}
    if mode == "graph":
        # warm-up on a side stream (the plan is made there), then one step captured and replayed
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(int(p.get("warmup", 3))):
                eager = module(pos, z, cell, pbc, charge, 0.0, True, False)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        t = time.perf_counter()
        with torch.cuda.graph(graph):
            captured = module(pos, z, cell, pbc, charge, 0.0, True, False)
        graph_doc["capture_s"] = time.perf_counter() - t
        graph.replay()
        _sync(torch, device)
        e_eager = float(eager["energy"].double().cpu())
        graph_doc["graph_vs_eager_energy_rel"] = abs(float(captured["energy"].double().cpu()) - e_eager) / max(abs(e_eager), 1e-30)
        graph_doc["graph_vs_eager_force_max_abs"] = float((captured["forces"] - eager["forces"]).abs().max().cpu())
        graph_doc["status"] = int(captured["status"].cpu())

    def call() -> float:
        t = time.perf_counter()
        if mode == "graph":
            graph.replay()
            out = captured
        else:
            out = module(pos, z, cell, pbc, charge, 0.0, True, False)
        _sync(torch, device)
        res["out"] = out
        return time.perf_counter() - t

    warm = [call() for _ in range(int(p.get("warmup", 3)))]
    times: List[float] = []
    t_start = time.perf_counter()
    while len(times) < int(p.get("min_steps", 3)) or (
            len(times) < int(p["steps"]) and time.perf_counter() - t_start < float(p.get("max_time_s", 10.0))):
        times.append(call())
    out = res["out"]
    energy = float(out["energy"].detach().double().cpu())
    forces = out["forces"].detach().double().cpu().numpy()
    if p.get("save_forces"):
        np.save(p["save_forces"], forces)
    mean = sum(times) / len(times)
    doc = {"atoms": int(z.shape[0]), "device": device, "dtype": str(dtype).replace("torch.", ""),
           "ms_per_step": 1e3 * mean, "ms_min": 1e3 * min(times), "ms_median": 1e3 * sorted(times)[len(times) // 2],
           "atom_steps_per_s": z.shape[0] / mean, "steps": len(times), "warmup_ms": [1e3 * w for w in warm],
           "load_s": load_s, "energy_eV": energy, "forces_finite": bool(np.isfinite(forces).all()),
           "max_abs_force_eV_A": float(np.abs(forces).max()), "threads": int(p.get("threads", 1)),
           "torch": torch.__version__, "peak_rss_gb": _measure.peak_rss_gb(), "mode": mode, **graph_doc}
    if "status" in out:
        doc["model_status"] = int(out["status"].cpu())  # capturable steps: 0 = no problem reported
    if device.startswith("cuda"):
        doc["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
        doc["peak_gpu_reserved_mb"] = torch.cuda.max_memory_reserved() / 2**20
        doc["device_name"] = torch.cuda.get_device_name()
    return doc


def worker_openmm(p: Dict[str, Any]) -> Dict[str, Any]:
    """Verlet MD with so3krates.openmm.python_force on OpenMM platform ``p['platform']``."""
    import numpy as np
    import torch

    device = p["device"]
    torch.set_num_threads(int(p.get("threads", 1)))
    if device.startswith("cuda"):
        torch.zeros(1, device=device)  # torch's (primary) CUDA context current before OpenMM creates its own
    _use_site()
    try:
        import openmm
        import openmm.unit as unit
    except Exception as exc:  # noqa: BLE001
        return {"skipped": f"openmm is not importable here ({type(exc).__name__}: {exc})"}
    from so3krates import systems
    from so3krates.openmm.python_force import python_force
    from so3krates.openmm.torch_force import EV_TO_KJ_PER_MOL

    arrays = systems.load_arrays(p["npz"])
    mm, top = systems.openmm_system(arrays)
    threads = int(p.get("threads", 1))
    mm.addForce(python_force(p["model"], top, charge=arrays["charge"], device=device,
                             num_threads=threads if device == "cpu" else None))
    integrator = openmm.VerletIntegrator(TIMESTEP_FS * unit.femtosecond)
    platform = openmm.Platform.getPlatformByName(p["platform"])
    props = {"Threads": str(threads)} if platform.getName() == "CPU" else {}
    ctx = openmm.Context(mm, integrator, platform, props)
    ctx.setPositions(np.asarray(arrays["positions"]) * 0.1 * unit.nanometer)
    e0 = ctx.getState(getEnergy=True).getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole) / EV_TO_KJ_PER_MOL
    ctx.setVelocitiesToTemperature(300 * unit.kelvin, 1)
    warmup, steps = int(p.get("warmup", 3)), int(p["steps"])
    t = time.perf_counter()
    integrator.step(warmup)
    ctx.getState(getPositions=True)
    warm_s = time.perf_counter() - t
    t = time.perf_counter()
    integrator.step(steps)
    state = ctx.getState(getPositions=True, getEnergy=True)
    wall = time.perf_counter() - t
    e1 = state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole) / EV_TO_KJ_PER_MOL
    doc = {"atoms": len(arrays["numbers"]), "platform": platform.getName(), "model_device": device,
           "openmm": openmm.__version__, "steps": steps, "timestep_fs": TIMESTEP_FS,
           "ms_per_step": 1e3 * wall / steps, "ns_per_day": TIMESTEP_FS * 1e-6 * steps / wall * 86400.0,
           "warmup_steps": warmup, "warmup_s": warm_s, "initial_energy_eV": e0, "final_energy_eV": e1,
           "finite": bool(math.isfinite(e1)), "peak_rss_gb": _measure.peak_rss_gb(),
           "platform_properties": _properties(platform, ctx)}
    if device.startswith("cuda"):
        doc["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return doc


def _properties(platform, ctx) -> Dict[str, str]:
    out = {}
    for key in platform.getPropertyNames():
        try:
            out[key] = platform.getPropertyValue(ctx, key)
        except Exception:  # noqa: BLE001
            pass
    return out


WORKERS = {"info": worker_info, "module": worker_module, "openmm": worker_openmm}


# ============================================================================ run (the device machine)
class Bench:
    def __init__(self, args):
        self.args = args
        self.carry = Path(args.carry)
        self.out = Path(args.out)
        self.work = self.out / "work"
        self.work.mkdir(parents=True, exist_ok=True)
        self.t0 = time.perf_counter()
        self.doc: Dict[str, Any] = {"benchmark": "gpu_check", "device": args.device, "quick": args.quick,
                                    "budget_s": args.budget_s, "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                    "machine": _measure.machine_info(), "info": {}, "carry": {},
                                    "module": [], "agreement": [], "openmm": [], "failures": []}
        manifest = self.carry / "manifest.json"
        if manifest.is_file():
            self.doc["carry"] = json.loads(manifest.read_text())

    def left(self) -> float:
        return self.args.budget_s - (time.perf_counter() - self.t0)

    def save(self) -> None:
        self.doc["elapsed_s"] = time.perf_counter() - self.t0
        _measure.write_json(self.out / "gpu_check.json", self.doc)

    def point(self, kind: str, params: Dict[str, Any], timeout_s: float, label: str) -> Dict[str, Any]:
        """One worker in a fresh process, killed after ``timeout_s`` (or what is left of the budget)."""
        limit = min(timeout_s, self.left() - 5.0)
        if limit < 10.0:
            res = {"status": "skipped", "error": f"time budget spent ({self.left():.0f} s left)"}
        else:
            print(f"  {label} ...", end=" ", flush=True)
            run = _measure.guarded_run([sys.executable, str(Path(__file__).resolve()), "worker", kind, json.dumps(params)],
                                       env=_measure.worker_env(int(params.get("threads", 1))), timeout_s=limit)
            parsed = _measure.parse_result(run["stdout"]) if run["returncode"] == 0 else None
            res = dict(parsed or {}, process_wall_s=run["wall_s"], tree_peak_rss_gb=run["peak_rss_gb"])
            if parsed is None:
                res["status"] = "timeout" if run["killed"] else "failed"
                res["error"] = _measure.failure_text(run)
                res["log_tail"] = (run["stdout"] + run["stderr"])[-3000:]
            elif "skipped" in parsed:
                res["status"], res["error"] = "skipped", parsed["skipped"]
            else:
                res["status"] = "ok"
            print(res["status"] if res["status"] != "ok" else f"ok ({run['wall_s']:.0f} s)", flush=True)
            if res["status"] != "ok":
                print(f"    {res['error']}", flush=True)
        if res["status"] != "ok":
            self.doc["failures"].append({"part": label, "status": res["status"], "error": res.get("error")})
        return res

    def run(self) -> None:
        a = self.args
        cpu_threads = int(os.environ.get("OMP_NUM_THREADS") or os.cpu_count() or 1)
        dev_threads = cpu_threads if a.device == "cpu" else 1
        print(f"gpu_bench: device {a.device}, budget {a.budget_s:.0f} s, carry {self.carry}", flush=True)
        self.doc["info"] = self.point("info", {}, 60, "versions")
        self.save()
        models = {k: self.carry / v["file"] for k, v in self.doc["carry"].get("models", {}).items()
                  if (self.carry / v["file"]).is_file()}
        systems = {k: (self.carry / v["file"], v["atoms"]) for k, v in self.doc["carry"].get("systems", {}).items()
                   if (self.carry / v["file"]).is_file()}
        if not models or not systems:
            self.doc["failures"].append({"part": "carry", "status": "failed",
                                         "error": f"no models or systems in {self.carry} (run gpu_check.sh --prepare)"})
            self.save()
            return
        order = sorted(systems, key=lambda k: systems[k][1])
        smallest = order[0]
        steps = dict(warmup=1, steps=2, min_steps=2) if a.quick else dict(warmup=3, steps=20, min_steps=3, max_time_s=10.0)
        plan = [m for m in ("demo", "so3lr") if m in models] + [m for m in models if m not in ("demo", "so3lr")]
        for k, model in enumerate(plan):
            for name in order:
                npz, atoms = systems[name]
                params = dict(model=str(models[model]), npz=str(npz), device=a.device, threads=dev_threads, **steps)
                if name == smallest:
                    params["save_forces"] = str(self.work / f"forces_{model}_{a.device}.npy")
                res = self.point("module", params, 120 if atoms > 5000 else 90, f"module {model} {name} ({atoms} atoms)")
                self.doc["module"].append({"atoms": atoms, **res, "model": model, "system": name})
                self.save()
            self.agreement(model, models[model], systems[smallest][0], smallest, cpu_threads)
            # capturable steps (fixed-shape pair lists, no host read-back), eagerly and replayed as a CUDA graph,
            # on the smallest and the largest box
            for name in dict.fromkeys([smallest, order[-1]]):
                npz, atoms = systems[name]
                for mode in ("capturable", "graph") if a.device.startswith("cuda") else ("capturable",):
                    params = dict(model=str(models[model]), npz=str(npz), device=a.device, threads=dev_threads,
                                  mode=mode, **steps)
                    res = self.point("module", params, 120 if atoms > 5000 else 90,
                                     f"module {model} {name} ({atoms} atoms) {mode}")
                    self.doc["module"].append({"atoms": atoms, **res, "model": model, "system": name})
                    self.save()
            if k == 0:
                self.openmm(models[model], model, systems, order, cpu_threads)
        self.save()

    def agreement(self, model: str, path: Path, npz: Path, name: str, threads: int) -> None:
        import numpy as np
        dev = next((r for r in self.doc["module"] if r["model"] == model and r["system"] == name), None)
        ref_forces = self.work / f"forces_{model}_cpu_ref.npy"
        ref = self.point("module", dict(model=str(path), npz=str(npz), device="cpu", threads=threads, warmup=0,
                                        steps=1, min_steps=1, save_forces=str(ref_forces)),
                         120, f"agreement {model} {name}: CPU float32 reference")
        entry: Dict[str, Any] = {"model": model, "system": name, "device": self.args.device,
                                 "reference": "cpu float32", "cpu_ms_per_step": ref.get("ms_per_step"),
                                 "cpu_threads": threads}
        dev_forces = self.work / f"forces_{model}_{self.args.device}.npy"
        if dev and dev.get("status") == "ok" and ref.get("status") == "ok" and dev_forces.is_file():
            f_dev, f_ref = np.load(dev_forces), np.load(ref_forces)
            diff = np.abs(f_dev - f_ref)
            e_dev, e_ref = dev["energy_eV"], ref["energy_eV"]
            entry.update(status="ok", energy_device_eV=e_dev, energy_cpu_eV=e_ref,
                         energy_rel_diff=abs(e_dev - e_ref) / max(abs(e_ref), 1e-12),
                         force_max_abs_diff_eV_A=float(diff.max()),
                         force_rms_diff_eV_A=float(np.sqrt((diff ** 2).mean())),
                         force_rel_rms_diff=float(np.sqrt((diff ** 2).sum() / max((f_ref ** 2).sum(), 1e-30))),
                         tolerances={"energy_rel": ENERGY_RTOL, "force_max_abs_eV_A": FORCE_ATOL})
            entry["agree"] = bool(entry["energy_rel_diff"] < ENERGY_RTOL and entry["force_max_abs_diff_eV_A"] < FORCE_ATOL)
            print(f"    {model} {name}: energy {e_dev:.6f} ({self.args.device}) vs {e_ref:.6f} eV (cpu), "
                  f"rel {entry['energy_rel_diff']:.1e}; forces max |dF| {entry['force_max_abs_diff_eV_A']:.1e} eV/A, "
                  f"rel rms {entry['force_rel_rms_diff']:.1e} -> {'AGREE' if entry['agree'] else 'DIFFER'}", flush=True)
        else:
            entry.update(status="failed", error=ref.get("error") or "no device result to compare")
        self.doc["agreement"].append(entry)
        self.save()

    def openmm(self, path: Path, model: str, systems, order, cpu_threads: int) -> None:
        a = self.args
        name = next((k for k in order if k.startswith("water") and systems[k][1] >= 2000), order[0])
        npz, atoms = systems[name]
        steps = dict(warmup=2, steps=10) if a.quick else dict(warmup=5, steps=40)
        base = dict(model=str(path), npz=str(npz), **steps)
        if a.device == "cpu":
            runs = [("CPU", "cpu", cpu_threads)]
        else:
            runs = [("CUDA", a.device, cpu_threads)]
        for platform, device, threads in runs:
            res = self.point("openmm", dict(base, platform=platform, device=device, threads=threads), 150,
                             f"openmm PythonForce {platform} platform, model on {device}, {model} {name}")
            self.openmm_entry(res, model, name, atoms, platform, device)
            if res["status"] == "failed" and platform == "CUDA":  # fall back: CPU platform, model on the GPU
                res = self.point("openmm", dict(base, platform="CPU", device=device, threads=cpu_threads), 150,
                                 f"openmm PythonForce CPU platform, model on {device}, {model} {name} (fallback)")
                self.openmm_entry(res, model, name, atoms, "CPU", device)

    def openmm_entry(self, res: Dict[str, Any], model: str, name: str, atoms: int, platform: str, device: str) -> None:
        """Record an OpenMM point; its energy at the start positions against the module's on the same box."""
        entry = {"atoms": atoms, "platform": platform, "model_device": device, **res, "model": model, "system": name}
        ref = next((r for r in self.doc["module"] if r["model"] == model and r["system"] == name
                    and r.get("status") == "ok"), None)
        if ref and entry.get("initial_energy_eV") is not None:
            entry["energy_vs_module_rel"] = abs(entry["initial_energy_eV"] - ref["energy_eV"]) / max(abs(ref["energy_eV"]), 1e-12)
        self.doc["openmm"].append(entry)
        self.save()


# ============================================================================ table
def _f(v, fmt: str) -> str:
    return "-" if v is None or (isinstance(v, float) and not math.isfinite(v)) else format(v, fmt)


def table(doc: Dict[str, Any]) -> str:
    info = doc.get("info", {})
    lines = [f"gpu_check: device {doc.get('device')} ({info.get('device_name', 'no GPU name')}), torch {info.get('torch')}"
             f" (CUDA {info.get('torch_cuda')}), python {info.get('python')}, openmm {info.get('openmm')}"]
    rows = [[r.get("model"), r.get("system"), r.get("atoms", "-"), r.get("mode", "ordinary"),
             _f(r.get("ms_per_step"), ".1f"), _f(r.get("atom_steps_per_s"), ".3g"), _f(r.get("peak_gpu_mb"), ".0f"),
             _f(r.get("energy_eV"), ".4f"), _f(r.get("graph_vs_eager_energy_rel"), ".1e"), r.get("status")]
            for r in doc.get("module", [])]
    lines.append("\nexported module, energy + forces (float32); mode: ordinary search, capturable (fixed shapes, "
                 "no host read-back), graph (capturable, replayed as a CUDA graph)")
    lines.append(_measure.format_table(["model", "system", "atoms", "mode", "ms/step", "atom-steps/s", "peak GPU MiB",
                                        "energy eV", "graph vs eager", "status"], rows))
    if doc.get("agreement"):
        rows = [[r.get("model"), r.get("system"), _f(r.get("energy_rel_diff"), ".1e"),
                 _f(r.get("force_max_abs_diff_eV_A"), ".1e"), _f(r.get("force_rel_rms_diff"), ".1e"),
                 {True: "yes", False: "NO"}.get(r.get("agree"), r.get("status"))] for r in doc["agreement"]]
        lines.append(f"\n{doc.get('device')} vs CPU float32 (agree: energy rel < {ENERGY_RTOL:g}, max |dF| < {FORCE_ATOL:g} eV/A)")
        lines.append(_measure.format_table(["model", "system", "energy rel diff", "max |dF| eV/A", "rel rms dF", "agree"], rows))
    if doc.get("openmm"):
        rows = [[r.get("model"), r.get("system"), r.get("platform", "-"), r.get("model_device", "-"),
                 _f(r.get("ms_per_step"), ".1f"), _f(r.get("ns_per_day"), ".3g"), _f(r.get("initial_energy_eV"), ".4f"),
                 _f(r.get("energy_vs_module_rel"), ".1e"), r.get("status")] for r in doc["openmm"]]
        lines.append("\nOpenMM PythonForce MD (Verlet, 0.5 fs)")
        lines.append(_measure.format_table(["model", "system", "platform", "model on", "ms/step", "ns/day",
                                            "E0 eV", "E0 vs module (rel)", "status"], rows))
    for part in doc.get("parts", []):
        if part.get("status") != "ok":
            lines.append(f"script part {part['name']}: {part['status']} ({part.get('seconds')} s)")
    for f in doc.get("failures", []):
        lines.append(f"failed: {f['part']}: {f['status']}: {(f.get('error') or '')[:300]}")
    return "\n".join(lines)


def finalize(out: Path, parts: Optional[Path]) -> Dict[str, Any]:
    path = out / "gpu_check.json"
    doc = json.loads(path.read_text()) if path.is_file() else {"benchmark": "gpu_check", "module": [],
                                                               "failures": [{"part": "gpu_bench", "status": "failed",
                                                                             "error": "no gpu_check.json written"}]}
    if parts and parts.is_file():
        doc["parts"] = []
        for line in parts.read_text().splitlines():
            name, status, seconds, *note = line.split("\t") + [""]
            doc["parts"].append({"name": name, "status": status, "seconds": float(seconds or 0), "note": note[0]})
    _measure.write_json(path, doc)
    print(table(doc))
    print(f"wrote {path}")
    return doc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("--carry", default=str(ROOT / "build" / "gpu_carry"))
    p.add_argument("--quick", action="store_true")
    r = sub.add_parser("run")
    r.add_argument("--carry", default=str(ROOT / "build" / "gpu_carry"))
    r.add_argument("--device", default="cuda")
    r.add_argument("--out", default=str(ROOT / "build" / "gpu_check"))
    r.add_argument("--quick", action="store_true")
    r.add_argument("--budget-s", type=float, default=360.0)
    f = sub.add_parser("finalize")
    f.add_argument("--out", default=str(ROOT / "build" / "gpu_check"))
    f.add_argument("--parts")
    w = sub.add_parser("worker")
    w.add_argument("kind", choices=sorted(WORKERS))
    w.add_argument("params")
    args = ap.parse_args()
    if args.cmd == "worker":
        _measure.result_line(WORKERS[args.kind](json.loads(args.params)))
    elif args.cmd == "prepare":
        prepare(Path(args.carry), args.quick)
    elif args.cmd == "run":
        bench = Bench(args)
        bench.run()
        bench.save()
    else:
        finalize(Path(args.out), Path(args.parts) if args.parts else None)


if __name__ == "__main__":
    main()
