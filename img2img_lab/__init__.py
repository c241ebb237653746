"""img2img_lab: image-to-image diffusion experiments on diffusers, side by side and reproducible.

The public API is imported lazily, so ``import img2img_lab`` is instant and torch/diffusers are
only imported when a function that needs them is first used.

Example:
    >>> import img2img_lab as lab
    >>> pipe = lab.load_pipeline("tiny/sd15")          # offline random-weight smoke model
    >>> result = lab.run_sweep(lab.SweepSpec(model="tiny/sd15", prompt="a cat",
    ...                        image="cat", strength=[0.4, 0.8]), "runs/demo")
"""

from importlib import import_module
from types import ModuleType

from . import families, quiet

__version__ = "0.1.0"


quiet.drop_torchvision_notice()


class _FamiliesPackage(ModuleType):
    """The `families/` package, callable: `lab.families()` is the key table as a DataFrame.

    `lab.families` stays the package (`lab.families.entry("flux")`, `from img2img_lab import
    families`), which every import of `img2img_lab.families` binds here; calling it returns
    `catalog.families()` (imported on the first call: pandas is heavy).
    """

    def __call__(self):
        return import_module(f"{__name__}.catalog").families()


families.__class__ = _FamiliesPackage

# public name -> module that defines it
_EXPORTS = {
    # errors
    "LabError": "errors",
    "ValidationError": "errors",
    "StoreError": "errors",
    "ReportError": "errors",
    # models
    "load_pipeline": "loaders",
    "related_pipeline": "loaders",
    "clear_pipeline_cache": "loaders",
    "SCHEDULERS": "loaders",
    "TINY_MODELS": "tiny",
    "tiny_model_path": "tiny",
    "save_single_file": "checkpoints",
    "memory_table": "memory",
    "memory_options": "memory",
    # images
    "load_image": "images",
    "sample_image": "images",
    "image_hash": "images",
    # sweeps
    "SweepSpec": "spec",
    "run_sweep": "runner",
    "plan": "planning",
    "SweepPlan": "planning",
    "SweepResult": "result",
    "load_sweep": "runner",
    # seeing results
    "plot_grid": "grid",
    "grid_image": "grid",
    "save_grid": "grid",
    "open_grid": "grid",
    "explore": "widgets",
    "code_snippet": "widgets",
    "export_html": "htmlexport",
    "fetch_widget_js": "htmlexport",
    "add_metrics": "metrics",
    "plot_tradeoff": "plots",
    "plot_memory": "plots",
    # the guide's other experiments
    "Chain": "chains",
    "Stage": "chains",
    "ChainResult": "chains",
    "run_chain": "chains",
    "sweep_chain": "chains",
    "encode_weighted": "prompts",
    "depth_map": "control",
    "prepare_control_image": "control",
    "kandinsky_prior_path": "tiny",
    # reports
    "report": "reports",
    "check_parameters": "reports",
}

__all__ = sorted([*_EXPORTS, "families"]) + ["__version__"]


def __getattr__(name):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'img2img_lab' has no attribute {name!r}")
    value = getattr(import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__():
    return __all__
