"""Notebook reports: the guide's notebooks run headless through papermill, exported to HTML.

Two halves:

- **inside a notebook**: `check_parameters(globals())` is the first cell after the `parameters`
  cell. It reads which names papermill injected (its `# Parameters` cell, from IPython's input
  history) and which the `parameters` cell declares, fails on any injected name the notebook does
  not declare (a typo such as `-p strenght 0.5` is an error there, not a silent pass), checks the
  values of spec keys as a `SweepSpec` does, and returns the parameters as a `NotebookParameters`
  (shown as a table). `params.sweep_spec()` builds the sweep of `05_sweep_report`.
  Parameters left `None` take the guide's value, or a tiny stand-in when the notebook's `model`
  is a `tiny/...` model (`NOTEBOOK_DEFAULTS`, resolved by `notebook_defaults`): a companion model
  follows the main model's kind, and tiny models take few steps and small sizes.
- **outside**: `report(spec, out_dir, **overrides)` validates the spec and overrides first, runs
  `05_sweep_report` with `papermill.execute_notebook` into `out_dir` (the sweep folder too), and
  writes `out_dir/report.ipynb` and `out_dir/report.html` (nbconvert; widgets render from the
  widget state nbclient stores in the notebook's metadata).

Where the notebooks live: in one place, the repository's `notebooks/` (the files users open and
edit). A wheel ships that folder as the package's `img2img_lab/notebooks/` (setup.py maps it
there); a source checkout or an editable install reads it where it is. `notebook_folder` says
which of the two this installation has, and `notebook_path` looks notebooks up there.
"""

from __future__ import annotations

import ast
import difflib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from . import vocab
from .errors import ReportError, ValidationError
from .htmlexport import export_html, widget_js_dir
from .loaders import validate_options
from .spec import AXES, SweepSpec, check_value, known_keys, option_names, tiny_size_note

REPO_ROOT = Path(__file__).resolve().parent.parent  # a source checkout (holds sweeps/, notebooks/), when it is one
CHECKOUT_NOTEBOOKS = REPO_ROOT / "notebooks"  # the notebooks' one source, in a checkout or an editable install
PACKAGE_NOTEBOOKS = Path(__file__).resolve().parent / "notebooks"  # the same files inside an installed wheel
DEFAULT_NOTEBOOK = "05_sweep_report"
# The header papermill writes on its injected cell (papermill.translators.PythonTranslator).
_INJECTED_HEADER = "# Parameters"


# --------------------------------------------------------------------------------------------
# the notebooks' defaults: the guide's values, or tiny stand-ins for the tiny models

SD15 = "stable-diffusion-v1-5/stable-diffusion-v1-5"
DOCS = "https://huggingface.co/datasets/huggingface/documentation-images/resolve/main/diffusers"
PROMPT = "Astronaut in a jungle, cold color palette, muted colors, detailed, 8k"
# Companion models: (the guide's checkpoint, its tiny twin). A notebook's companion parameter left
# None follows the main `model`: the guide's checkpoint, or the tiny twin when `model` is tiny.
COMPANIONS = {
    "kandinsky_model": ("kandinsky-community/kandinsky-2-2-decoder", "tiny/kandinsky22"),
    "refiner_model": ("stabilityai/stable-diffusion-xl-refiner-1.0", "tiny/sdxl-refiner"),
    "comic_model": ("ogkalu/Comic-Diffusion", "tiny/sd15"),
    "pixel_model": ("kohbanye/pixel-art-style", "tiny/sd15"),
    "style_model": ("nitrosocke/elden-ring-diffusion", "tiny/sd15"),
    "controlnet_model": ("lllyasviel/control_v11f1p_sd15_depth", "tiny/controlnet-sd15"),
    "x2_upscaler_model": ("stabilityai/sd-x2-latent-upscaler", "tiny/sd-x2-latent-upscaler"),
    "x4_upscaler_model": ("stabilityai/stable-diffusion-x4-upscaler", "tiny/sd-x4-upscaler"),
    # 06_modern_models: one real checkpoint per family (the key table's), and its tiny twin
    "sdxl_model": ("stabilityai/stable-diffusion-xl-base-1.0", "tiny/sdxl"),
    "sd3_model": ("stabilityai/stable-diffusion-3.5-medium", "tiny/sd3"),
    "flux_model": ("black-forest-labs/FLUX.1-dev", "tiny/flux"),
    "kontext_model": ("black-forest-labs/FLUX.1-Kontext-dev", "tiny/flux-kontext"),
    "qwenimage_model": ("Qwen/Qwen-Image", "tiny/qwenimage"),
    "zimage_model": ("Tongyi-MAI/Z-Image-Turbo", "tiny/z-image"),
    "flux2_model": ("black-forest-labs/FLUX.2-klein-4B", "tiny/flux2-klein"),
}
MODERN_MODELS = ("sdxl_model", "sd3_model", "flux_model", "kontext_model", "qwenimage_model", "zimage_model",
                 "flux2_model")
