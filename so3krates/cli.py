"""The ``so3krates`` command: convert, train, evaluate, export, info.

Every subcommand prints what it does and fails with a one-line error (exit code 2) naming the
problem and the fix, never a bare traceback, unless ``--debug`` is given.
"""

from __future__ import annotations

import argparse
import json
import sys
import time


def _cmd_convert(args) -> None:
    from so3krates.potential.convert import convert_to_checkpoint
    t0 = time.perf_counter()
    model = convert_to_checkpoint(args.params, args.output, hyperparameters_path=args.hyperparameters,
                                  lr_cutoff=args.lr_cutoff, dispersion_damping=args.dispersion_damping)
    nparams = sum(p.numel() for p in model.parameters())
    print(f"converted {args.params} -> {args.output} ({nparams} parameters, "
          f"lr cutoff {args.lr_cutoff} Å, dispersion damping {args.dispersion_damping} Å) "
          f"in {time.perf_counter() - t0:.1f} s")


def _cmd_export(args) -> None:
    from so3krates.export.exporter import export_checkpoint
    from so3krates.export.metadata import summary_line
    t0 = time.perf_counter()
    meta = export_checkpoint(args.checkpoint, args.output, dtype=args.dtype, device=args.device, fmt=args.format,
                             fused_kernels=args.fused_kernels)
    print(f"wrote {args.output} in {time.perf_counter() - t0:.1f} s")
    print(summary_line(meta))


def _cmd_info(args) -> None:
    from so3krates.export.metadata import read_metadata, summary_line
    meta = read_metadata(args.model)
    if args.json:
        print(json.dumps(meta, indent=1))
        return
    print(summary_line(meta))
    for key in ("format", "format_version", "package_version", "torch_version", "dtype", "device", "cutoff", "cutoff_lr",
                "num_layers", "receptive_field", "ghost_cutoff", "efa", "long_range", "units", "entry_points",
                "source_checkpoint", "compiled_with", "compiled_without_fusion"):
        if key in meta:
            print(f"  {key:18s} {meta[key]}")
    print(f"  {'species':18s} {' '.join(f'{s}({z})' for s, z in zip(meta['symbols'], meta['species']))}")


def _cmd_train(args) -> None:
    from so3krates.potential.train.config import parse_overrides
    from so3krates.potential.train.trainer import train_main
    run = train_main(args.config, resume=args.resume, overrides=parse_overrides(args.set or []))
    print(f"training finished: {run}")


def _cmd_evaluate(args) -> None:
    from so3krates.potential.train.evaluate import evaluate_cli
    evaluate_cli(args)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="so3krates", description=__doc__.splitlines()[0])
    p.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = p.add_subparsers(dest="command", required=True)

    c = sub.add_parser("convert", help="convert published SO3LR JAX weights (params.pkl) to a checkpoint")
    c.add_argument("params", help="params.pkl of SO3LR (nested dict of numpy arrays)")
    c.add_argument("-o", "--output", required=True, help="output checkpoint (.ckpt)")
    c.add_argument("--hyperparameters", default=None,
                   help="hyperparameters.yaml (default: the one next to params.pkl)")
    c.add_argument("--lr-cutoff", type=float, default=12.0, help="long-range cutoff in Å (default 12)")
    c.add_argument("--dispersion-damping", type=float, default=2.0,
                   help="dispersion cutoff damping width in Å (default 2)")
    c.set_defaults(func=_cmd_convert)

    e = sub.add_parser("export", help="export a checkpoint to one TorchScript file (or .pt2 package) for "
                                      "OpenMM/LAMMPS/ASE")
    e.add_argument("checkpoint", help="checkpoint (.ckpt) from `so3krates train` or `so3krates convert`")
    e.add_argument("-o", "--output", required=True, help="output file (model.pt)")
    e.add_argument("--dtype", choices=["float32", "float64"], default="float32",
                   help="float32 for production MD, float64 for reference checks (default float32)")
    e.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="device the file is saved for")
    e.add_argument("--format", choices=["torchscript", "pt2"], default="torchscript",
                   help="torchscript (default: OpenMM TorchForce, LAMMPS, ASE) or pt2 (torch.export + "
                        "AOTInductor package, every model kind: ASE, OpenMM PythonForce, LAMMPS; compiled for this "
                        "machine's CPU, float32/float64; 2-5 minutes per model)")
    e.add_argument("--fused-kernels", action="store_true",
                   help="CPU TorchScript files: run the attention logits and their backward as so3krates' fused "
                        "C++ kernels (faster; every process loading the file needs the so3krates package or its "
                        "LAMMPS plugin, which ship them)")
    e.set_defaults(func=_cmd_export)

    i = sub.add_parser("info", help="print the metadata of an exported model")
    i.add_argument("model")
    i.add_argument("--json", action="store_true", help="print the full metadata as JSON")
    i.set_defaults(func=_cmd_info)

    t = sub.add_parser("train", help="train a model from a YAML config")
    t.add_argument("config")
    t.add_argument("--resume", action="store_true", help="continue the run from its last checkpoint")
    t.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a config entry, e.g. --set training.max_steps=100 (repeatable)")
    t.set_defaults(func=_cmd_train)

    v = sub.add_parser("evaluate", help="energy/force errors of a model on a dataset, per element")
    v.add_argument("model", help="exported model (.pt) or checkpoint (.ckpt)")
    v.add_argument("data", help="extxyz (or anything ASE reads) or npz with reference energies/forces")
    v.add_argument("-o", "--output", default=None, help="write predictions to this extxyz")
    v.add_argument("--indices", default=None, metavar="FILE",
                   help="evaluate only these frames (index file .txt/.npy/.json, e.g. a test split)")
    v.add_argument("--batch-size", type=int, default=16, help="frames per batch for checkpoints (default 16)")
    v.set_defaults(func=_cmd_evaluate)
    return p


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except (ValueError, FileNotFoundError, KeyError, RuntimeError, OSError) as exc:
        if args.debug:
            raise
        print(f"so3krates {args.command}: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
