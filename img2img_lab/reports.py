"""Notebook reports: the guide's notebooks run headless through papermill, exported to HTML.

Two halves:

- **inside a notebook**: `check_parameters(globals())` is the first cell after the `parameters`
  cell. It reads which names papermill injected (its `# Parameters` cell, from IPython's input
  history) and which the `parameters` cell declares, fails on any injected name the notebook does
  not declare (a typo such as `-p strenght 0.5` is an error there, not a silent pass), checks the
  values of spec keys as a `SweepSpec` does, and returns the parameters as a `NotebookParameters`
  (shown as a table). `params.sweep_spec()` builds the sweep of `05_sweep_report`.
- **outside**: `report(spec, out_dir, **overrides)` validates the spec and overrides first, runs
  `05_sweep_report` with `papermill.execute_notebook` into `out_dir` (the sweep folder too), and
  writes `out_dir/report.ipynb` and `out_dir/report.html` (nbconvert; widgets render from the
  widget state nbclient stores in the notebook's metadata).

Where the notebooks live: `scripts/make_notebooks.py` writes each one twice, to `notebooks/`
(the user-facing copy with the Colab badges) and to `img2img_lab/notebooks/` (package data, so an
installed wheel can run reports). `notebook_path` prefers the package copy.
"""

from __future__ import annotations

import argparse
import ast
import difflib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from .errors import LabError, ValidationError

PACKAGE_NOTEBOOKS = Path(__file__).resolve().parent / "notebooks"
SOURCE_NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
DEFAULT_NOTEBOOK = "05_sweep_report"
# The header papermill writes on its injected cell (papermill.translators.PythonTranslator).
_INJECTED_HEADER = "# Parameters"


class ReportError(LabError):
    """A report notebook failed while executing: which cell, which error, where the partial notebook is.

    Attributes:
        cell_index: index of the failing cell in the notebook as it ran (0-based, papermill's
            injected-parameters cell included). The kept notebook also has papermill's two error
            marker cells (one at the top, one just before the failing cell).
        exec_count: its execution count, the `In [n]` shown in Jupyter.
        ename, evalue: the exception's class name and message inside the kernel.
        notebook: the executed (partial) notebook kept on disk.
    """

    def __init__(self, cell_index, exec_count, ename, evalue, notebook):
        self.cell_index, self.exec_count = cell_index, exec_count
        self.ename, self.evalue, self.notebook = ename, evalue, Path(notebook)
        super().__init__(
            f"report notebook failed in cell {cell_index} (In [{exec_count}]): {ename}: {evalue}; "
            f"the partial notebook is kept at {self.notebook}"
        )


# --------------------------------------------------------------------------------------------
# inside a notebook


@dataclass(frozen=True)
class NotebookParameters:
    """The checked parameters of a running notebook.

    Attributes:
        values: every declared parameter (and every injected spec key) with its value.
        injected: the names passed from outside (papermill `-p`/`-f`, `report()`), in order.
        declared: the names the `parameters` cell assigns.
    """

    values: Mapping[str, Any]
    injected: tuple = ()
    declared: tuple = ()

    def __getitem__(self, name):
        return self.values[name]

    @property
    def load_options(self) -> dict:
        """The `load_pipeline` options among the parameters (offload, attention, compile, ...)."""
        from .spec import option_names

        return {k: v for k, v in self.values.items() if k in option_names()}

    def sweep_spec(self):
        """The sweep of the generic report notebook (`05_sweep_report`).

        With a `spec` parameter (a YAML path), that file is the sweep and the spec keys passed from
        outside (papermill `-p`/`-f`, `report()`) replace its keys; the cell's own defaults do not.
        Without one, the spec is the spec keys among the parameters.

        Example:
            >>> params = check_parameters(globals(), spec_keys=True)
            >>> spec = params.sweep_spec()
        """
        from .spec import SweepSpec, known_keys

        source = self.values.get("spec")
        if source:
            changes = {k: self.values[k] for k in self.injected if k in known_keys()}
            return SweepSpec.from_yaml(source).replace(**_without_unset(changes))
        return notebook_spec(**{k: v for k, v in self.values.items() if k in known_keys()})

    def _repr_html_(self):
        import html

        rows = "".join(
            f"<tr><td><code>{html.escape(k)}</code></td><td><code>{html.escape(repr(v))}</code></td>"
            f"<td>{'passed in' if k in self.injected else 'default'}</td></tr>"
            for k, v in self.values.items()
        )
        return f"<table><tr><th>parameter</th><th>value</th><th></th></tr>{rows}</table>"

    def __repr__(self):
        width = max((len(k) for k in self.values), default=0)
        return "\n".join(
            f"{k:{width}s} = {v!r}{'   (passed in)' if k in self.injected else ''}" for k, v in self.values.items()
        )