# Tiny models run offline (sample images), at few steps and small sizes: a notebook in under a
# few minutes on a laptop CPU. Real models keep the guide's values.
_STEPS = {"num_inference_steps": (50, 4)}
_PRIOR_STEPS = {"prior_num_inference_steps": (25, 2)}
_GUIDE_IMAGE = {"image": (f"{DOCS}/img2img-init.png", "astronaut")}
_OWN_SIZE = {"height": (None, 64), "width": (None, 64)}  # None: the pipeline's (or init image's) own
# notebook -> {parameter: (the guide's value, the value with a tiny `model`)}, for parameters left None
NOTEBOOK_DEFAULTS = {
    "01_quickstart": {
        **{k: COMPANIONS[k] for k in ("kandinsky_model", "refiner_model")},
        "cat_image": (f"{DOCS}/cat.png", "cat"), **_GUIDE_IMAGE,
        "refiner_image": (f"{DOCS}/img2img-sdxl-init.png", "astronaut"),
        **_STEPS, **_PRIOR_STEPS, **_OWN_SIZE,
    },
    "02_parameters": {
        "refiner_model": COMPANIONS["refiner_model"], **_GUIDE_IMAGE,
        "refiner_image": (f"{DOCS}/img2img-sdxl-init.png", "astronaut"), **_STEPS, **_OWN_SIZE,
    },
    "03_chaining": {
        **{k: COMPANIONS[k] for k in ("kandinsky_model", "comic_model", "pixel_model", "x2_upscaler_model",
                                      "x4_upscaler_model")},
        **_GUIDE_IMAGE, **_STEPS, **_PRIOR_STEPS,
        "height": (512, 64), "width": (512, 64), "size": (None, 64),
    },
    "04_control": {
        **{k: COMPANIONS[k] for k in ("controlnet_model", "style_model")}, **_GUIDE_IMAGE,
        # tiny: the init image itself stands in for its depth map (same scene; no depth model offline)
        "control_image": ("https://huggingface.co/lllyasviel/control_v11f1p_sd15_depth/resolve/main/images/control.png",
                          "astronaut"),
        "size": ([958, 960], [64, 64]), **_STEPS,
    },
    "06_modern_models": {
        **{k: COMPANIONS[k] for k in MODERN_MODELS}, **_GUIDE_IMAGE,
        # each pipeline's own steps (FLUX.1 28, Z-Image-Turbo 9, ...) and size; bf16, as these are trained
        "num_inference_steps": (None, 2), **_OWN_SIZE, "dtype": ("bfloat16", "float32"),
    },
    # 05: the spec's value first (see NotebookParameters.sweep_spec), then these
    "05_sweep_report": {
        "model": (SD15, SD15), **_GUIDE_IMAGE, "prompt": (PROMPT, PROMPT), "negative_prompt": (None, None),
        # None: each model's own pipeline default (SD 1.5's 0.8, 7.5 and 50; Kontext takes no strength)
        "strength": (None, None), "guidance_scale": (None, None), "num_inference_steps": (None, 4), "seed": (0, 0),
    },
}


def is_tiny(model) -> bool:
    """Whether `model` (a name or a list of them) is one of the embedded `tiny/...` models (all of them)."""
    models = list(model) if isinstance(model, (list, tuple)) else [model]
    return bool(models) and all(vocab.is_tiny(m) for m in models)


