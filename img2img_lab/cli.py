"""The `img2img-lab` command line: run sweeps and reports; bad input exits non-zero with one line.

    img2img-lab sweep SPEC.yaml [--model M] [--lora L ...] [--out DIR] [--set key=value ...] [--dry-run [--calibrate]]
    img2img-lab report SPEC.yaml [--model M] [--out DIR] [--set key=value ...] [--offline-html]
    img2img-lab demo [--out DIR]
    img2img-lab models [--tiny]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from . import catalog, reports
from .errors import LabError, ValidationError
from .grid import grid_image
from .planning import plan
from .runner import run_sweep
from .spec import SweepSpec, parse_set
from .tiny import TINY_MODELS
from .vocab import ERROR

ROOT = Path(__file__).resolve().parent
DEMO_SPEC = ROOT / "assets" / "demo.yaml"


def add_spec_arguments(parser, what: str = "sweep folder") -> None:
    """The arguments every spec-running command shares: SPEC, --model, --out, --set, --exact."""
    parser.add_argument("spec", help="sweep spec (YAML)")
    parser.add_argument("--model", help="override the spec's model (e.g. tiny/sd15 runs offline)")
    parser.add_argument("--out", help=f"{what} (default runs/<spec name>)")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE",
                        help="override a spec key, e.g. --set strength=[0.3,0.6] (repeatable)")
    parser.add_argument("--lora", action="append", metavar="SOURCE",
                        help="a LoRA to sweep (hub id, folder, .safetensors, tiny/sd15-lora; 'none' for the base "
                             "model); repeat for an axis: --lora none --lora tiny/sd15-lora")
    parser.add_argument("--lora-scale", action="append", type=float, metavar="SCALE",
                        help="LoRA scale (0: the base model's image); repeat for an axis")
    parser.add_argument("--exact", action="store_true",
                        help="reproducibility mode (the spec's `exact: true`): one call per cell under "
                             "deterministic algorithms, each image equal to its snippet; recorded per row")


def spec_overrides(args) -> dict:
    """Flat spec keys from --model and --set, each validated like a spec key."""
    overrides = dict(parse_set(item) for item in args.set or [])
    if args.model is not None:
        if not args.model.strip():
            raise ValidationError(f"`--model` must name a model (hub id, path or tiny/...), got {args.model!r}")
        overrides["model"] = args.model
    if getattr(args, "exact", False):
        overrides["exact"] = True
    for flag, key in (("lora", "lora"), ("lora_scale", "lora_scale")):
        values = getattr(args, flag, None)
        if values:
            values = [None if isinstance(v, str) and v.lower() in ("none", "null") else v for v in values]
            overrides[key] = values if len(values) > 1 else values[0]
    return overrides


def out_dir(args) -> Path:
    return Path(args.out) if args.out else Path("runs") / Path(args.spec).stem


def _spec_from_args(args):
    return SweepSpec.from_yaml(args.spec, **spec_overrides(args))


def _sweep_rows(result):
    """The rows of the sweep just run (its cells' keys, in cell order) and how many other rows the
    folder holds (earlier sweeps into the same folder)."""
    runs = result.meta.get("runs") or []
    keys = runs[-1].get("keys") if runs else None  # run_sweep's own record, appended under the lock
    if keys is None:
        return result.df, 0
    rank = {k: i for i, k in enumerate(keys)}
    mine = result.df[result.df["key"].isin(rank)]
    mine = mine.iloc[mine["key"].map(rank).argsort(kind="stable")]
    return mine, len(result.df) - len(mine)


def _summary(result, limit: int = 20) -> str:
    import pandas as pd

    df, others = _sweep_rows(result)
    elsewhere = f"; the folder holds {others} other row{'s' if others > 1 else ''} (results.parquet)" if others else ""
    if df.empty:
        return "(no rows)" + elsewhere
    cols = [c for c in result.swept if c in df.columns] + ["status", "seconds"]
    view = df[cols].copy()
    for col in view.columns:
        if not pd.api.types.is_numeric_dtype(view[col]):
            view[col] = view[col].map(lambda v: "(none)" if v is None or v != v else
                                      v if not isinstance(v, str) or len(v) <= 28 else v[:25] + "...")
    with pd.option_context("display.width", 120, "display.max_columns", 12):
        text = view.to_string(index=False, max_rows=limit)
    counts = df["status"].value_counts().to_dict()
    runs = result.meta.get("runs") or []
    computed, skipped = (runs[-1].get("computed"), runs[-1].get("skipped")) if runs else (None, None)
    how = f" ({computed} computed now, {skipped} already there)" if skipped else ""
    return (f"{text}\n\n{len(df)} images: " + ", ".join(f"{n} {s}" for s, n in counts.items()) + how
            + elsewhere)


def _failed(result) -> bool:
    """Whether a cell of the sweep just run ended in error (rows of other sweeps don't count)."""
    df, _ = _sweep_rows(result)
    return bool((df["status"] == ERROR).any())


def _is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def _launch_with_accelerate(argv: list[str], num_processes: int) -> int:
    """Re-run this very command under `accelerate launch` with N processes (one device each)."""
    import subprocess

    rest = []
    skip = False
    for item in argv:
        if skip:
            skip = False
            continue
        if item == "--num-processes":
            skip = True
            continue
        if item.startswith("--num-processes="):
            continue
        rest.append(item)
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(num_processes),
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "img2img_lab", *rest]
    return subprocess.call(cmd)


def cmd_sweep(args) -> int:
    if args.num_processes is not None:
        if args.num_processes < 1:
            raise ValidationError(f"`--num-processes` must be >= 1, got {args.num_processes}")
        if args.num_processes > 1 and "WORLD_SIZE" not in os.environ:
            _spec_from_args(args)  # bad input fails here, once, before any process starts
            return _launch_with_accelerate(args.argv, args.num_processes)
    spec = _spec_from_args(args)
    out = out_dir(args)
    if args.dry_run:  # the plan: no model loads (unless --calibrate), nothing is written
        print(plan(spec, out, batched=not args.no_batched, max_batch_size=args.max_batch_size,
                   calibrate=args.calibrate))
        return 0
    if args.calibrate:
        raise ValidationError("`--calibrate` goes with `--dry-run` (it times one short call for the plan)")
    result = run_sweep(spec, out, progress=not args.quiet, batched=not args.no_batched,
                       max_batch_size=args.max_batch_size)
    if not _is_main_process():
        return 0
    print(_summary(result))
    print(f"\nresults: {result.out_dir / 'results.parquet'}\nimages:  {result.out_dir / 'images'}")
    return 1 if _failed(result) else 0


def cmd_demo(args) -> int:
    """The README's main job: a small sweep on the embedded tiny model, its table and a grid."""
    spec = SweepSpec.from_yaml(DEMO_SPEC, **({"model": args.model} if args.model else {}))
    out = Path(args.out)
    result = run_sweep(spec, out, progress=not args.quiet)
    grid_path = out / "grid.png"
    grid_image(result, x="strength", y="guidance_scale", z="negative_prompt").save(grid_path)
    print(_summary(result))
    print(f"\nresults: {out / 'results.parquet'}\ngrid:    {grid_path}")
    return 1 if _failed(result) else 0


def cmd_models(args) -> int:
    """The families table (`lab.families()`, summarised), then the tiny models; `--tiny`: those alone."""
    if not args.tiny:
        print(catalog.text())
        print("\nlab.families() adds each row's note, the reason a family runs per cell and the tiny twin's call.\n")
        print("tiny models:")
    for name, text in TINY_MODELS.items():
        print(f"{name:28s} {text}")
    return 0


def add_report_command(subparsers) -> None:
    """Add `img2img-lab report SPEC.yaml [--model M] [--out DIR] [--set k=v] [--cdn-html]`."""
    parser = subparsers.add_parser("report", help="run a sweep report notebook headless (ipynb + HTML)")
    add_spec_arguments(parser, "report and sweep folder")
    parser.add_argument("--notebook", default=reports.DEFAULT_NOTEBOOK, help="report notebook (name or .ipynb path)")
    parser.add_argument("--cdn-html", action="store_true",
                        help="link the HTML's scripts to CDNs instead of copying the widget JavaScript beside it")
    parser.add_argument("--offline-html", action="store_true", help=argparse.SUPPRESS)  # the default now
    parser.add_argument("--no-html", action="store_true", help="write only the executed notebook")
    parser.set_defaults(func=cmd_report)


def cmd_report(args) -> int:
    overrides = spec_overrides(args)
    out = out_dir(args)
    executed = reports.report(args.spec, out, notebook=args.notebook, html=not args.no_html,
                              offline_html=not args.cdn_html, **overrides)
    print(f"notebook: {executed}")
    if not args.no_html:
        print(f"html:     {executed.with_suffix('.html')}")
    print(f"results:  {out / 'results.parquet'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="img2img-lab", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    sweep = sub.add_parser("sweep", help="run, resume or extend a sweep spec")
    add_spec_arguments(sweep)
    sweep.add_argument("--no-batched", action="store_true", help="one pipeline call per cell")
    sweep.add_argument("--max-batch-size", type=int, default=8,
                       help="the most cells per batch through the denoiser (halved on out-of-memory; default 8)")
    sweep.add_argument("--quiet", action="store_true", help="no progress bar")
    sweep.add_argument("--dry-run", action="store_true",
                       help="print the plan (cells, done, to compute, loads, batch, time, disk, grid size) and stop; "
                            "loads no model")
    sweep.add_argument("--calibrate", action="store_true",
                       help="with --dry-run: time one short call per kind of cell for the estimate (loads the model)")
    sweep.add_argument("--num-processes", type=int, metavar="N",
                       help="split the cells over N processes/GPUs through `accelerate launch`")
    sweep.set_defaults(func=cmd_sweep)

    demo = sub.add_parser("demo", help="the offline demo sweep on the tiny model")
    demo.add_argument("--out", default="runs/demo")
    demo.add_argument("--model", help="run the demo on another model")
    demo.add_argument("--quiet", action="store_true")
    demo.set_defaults(func=cmd_demo)

    add_report_command(sub)  # img2img-lab report SPEC.yaml [--model M] [--out DIR] [--set k=v] [--offline-html]

    models = sub.add_parser("models", help="the model families (lab.families()) and the embedded tiny models")
    models.add_argument("--tiny", action="store_true", help="list only the tiny models")
    models.set_defaults(func=cmd_models)
    return parser


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    return f"img2img-lab: {category.__name__}: {message}\n"


def main(argv=None) -> int:
    import warnings

    original, warnings.formatwarning = warnings.formatwarning, _one_line_warning  # the message, not our source
    try:
        return _main(argv)
    finally:
        warnings.formatwarning = original


def _main(argv) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.argv = argv
    try:
        return args.func(args)
    except LabError as exc:
        print(f"img2img-lab: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("img2img-lab: interrupted; finished cells are saved, run the same command to resume",
              file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