def _assigned_names(source: str) -> list[str] | None:
    """Names assigned at the top level of a cell of plain assignments; None if it is something else."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return None
    names = []
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else None
        if targets is None:
            if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
                continue  # a docstring-like string
            return None
        for target in targets:
            if not isinstance(target, ast.Name):
                return None
            names.append(target.id)
    return list(dict.fromkeys(names))


def _history(namespace) -> tuple[list[str] | None, list[str]]:
    """(declared names, injected names) from IPython's input history (`In`) in `namespace`.

    Under papermill the cells run in order, so the history ends with: the `parameters` cell, the
    injected `# Parameters` cell (only when something was passed), then the current cell.
    """
    history = namespace.get("In")
    if not isinstance(history, list) or len(history) < 2:
        return None, []
    previous = history[-2]
    injected: list[str] = []
    if previous.lstrip().startswith(_INJECTED_HEADER):
        injected = _assigned_names(previous) or []
        declared = _assigned_names(history[-3]) if len(history) >= 3 else None
    else:
        declared = _assigned_names(previous)
    return declared, injected


def _check_value(name, value) -> None:
    from .spec import _check_value, known_keys, option_names

    if name in known_keys():
        _check_value(name, value)
    if name in option_names() and value is not None:
        from .loaders import validate_options

        validate_options({name: value})


def check_parameters(namespace: Mapping[str, Any], *, declared=None, spec_keys: bool = False) -> NotebookParameters:
    """Check a notebook's parameters; call it in the first cell after the `parameters` cell.

    Args:
        namespace: the notebook's `globals()`.
        declared: the parameter names; by default the names the `parameters` cell assigns, read
            from IPython's input history (the cell run just before papermill's injected one).
        spec_keys: every `SweepSpec` key is a valid parameter too (`papermill -f sweeps/x.yaml`
            injects a whole spec), as in `05_sweep_report`.

    Returns:
        A `NotebookParameters`; as the last line of a cell it shows the parameters as a table.

    Raises:
        ValidationError: a parameter was passed that the notebook does not have (with the closest
            name and the list of valid ones), or a spec key's value is invalid (`strength=1.2`).

    Example:
        >>> params = check_parameters(globals())       # papermill nb.ipynb out.ipynb -p strenght 0.5
        ValidationError: unknown notebook parameter `strenght`=0.5 (did you mean 'strength'?) ...
    """
    from .spec import known_keys

    # 1. which names were declared and which passed in
    history_declared, injected = _history(namespace)
    names = list(declared) if declared is not None else (history_declared or [])
    allowed = set(names) | (set(known_keys()) if spec_keys else set())
    # 2. an unknown injected name is an error, not a silent pass
    for name in injected:
        if name not in allowed:
            close = difflib.get_close_matches(name, sorted(allowed), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValidationError(
                f"unknown notebook parameter `{name}`={namespace.get(name)!r}{hint}; "
                f"this notebook's parameters: {sorted(names)}"
                + ("; and any sweep spec key" if spec_keys else "")
            )
    # 3. values: spec keys and loading options are checked as a SweepSpec checks them
    ordered = list(dict.fromkeys([*names, *injected]))
    values = {n: namespace[n] for n in ordered if n in namespace}
    for name, value in values.items():
        _check_value(name, value)
    return NotebookParameters(values=values, injected=tuple(injected), declared=tuple(names))


def _without_unset(keys: Mapping[str, Any]) -> dict:
    """Drop call keywords and loading options set to None: None there means "the default"."""
    from .spec import AXES

    return {k: v for k, v in keys.items() if v is not None or k in AXES or k == "name"}


def notebook_spec(**keys):
    """`SweepSpec.from_dict(keys)`, leaving out call keywords and options set to None.

    Notebook parameters such as `height = None` or `offload = None` mean "the pipeline's (or
    `load_pipeline`'s) default"; passing them on as `height=None` would change the call.

    Example:
        >>> spec = notebook_spec(model="tiny/sd15", image="cat", prompt="a cat", height=None, offload=None)
        >>> spec.params, spec.options
        ({}, {})
    """
    from .spec import SweepSpec

    return SweepSpec.from_dict(_without_unset(keys))


def report_axes(result, x=None, y=None, z=None) -> dict:
    """Grid axes for a sweep: the ones given, else the swept columns (strength, guidance_scale first).

    A sweep with one swept column gets `y="seed"` (a single row), one with none `x="seed"` too.

    Example:
        >>> lab.plot_grid(result, **report_axes(result))
    """
    preferred = ["strength", "guidance_scale", "negative_prompt"]
    given = [c for c in (x, y, z) if c]
    swept = sorted((c for c in result.swept if c not in given),
                   key=lambda c: preferred.index(c) if c in preferred else len(preferred))
    fill = [c for c in ("seed", "prompt", "model") if c not in swept and c not in given and c in result.df.columns]
    free = iter([*swept, *fill])
    axes = {"x": x or next(free), "y": y or next(free)}
    axes["z"] = z or (next(free) if len(result.swept) > 2 else None)
    return axes


# --------------------------------------------------------------------------------------------
# outside: running a report


def notebook_path(name: str = DEFAULT_NOTEBOOK) -> Path:
    """The path of one of the package's notebooks (`"05_sweep_report"`, `"02_parameters"`, ...) or a file.

    Example:
        >>> notebook_path("05_sweep_report").name
        '05_sweep_report.ipynb'
    """
    candidate = Path(os.fspath(name)).expanduser()
    if candidate.suffix == ".ipynb":
        if candidate.is_file():
            return candidate
        raise ValidationError(f"`notebook` {str(name)!r} does not exist")
    stem = candidate.name
    for folder in (PACKAGE_NOTEBOOKS, SOURCE_NOTEBOOKS):
        path = folder / f"{stem}.ipynb"
        if path.is_file():
            return path
    known = sorted({p.stem for f in (PACKAGE_NOTEBOOKS, SOURCE_NOTEBOOKS) if f.is_dir() for p in f.glob("*.ipynb")})
    close = difflib.get_close_matches(stem, known, n=1)
    raise ValidationError(
        f"`notebook` {str(name)!r} is not one of the package's notebooks {known}"
        + (f" (did you mean {close[0]!r}?)" if close else "")
    )


def _declared_parameters(path: Path) -> set[str]:
    import papermill

    return set(papermill.inspect_notebook(str(path)))


def _report_parameters(spec_or_path, out_dir: Path, notebook: Path, overrides: dict) -> dict:
    """Validate the spec and the overrides; the flat parameters to inject."""
    from .spec import SweepSpec, known_keys

    if isinstance(spec_or_path, SweepSpec):
        spec = spec_or_path
    elif isinstance(spec_or_path, Mapping):
        spec = SweepSpec.from_dict(spec_or_path)
    elif isinstance(spec_or_path, (str, os.PathLike)):
        spec = SweepSpec.from_yaml(spec_or_path)
    else:
        raise ValidationError(f"`spec_or_path` must be a SweepSpec, a YAML path or a dict, got {spec_or_path!r}")
    declared = _declared_parameters(notebook)
    spec_changes = {k: v for k, v in overrides.items() if k in known_keys()}
    others = {k: v for k, v in overrides.items() if k not in known_keys()}
    for name, value in others.items():
        if name not in declared or name in ("spec", "out_dir"):
            allowed = sorted(declared - {"spec", "out_dir"})
            close = difflib.get_close_matches(name, allowed + list(known_keys()), n=1)
            raise ValidationError(
                f"unknown report parameter `{name}`={value!r}"
                + (f" (did you mean {close[0]!r}?)" if close else "")
                + f"; valid: any sweep spec key and {allowed}"
            )
    spec = spec.replace(**spec_changes) if spec_changes else spec
    spec.to_yaml()  # an in-memory image can't travel to the kernel: fail here, before running
    return {**spec.to_dict(), **others, "spec": None, "out_dir": str(out_dir)}


def report(
    spec_or_path,
    out_dir,
    *,
    notebook: str = DEFAULT_NOTEBOOK,
    html: bool = True,
    offline_html: bool = True,
    js_dir=None,
    kernel_name: str | None = None,
    progress: bool = False,
    **parameters,
) -> Path:
    """Run a sweep report: the notebook executed headless with papermill, plus a standalone HTML.

    Args:
        spec_or_path: a `SweepSpec`, a YAML spec path or a dict of spec keys.
        out_dir: the report and sweep folder: `report.ipynb`, `report.html`, `results.parquet`,
            `images/` ... A second run resumes the sweep (finished cells are not recomputed).
        notebook: the notebook to run: a package notebook's name or an `.ipynb` path.
        html: also write `out_dir/report.html`.
        offline_html: (default) the HTML works from disk with no network: the widget JavaScript
            goes into a `report_files/` folder beside it (fetched once from the npm registry if
            missing) and nothing loads from a CDN; False: nbconvert's CDN-linked page. See
            `img2img_lab.htmlexport`.
        js_dir: where the local widget JavaScript is (default `htmlexport.default_js_dir()`).
        kernel_name: Jupyter kernel to run in (default: the notebook's, `python3`).
        progress: show papermill's progress bar over cells.
        **parameters: spec keys (`model="tiny/sd15"`, `strength=[0.3, 0.6]`) replacing the spec's,
            and the notebook's other parameters (`metrics=["ssim"]`, `x="strength"`).

    Returns:
        The path of the executed notebook, `out_dir/report.ipynb`.

    Raises:
        ValidationError: a bad spec or an unknown parameter, before anything runs.
        ReportError: a cell failed; it names the cell and the error, and the partial notebook
            stays at `out_dir/report.ipynb`.

    Example:
        >>> lab.report("sweeps/strength.yaml", "runs/strength", model="tiny/sd15",
        ...            num_inference_steps=4, height=64, width=64)
        PosixPath('runs/strength/report.ipynb')
    """
    import papermill
    from papermill.exceptions import PapermillExecutionError

    # 1. validate everything before a kernel starts
    path = notebook_path(notebook)
    out = Path(out_dir).expanduser().resolve()
    injected = _report_parameters(spec_or_path, out, path, parameters)
    if html and offline_html:
        from .htmlexport import widget_js_dir

        js_dir = widget_js_dir(js_dir)  # fetched now if missing: no failure after the sweep ran
    out.mkdir(parents=True, exist_ok=True)
    executed = out / "report.ipynb"
    # 2. execute (nbclient stores widget state in the metadata by default: store_widget_state=True)
    quiet = _SpecKeysAreKnown()
    logging.getLogger("papermill").addFilter(quiet)
    try:
        papermill.execute_notebook(
            str(path), str(executed), parameters=injected, kernel_name=kernel_name,
            progress_bar=progress, store_widget_state=True,
        )
    except PapermillExecutionError as exc:
        raise ReportError(exc.cell_index, exc.exec_count, exc.ename, exc.evalue, executed) from None
    finally:
        logging.getLogger("papermill").removeFilter(quiet)
    # 3. standalone HTML
    if html:
        export_report_html(executed, out / "report.html", offline=offline_html, js_dir=js_dir)
    return executed


class _SpecKeysAreKnown(logging.Filter):
    """Drop papermill's "Passed unknown parameter" warning for spec keys: the notebook takes them all."""

    def filter(self, record) -> bool:
        from .spec import known_keys

        message = record.getMessage()
        prefix = "Passed unknown parameter: "
        return not (message.startswith(prefix) and message[len(prefix):] in known_keys())


def export_report_html(notebook, html_path, *, offline: bool = True, js_dir=None) -> Path:
    """Write an executed notebook as standalone HTML whose widgets render from the stored state
    (`img2img_lab.htmlexport.export_html`: offline by default, the widget JavaScript beside it)."""
    from .htmlexport import export_html

    return export_html(notebook, html_path, offline=offline, js_dir=js_dir)


# --------------------------------------------------------------------------------------------
# the command line


def add_report_command(subparsers) -> None:
    """Add `img2img-lab report SPEC.yaml [--model M] [--out DIR] [--set k=v] [--cdn-html]`."""
    parser = subparsers.add_parser("report", help="run a sweep report notebook headless (ipynb + HTML)")
    from .cli import add_spec_arguments

    add_spec_arguments(parser, "report and sweep folder")
    parser.add_argument("--notebook", default=DEFAULT_NOTEBOOK, help="report notebook (name or .ipynb path)")
    parser.add_argument("--cdn-html", action="store_true",
                        help="link the HTML's scripts to CDNs instead of copying the widget JavaScript beside it")
    parser.add_argument("--offline-html", action="store_true", help=argparse.SUPPRESS)  # the default now
    parser.add_argument("--no-html", action="store_true", help="write only the executed notebook")
    parser.set_defaults(func=cmd_report)


def cmd_report(args) -> int:
    from .cli import out_dir, spec_overrides

    overrides = spec_overrides(args)
    out = out_dir(args)
    executed = report(args.spec, out, notebook=args.notebook, html=not args.no_html,
                      offline_html=not args.cdn_html, **overrides)
    print(f"notebook: {executed}")
    if not args.no_html:
        print(f"html:     {executed.with_suffix('.html')}")
    print(f"results:  {out / 'results.parquet'}")
    return 0