def notebook_defaults(notebook: str, model) -> dict:
    """The values a notebook's parameters left `None` take: the guide's, or tiny ones for a tiny `model`.

    Args:
        notebook: a notebook name from `NOTEBOOK_DEFAULTS` (`"02_parameters"`).
        model: the notebook's main `model`; a `tiny/...` model makes the companions their tiny
            twins, the images offline samples, and steps and sizes small.

    Example:
        >>> notebook_defaults("02_parameters", "tiny/sd15")["refiner_model"]
        'tiny/sdxl-refiner'
        >>> notebook_defaults("02_parameters", "stable-diffusion-v1-5/stable-diffusion-v1-5")["num_inference_steps"]
        50
    """
    if notebook not in NOTEBOOK_DEFAULTS:
        raise ValidationError(f"`notebook` must be one of {sorted(NOTEBOOK_DEFAULTS)}, got {notebook!r}")
    tiny = is_tiny(model)
    return {name: (small if tiny else guide) for name, (guide, small) in NOTEBOOK_DEFAULTS[notebook].items()}


def resolve_spec_path(path) -> Path:
    """Find a spec file given relative to the repository root or to the current folder.

    A relative path is tried in the current folder, then in its parent (a notebook's kernel runs
    in `notebooks/`, so `"sweeps/strength.yaml"` works there too), then in the source checkout
    this package runs from (when it is one).

    Raises:
        ValidationError: no such file; the message lists the paths tried.

    Example:
        >>> resolve_spec_path("sweeps/strength.yaml")      # from the repo root or from notebooks/
        PosixPath('/home/me/img2img_lab/sweeps/strength.yaml')
    """
    if not isinstance(path, (str, os.PathLike)) or not os.fspath(path):
        raise ValidationError(f"`spec` must be the path of a sweep spec YAML, got {path!r}")
    given = Path(os.fspath(path)).expanduser()
    if given.is_absolute():
        candidates = [given]
    else:
        cwd = Path.cwd()
        roots = [cwd, cwd.parent] + ([REPO_ROOT] if (REPO_ROOT / "pyproject.toml").is_file() else [])
        candidates = list(dict.fromkeys((root / given).resolve() for root in roots))
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise ValidationError(f"`spec` {str(path)!r} not found; tried {', '.join(str(c) for c in candidates)}")


# --------------------------------------------------------------------------------------------
# inside a notebook


@dataclass(frozen=True)
class NotebookParameters:
    """The checked parameters of a running notebook.

    Attributes:
        values: every declared parameter (and every injected spec key) with its value, the ones
            left None resolved (see `resolved`).
        injected: the names passed from outside (papermill `-p`/`-f`, `report()`), in order.
        declared: the names the `parameters` cell assigns.
        resolved: the parameters that were None and took a default from `notebook_defaults`
            (the notebook's check cell puts them back into its namespace).
    """

    values: Mapping[str, Any]
    injected: tuple = ()
    declared: tuple = ()
    resolved: Mapping[str, Any] = field(default_factory=dict)

    def __getitem__(self, name):
        return self.values[name]

    @property
    def load_options(self) -> dict:
        """The `load_pipeline` options among the parameters (offload, attention, compile, ...)."""
        return {k: v for k, v in self.values.items() if k in option_names()}

    def sweep_spec(self):
        """The sweep of the generic report notebook (`05_sweep_report`).

        Each spec key takes, in this order: its value in the notebook (set in the `parameters`
        cell, so not None, or passed in by papermill `-p`/`-f` or `report()`); else the `spec`
        file's (a YAML path, relative to the current folder or the repository root, see
        `resolve_spec_path`); else the notebook's default (`notebook_defaults("05_sweep_report",
        model)`: the guide's values, a sample image and 4 steps for tiny models).

        Example:
            >>> params = check_parameters(globals(), spec_keys=True)
            >>> spec = params.sweep_spec()
        """
        import yaml

        # 1. the spec file's keys, only those it sets (its unset keys take the notebook's defaults)
        base: dict = {}
        source = self.values.get("spec")
        if source:
            path = resolve_spec_path(source)
            data = SweepSpec.from_yaml(path).to_dict()
            raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
            written = {k for k in raw if k not in ("params", "options")}
            written |= {k for nested in ("params", "options") for k in (raw.get(nested) or {})}
            base = {k: v for k, v in data.items() if k in written}
        # 2. the notebook's own values win: set in the cell (not None) or passed in (even None)
        given = {k: v for k, v in self.values.items()
                 if k in known_keys() and k != "spec" and (v is not None or k in self.injected)}
        keys = {**base, **given}
        # 3. what is still unset: the notebook's defaults, for the model it runs
        table = NOTEBOOK_DEFAULTS[DEFAULT_NOTEBOOK]
        model = keys.get("model", table["model"][0])
        defaults = notebook_defaults(DEFAULT_NOTEBOOK, model)
        return notebook_spec(**{**{k: v for k, v in defaults.items() if k not in keys}, **keys})

    def _repr_html_(self):
        import html

        rows = "".join(
            f"<tr><td><code>{html.escape(k)}</code></td><td><code>{html.escape(repr(v))}</code></td>"
            f"<td>{self._source(k) or 'default'}</td></tr>"
            for k, v in self.values.items()
        )
        return f"<table><tr><th>parameter</th><th>value</th><th></th></tr>{rows}</table>"

    def _source(self, name) -> str:
        if name in self.injected:
            return "passed in"
        return "None: resolved" if name in self.resolved else ""

    def __repr__(self):
        width = max((len(k) for k in self.values), default=0)
        return "\n".join(
            f"{k:{width}s} = {v!r}" + (f"   ({self._source(k)})" if self._source(k) else "")
            for k, v in self.values.items()
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
    if name in known_keys():
        check_value(name, value)
    if name in option_names() and value is not None:
        validate_options({name: value})


def check_parameters(
    namespace: Mapping[str, Any], *, declared=None, spec_keys: bool = False, notebook: str | None = None
) -> NotebookParameters:
    """Check a notebook's parameters; call it in the first cell after the `parameters` cell.

    Args:
        namespace: the notebook's `globals()`.
        declared: the parameter names; by default the names the `parameters` cell assigns, read
            from IPython's input history (the cell run just before papermill's injected one).
        spec_keys: every `SweepSpec` key is a valid parameter too (`papermill -f sweeps/x.yaml`
            injects a whole spec), as in `05_sweep_report`.
        notebook: the notebook's name in `NOTEBOOK_DEFAULTS`: its parameters left None then take
            `notebook_defaults(notebook, model)` (returned in `.resolved`; the namespace is not
            changed here: the check cell does `globals().update(params.resolved)`).

    Returns:
        A `NotebookParameters`; as the last line of a cell it shows the parameters as a table.

    Raises:
        ValidationError: a parameter was passed that the notebook does not have (with the closest
            name and the list of valid ones), or a spec key's value is invalid (`strength=1.2`).

    Example:
        >>> params = check_parameters(globals())       # papermill nb.ipynb out.ipynb -p strenght 0.5
        ValidationError: unknown notebook parameter `strenght`=0.5 (did you mean 'strength'?) ...
    """
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
    # 4. parameters left None: the guide's value, or the tiny one when `model` is a tiny model
    resolved = {}
    if notebook is not None:
        defaults = notebook_defaults(notebook, values.get("model"))
        resolved = {k: defaults[k] for k in values if values[k] is None and k in defaults}
        values.update(resolved)
    for name, value in values.items():
        if value is not None:  # None: "the default", resolved here or by the callee
            _check_value(name, value)
    return NotebookParameters(values=values, injected=tuple(injected), declared=tuple(names), resolved=resolved)


def _without_unset(keys: Mapping[str, Any]) -> dict:
    """Drop call keywords and loading options set to None: None there means "the default"."""
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


def notebook_folder() -> Path:
    """The folder of the guide's notebooks in this installation.

    A source checkout, or an editable install of one (the package's parent folder holds
    pyproject.toml), reads the checkout's `notebooks/`; an installed wheel its
    `img2img_lab/notebooks/`, the same files shipped as package data.

    Example:
        >>> notebook_folder().name
        'notebooks'
    """
    if (REPO_ROOT / "pyproject.toml").is_file() and CHECKOUT_NOTEBOOKS.is_dir():
        return CHECKOUT_NOTEBOOKS
    return PACKAGE_NOTEBOOKS


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
    stem, folder = candidate.name, notebook_folder()
    path = folder / f"{stem}.ipynb"
    if path.is_file():
        return path
    known = sorted(p.stem for p in folder.glob("*.ipynb"))
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
    if isinstance(spec_or_path, SweepSpec):
        spec = spec_or_path
    elif isinstance(spec_or_path, Mapping):
        spec = SweepSpec.from_dict(spec_or_path)
    elif isinstance(spec_or_path, str) and "\n" in spec_or_path:
        spec = SweepSpec.from_yaml(spec_or_path)  # YAML text
    elif isinstance(spec_or_path, (str, os.PathLike)):
        spec = SweepSpec.from_yaml(resolve_spec_path(spec_or_path))
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
    note = tiny_size_note(SweepSpec.from_dict({k: v for k, v in injected.items() if k in known_keys()}))
    if note:
        print(note)  # the executed notebook says it too, where the sweep runs
    if html and offline_html:
        js_dir = widget_js_dir(js_dir)  # fetched now if missing: no failure after the sweep ran
    out.mkdir(parents=True, exist_ok=True)
    executed = out / "report.ipynb"
    # 2. execute (nbclient stores widget state in the metadata by default: store_widget_state=True)
    quiet = _SpecKeysAreKnown()
    logging.getLogger("papermill").addFilter(quiet)
    try:
        papermill.execute_notebook(
            str(path), str(executed), parameters=injected, kernel_name=kernel_name,
            progress_bar=progress, store_widget_state=True, kernel_manager_class=_quiet_kernel_manager(),
        )
    except PapermillExecutionError as exc:
        raise ReportError(exc.cell_index, exc.exec_count, exc.ename, exc.evalue, executed) from None
    finally:
        logging.getLogger("papermill").removeFilter(quiet)
    # 3. standalone HTML
    if html:
        export_report_html(executed, out / "report.html", offline=offline_html, js_dir=js_dir)
    return executed


# Lines a report's kernel writes to its stderr that are noise for a headless local report: ipykernel
# warns on every start that jupyter_client's default transport (TCP on 127.0.0.1) is unencrypted.
KERNEL_NOISE = (b"WARNING | Kernel is running over TCP without encryption.",)


def _forward_kernel_stderr(read_fd: int, noise=KERNEL_NOISE, target_fd: int = 2) -> None:
    """Copy the kernel's stderr lines to ours (fd 2, where they went before), dropping `noise` lines."""
    with os.fdopen(read_fd, "rb") as stream:
        for line in stream:
            if not any(text in line for text in noise):
                os.write(target_fd, line)


def _quiet_kernel_manager():
    """jupyter_client's AsyncKernelManager whose kernel stderr goes through `_forward_kernel_stderr`.

    Only the report's own kernel is affected, and only the lines in `KERNEL_NOISE`; everything else
    the kernel writes to stderr still reaches the terminal.
    """
    import threading

    from jupyter_client import AsyncKernelManager

    class QuietKernelManager(AsyncKernelManager):
        async def start_kernel(self, **kw):
            read_fd, write_fd = os.pipe()
            forward = threading.Thread(target=_forward_kernel_stderr, args=(read_fd,), daemon=True,
                                       name="img2img_lab-kernel-stderr")
            forward.start()
            try:
                await super().start_kernel(**{**kw, "stderr": write_fd})
            finally:
                os.close(write_fd)  # the kernel holds its own copy; EOF when it exits ends the thread
                getattr(self, "_launch_args", {}).pop("stderr", None)  # a restart inherits ours again

    return QuietKernelManager


class _SpecKeysAreKnown(logging.Filter):
    """Drop papermill's "Passed unknown parameter" warning for spec keys: the notebook takes them all."""

    def filter(self, record) -> bool:
        message = record.getMessage()
        prefix = "Passed unknown parameter: "
        return not (message.startswith(prefix) and message[len(prefix):] in known_keys())


def export_report_html(notebook, html_path, *, offline: bool = True, js_dir=None) -> Path:
    """Write an executed notebook as standalone HTML whose widgets render from the stored state
    (`img2img_lab.htmlexport.export_html`: offline by default, the widget JavaScript beside it)."""
    return export_html(notebook, html_path, offline=offline, js_dir=js_dir)
