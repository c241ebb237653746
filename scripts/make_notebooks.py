"""Write the guide's notebooks (notebooks/*.ipynb and their package copies) from one place.

    python scripts/make_notebooks.py          # rewrite every notebook
    python scripts/make_notebooks.py --check  # exit 1 if a committed notebook differs (CI)

Every notebook gets the same frame, so they stay consistent: an "Open in Colab" badge, a first
cell that installs the package in Colab and enables Colab's widget manager, exactly one cell
tagged `parameters` (plain assignments with a short comment each), and right after it a cell
that checks the parameters (`check_parameters`: an unknown `-p name` fails there) and resolves
those left `None` (`img2img_lab.reports.NOTEBOOK_DEFAULTS`: the guide's value, or a tiny one when
`model` is a `tiny/...` model). Notebooks are written without outputs. The package copies
(`img2img_lab/notebooks/`) let an installed wheel run `img2img_lab.reports`.

The repository URL of the badges and the install cell is read from one place, the `Repository`
entry of pyproject.toml's `[project.urls]`: change it there and run this script.
"""

from __future__ import annotations

import argparse
import sys
import tomllib
from pathlib import Path
from urllib.parse import urlparse

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the checkout's img2img_lab, installed or not

from img2img_lab.reports import DOCS, NOTEBOOK_DEFAULTS, PROMPT, SD15  # noqa: E402
from img2img_lab.tiny import TINY_SIZE  # noqa: E402

FOLDERS = (ROOT / "notebooks", ROOT / "img2img_lab" / "notebooks")
BRANCH = "main"


def repository_url(pyproject: Path = ROOT / "pyproject.toml") -> str:
    """The `Repository` URL of pyproject.toml's [project.urls] (https://github.com/OWNER/NAME)."""
    urls = tomllib.loads(pyproject.read_text(encoding="utf-8")).get("project", {}).get("urls", {})
    url = urls.get("Repository", "")
    parts = urlparse(url)
    if parts.netloc != "github.com" or len(parts.path.strip("/").split("/")) != 2:
        raise SystemExit(f"pyproject.toml [project.urls] Repository must be https://github.com/OWNER/NAME, got {url!r}")
    return url.rstrip("/")


REPOSITORY = repository_url()
GITHUB_PATH = urlparse(REPOSITORY).path.strip("/")  # OWNER/NAME
QUALITY_NEGATIVE = "ugly, deformed, disfigured, poor details, bad anatomy"

# --------------------------------------------------------------------------------------------
# the shared frame


def badge(name: str) -> str:
    url = f"https://colab.research.google.com/github/{GITHUB_PATH}/blob/{BRANCH}/notebooks/{name}.ipynb"
    return f"[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]({url})"


SETUP = f'''# Colab (or wherever img2img_lab is missing): install it, from a wheel (IMG2IMG_LAB_WHEEL or
# img2img_lab-*.whl here) or a clone (.. or ./img2img_lab) when there is one, else from GitHub;
# in Colab also enable the custom widget manager ipywidgets 8 needs there.
import importlib.util
import os
import sys
from pathlib import Path

if "google.colab" in sys.modules or importlib.util.find_spec("img2img_lab") is None:
    wheels = [os.environ.get("IMG2IMG_LAB_WHEEL", ""), *sorted(map(str, Path().glob("img2img_lab-*.whl")))]
    clones = [str(p.resolve()) for p in (Path(".."), Path("img2img_lab"))
              if (p / "pyproject.toml").is_file() and 'name = "img2img_lab"' in (p / "pyproject.toml").read_text()]
    source = next((s for s in [*wheels, *clones] if s), "img2img_lab @ git+{REPOSITORY}@{BRANCH}")
    %pip install -q "{{source}}"
if "google.colab" in sys.modules:
    from google.colab import output

    output.enable_custom_widget_manager()

import img2img_lab as lab
from img2img_lab.reports import check_parameters, notebook_spec, report_axes'''

KNOBS = '''offload = None  # experiment 9: "model" or "sequential" CPU offload (needs CUDA); None: all on the device
attention = None  # experiment 9: "sdpa" (PyTorch 2's default) or "xformers"; None: diffusers' default
compile = False  # experiment 9: torch.compile the denoiser (True or a mode such as "reduce-overhead")'''

PARAMETERS_INTRO = (
    "## Parameters\n\n"
    "Edit them here, or pass them headless: `papermill {name}.ipynb out.ipynb -p model tiny/sd15`. "
    "`model` defaults to the guide's real checkpoint (a GPU is recommended); a `tiny/...` model runs "
    "offline on a CPU in seconds (random weights: its pictures are noise). A parameter left `None` "
    "takes the guide's value, or its tiny stand-in when `model` is a tiny model (the comment says "
    "which). The next cell checks the parameters (an unknown name fails there) and resolves the `None`s."
)


def resolved(notebook: str, name: str, what: str, guide: str | None = None) -> str:
    """A parameter line `name = None  # what; None: <the guide's>, or <tiny> for tiny models`."""
    value, tiny = NOTEBOOK_DEFAULTS[notebook][name]
    return f"{name} = None  # {what}; None: {guide or repr(value)}, or {tiny!r} for tiny models"


def tiny_sentence(notebook: str) -> str:
    """The intro's sentence naming what a tiny `model` changes, parameter by parameter."""
    table = NOTEBOOK_DEFAULTS[notebook]
    parts = [f"`{k}` {tiny!r}" for k, (guide, tiny) in table.items() if guide != tiny]
    return ("With a `tiny/...` `model` (offline, on a CPU in well under 3 minutes) the parameters left `None` "
            "take small values: " + ", ".join(parts) + ". Set any of them to override."
            + (f" A spec that sets no `height`/`width` runs tiny models at {TINY_SIZE}x{TINY_SIZE} px (said once per sweep)."
               if notebook == "05_sweep_report" else ""))


def notebook(name: str, title: str, intro: str, parameters: str, body: list, *, check: str) -> nbformat.NotebookNode:
    nb = new_notebook()
    nb.metadata = {
        "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
        "language_info": {"name": "python"},
        "colab": {"provenance": []},
    }
    cells = [
        new_markdown_cell(f"{badge(name)}\n\n# {title}\n\n{intro}\n\n{tiny_sentence(name)}"),
        new_code_cell(SETUP),
        new_markdown_cell(PARAMETERS_INTRO.format(name=name)),
        new_code_cell(parameters.strip() + "\n" + KNOBS, metadata={"tags": ["parameters"]}),
        new_code_cell(check),
    ]
    for kind, text in body:
        cells.append(new_markdown_cell(text.strip()) if kind == "md" else new_code_cell(text.strip()))
    nb.cells = cells
    # stable cell ids, so regenerating gives identical files
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"{name[:2]}-{i:02d}"
    return nb


def check(name: str) -> str:
    return (f'params = check_parameters(globals(), notebook="{name}")\n'
            "globals().update(params.resolved)  # the parameters left None, resolved\n"
            "params")


# --------------------------------------------------------------------------------------------
# 01: quickstart and model comparison (guide experiments 1-2)

NB01 = notebook(
    "01_quickstart",
    "Quickstart: image-to-image with Kandinsky 2.2, then three models side by side",
    "The diffusers image-to-image guide, experiments 1 and 2. Image-to-image encodes the init image to "
    "latent space, adds noise to it (how much: `strength`), and denoises it guided by the prompt. "
    "Each picture here is a one-cell sweep: stored as a PNG with its parameters and a row of a table, "
    "so re-running a cell computes nothing new.",
    f"""
model = "{SD15}"  # SD v1.5 (experiment 2); "tiny/sd15" runs offline (the None parameters then go tiny too)
{resolved("01_quickstart", "kandinsky_model", "Kandinsky 2.2, its prior loads too")}
{resolved("01_quickstart", "refiner_model", "SDXL refiner (experiment 2)")}
{resolved("01_quickstart", "cat_image", "experiment 1's init image (URL, path or a sample)", "the guide's cat.png")}
{resolved("01_quickstart", "image", "experiment 2's init image", "the guide's img2img-init.png")}
{resolved("01_quickstart", "refiner_image", "the SDXL refiner's init image", "the guide's img2img-sdxl-init.png")}
cat_prompt = "cat wizard, gandalf, lord of the rings, detailed, fantasy, cute, adorable, Pixar, Disney, 8k"  # experiment 1
prompt = "{PROMPT}"  # experiment 2
seed = 0  # every picture uses torch.Generator("cpu").manual_seed(seed)
{resolved("01_quickstart", "num_inference_steps", "denoising steps before strength: int(steps * strength) run", "the guide's 50")}
{resolved("01_quickstart", "prior_num_inference_steps", "Kandinsky 2.2 prior steps", "the guide's 25")}
{resolved("01_quickstart", "height", "output height in px", "each pipeline's own")}
{resolved("01_quickstart", "width", "output width in px", "each pipeline's own")}
out_dir = "runs/01_quickstart"  # where the sweeps (PNG images + results.parquet) are stored
""",
    [
        ("md", "## 1. Quickstart: Kandinsky 2.2\n\nThe guide calls the pipeline with its defaults; "
               "Kandinsky 2.2's default `strength` is 0.3. The init image shows beside the result."),
        ("code", """kandinsky = dict(prior_num_inference_steps=prior_num_inference_steps, strength=0.3)
common = dict(seed=seed, num_inference_steps=num_inference_steps, height=height, width=width, **params.load_options)
quickstart = lab.run_sweep(
    notebook_spec(model=kandinsky_model, image=cat_image, prompt=cat_prompt, **kandinsky, **common),
    f"{out_dir}/quickstart",
)
lab.plot_grid(quickstart, x="model", y="seed", title="cat wizard")"""),
        ("md", "## 2. Model comparison\n\nThe same prompt on SD v1.5 (defaults), the SDXL refiner (its own init "
               "image, `strength=0.5`) and Kandinsky 2.2. All three sweeps go into one folder, so one table "
               "and one grid hold them: one column per model, the init images beside the grid."),
        ("code", """folder = f"{out_dir}/model_comparison"
lab.run_sweep(notebook_spec(model=model, image=image, prompt=prompt, **common), folder)
lab.run_sweep(notebook_spec(model=refiner_model, image=refiner_image, prompt=prompt, strength=0.5, **common), folder)
comparison = lab.run_sweep(notebook_spec(model=kandinsky_model, image=image, prompt=prompt, **kandinsky, **common), folder)
comparison.table(["image", "strength", "effective_steps", "pipeline_class", "seconds", "status"])"""),
        ("code", 'lab.plot_grid(comparison, x="model", y="seed", title=prompt)'),
        ("md", "Each image is stored with its parameters; `lab.explore` browses them (select a cell for the "
               "code that reproduces it)."),
        ("code", 'lab.explore(comparison, x="model")'),
    ],
    check=check("01_quickstart"),
)

# --------------------------------------------------------------------------------------------
# 02: strength, guidance_scale, negative_prompt (guide experiments 3-5)

NB02 = notebook(
    "02_parameters",
    "strength, guidance_scale and negative_prompt: one at a time, then combined",
    "The diffusers image-to-image guide, experiments 3 to 5, as sweeps: every image is one row of a "
    "table and one PNG, so a sweep resumes after a crash and an extended sweep computes only its new "
    "cells. `strength` decides how much noise is added to the init image (with 50 steps and strength "
    "0.8, 40 denoising steps run); `guidance_scale` how closely the picture follows the prompt; "
    "`negative_prompt` what to steer away from.",
    f"""
model = "{SD15}"  # SD v1.5 (experiments 3-4); "tiny/sd15" runs offline (the None parameters then go tiny too)
{resolved("02_parameters", "refiner_model", "SDXL refiner (experiment 5)")}
{resolved("02_parameters", "image", "init image of experiments 3-4 (URL, path or a sample)", "the guide's img2img-init.png")}
{resolved("02_parameters", "refiner_image", "init image of experiment 5", "the guide's img2img-sdxl-init.png")}
prompt = "{PROMPT}"  # the guide's prompt
strength = [0.4, 0.6, 0.8, 1.0]  # experiment 3's values (figures 0.4, 0.6, 1.0; the code uses 0.8)
guidance_scale = [0.1, 5.0, 8.0, 10.0]  # experiment 4's values (figures 0.1, 5.0, 10.0; the code uses 8.0)
negative_prompt = [None, "{QUALITY_NEGATIVE}", "jungle"]  # experiment 5: none, quality, content
{resolved("02_parameters", "num_inference_steps", "denoising steps before strength: int(steps * strength) run", "the guide's 50")}
seed = 0  # every picture uses torch.Generator("cpu").manual_seed(seed)
{resolved("02_parameters", "height", "output height in px", "the init image's")}
{resolved("02_parameters", "width", "output width in px", "the init image's")}
metrics = ["ssim", "psnr", "mean_abs_change"]  # fidelity to the init image (no model download)
out_dir = "runs/02_parameters"  # where the sweeps are stored
""",
    [
        ("code", """base = notebook_spec(
    model=model, image=image, prompt=prompt, strength=strength, guidance_scale=guidance_scale,
    negative_prompt=negative_prompt, num_inference_steps=num_inference_steps, seed=seed,
    height=height, width=width, **params.load_options,
)
base"""),
        ("md", "## 3. strength\n\nHigher strength gives the model more freedom; 1.0 mostly ignores the image. "
               "`effective_steps` shows `int(num_inference_steps * strength)`."),
        ("code", """by_strength = lab.run_sweep(base.replace(guidance_scale=7.5, negative_prompt=None), f"{out_dir}/strength")
by_strength.table(["num_inference_steps", "effective_steps", "seconds", "status"])"""),
        ("code", 'lab.plot_grid(by_strength, x="strength", y="seed")'),
        ("md", "## 4. guidance_scale\n\nHigher guidance ties the picture more closely to the prompt "
               "(at the guide's `strength=0.8`)."),
        ("code", """by_guidance = lab.run_sweep(base.replace(strength=0.8, negative_prompt=None), f"{out_dir}/guidance_scale")
lab.plot_grid(by_guidance, x="guidance_scale", y="seed")"""),
        ("md", "### strength x guidance_scale\n\nBoth high: the most creative; both low: close to the image, "
               "loosely tied to the prompt. The trade-off plots measure it against the init image."),
        ("code", """combined = lab.run_sweep(base.replace(negative_prompt=None), f"{out_dir}/strength_x_guidance")
combined = lab.add_metrics(combined, metrics)
lab.plot_grid(combined, x="strength", y="guidance_scale")"""),
        ("code", 'lab.plot_tradeoff(combined, x="strength", y=metrics[0], hue="guidance_scale")'),
        ("code", 'lab.plot_tradeoff(combined, x="guidance_scale", y=metrics[-1], hue="strength")'),
        ("code", 'lab.explore(combined)'),
        ("md", "## 5. negative_prompt on the SDXL refiner\n\nA quality negative prompt versus one that removes "
               "content (\"jungle\"), against none; the refiner's own init image at `strength=0.5`."),
        ("code", """by_negative = lab.run_sweep(
    base.replace(model=refiner_model, image=refiner_image, strength=0.5, guidance_scale=7.5), f"{out_dir}/negative_prompt"
)
by_negative.table(["strength", "seconds", "status"])"""),
        ("code", 'lab.plot_grid(by_negative, x="negative_prompt", y="seed")'),
        ("md", "## All three combined\n\n`strength` x `guidance_scale` x `negative_prompt` on SD v1.5, one panel "
               "per negative prompt."),
        ("code", """everything = lab.add_metrics(lab.run_sweep(base, f"{out_dir}/combined"), metrics)
lab.plot_grid(everything, x="strength", y="guidance_scale", z="negative_prompt")"""),
        ("code", 'lab.plot_tradeoff(everything, x="strength", y=metrics[0], hue="guidance_scale", style="negative_prompt")'),
        ("code", 'lab.explore(everything)'),
    ],
    check=check("02_parameters"),
)

# --------------------------------------------------------------------------------------------
# 03: chains (guide experiment 6)

NB03 = notebook(
    "03_chaining",
    "Chaining pipelines: text-to-image then image-to-image, latent chains, upscalers",
    "The diffusers image-to-image guide, experiment 6. `run_chain` runs pipelines one after another, "
    "each stage's output the next stage's `image`. Between stages that share a VAE the output stays in "
    "latent space (`output_type=\"latent\"`), as the guide does; elsewhere it is decoded and encoded "
    "again (with a warning). Every stage gets a fresh `torch.Generator(\"cpu\").manual_seed(seed)`.",
    f"""
model = "{SD15}"  # SD v1.5; "tiny/sd15" runs offline (the None parameters then go tiny too)
{resolved("03_chaining", "kandinsky_model", "Kandinsky 2.2, its prior loads too")}
{resolved("03_chaining", "comic_model", 'SD v1.5 fine-tune, trigger "charliebo artstyle"')}
{resolved("03_chaining", "pixel_model", 'SD v1.5 fine-tune, trigger "pixelartstyle"')}
{resolved("03_chaining", "x2_upscaler_model", "latent in, latent out")}
{resolved("03_chaining", "x4_upscaler_model", "pixels in")}
{resolved("03_chaining", "image", "init image of the image-to-image chains (URL, path or a sample)", "the guide's img2img-init.png")}
prompt = "{PROMPT}"  # the guide's prompt
{resolved("03_chaining", "num_inference_steps", "denoising steps of every stage (before strength)", "the guide's 50")}
{resolved("03_chaining", "prior_num_inference_steps", "Kandinsky 2.2 prior steps", "the guide's 25")}
{resolved("03_chaining", "height", "text-to-image and Kandinsky output height in px", "the guide's 512")}
{resolved("03_chaining", "width", "text-to-image and Kandinsky output width in px", "the guide's 512")}
{resolved("03_chaining", "size", "resize the init image (longer side in px)", "keep it")}
seed = 0  # seed of every stage
""",
    [
        ("code", """from diffusers.utils import make_image_grid
from img2img_lab.chains import run_chain

init = lab.load_image(image, size=size)
steps = dict(num_inference_steps=num_inference_steps)
options = params.load_options  # offload / attention / compile for every stage's load_pipeline"""),
        ("md", "## Text-to-image, then image-to-image\n\nSD v1.5 makes a picture from the prompt; Kandinsky 2.2 "
               "(its own autoencoder, so the picture is handed over as an image) transforms it."),
        ("code", """t2i_then_i2i = run_chain([
    (model, {"task": "text2img", "prompt": prompt, "height": height, "width": width, **steps}, options),
    (kandinsky_model, {"prompt": "oil painting, " + prompt, "height": height, "width": width,
                       "prior_num_inference_steps": prior_num_inference_steps, **steps}, options),
], seed=seed)
make_image_grid([t2i_then_i2i.images[0], t2i_then_i2i.image], rows=1, cols=2, resize=256)"""),
        ("md", "## Image-to-image three times, in latent space\n\nSD v1.5, then Comic-Diffusion, then pixel-art-style: "
               "the three share SD v1.5's VAE, so the latents go from one to the next without decoding."),
        ("code", """import pandas as pd

styles = run_chain([
    (model, {"prompt": prompt, **steps}, options),
    (comic_model, {"prompt": "Astronaut in a jungle, charliebo artstyle", **steps}, options),
    (pixel_model, {"prompt": "Astronaut in a jungle, pixelartstyle", **steps}, options),
], image=init, seed=seed)
pd.DataFrame(styles.params)[["stage", "model", "input", "output_type", "prompt"]]"""),
        ("code", 'make_image_grid([init, styles.image], rows=1, cols=2, resize=256)'),
        ("md", "## Image-to-image, then the x2 latent upscaler, then the x4 upscaler\n\nThe x2 upscaler takes "
               "and returns latents; the x4 upscaler takes pixels. Shown at 512x512 as in the guide."),
        ("code", """upscaled = run_chain([
    (model, {"prompt": prompt, **steps}, options),
    (x2_upscaler_model, {"prompt": prompt, **steps}, options),
    (x4_upscaler_model, {"prompt": prompt, **steps}, options),
], image=init, seed=seed)
print(upscaled.image.size)
make_image_grid([init.resize((512, 512)), upscaled.image.resize((512, 512))], rows=1, cols=2)"""),
    ],
    check=check("03_chaining"),
)

# --------------------------------------------------------------------------------------------
# 04: compel and ControlNet (guide experiments 7-8)

NB04 = notebook(
    "04_control",
    "Prompt weighting with compel, and ControlNet image-to-image",
    "The diffusers image-to-image guide, experiments 7 and 8. Compel turns a weighted prompt "
    "(`\"Astronaut in a (jungle)1.5\"`) into `prompt_embeds`, passed instead of `prompt`. A depth "
    "ControlNet keeps the init image's structure while the prompt restyles it; a style model then "
    "restyles the ControlNet's result.",
    f"""
model = "{SD15}"  # SD v1.5; "tiny/sd15" runs offline (the None parameters then go tiny too)
{resolved("04_control", "controlnet_model", "depth ControlNet (a hub id, a folder or a tiny name)")}
{resolved("04_control", "style_model", 'trigger "elden ring style"')}
{resolved("04_control", "image", "the init image (URL, path or a sample)", "the guide's img2img-init.png")}
{resolved("04_control", "control_image", "the depth control image", "the guide's control.png")}
{resolved("04_control", "size", "(width, height) the init and control images are resized to")}
prompt = "{PROMPT}"  # the guide's prompt
weighted_prompt = "Astronaut in a (jungle)1.5, cold color palette, muted colors, detailed, 8k"  # compel syntax
negative_prompt = "{QUALITY_NEGATIVE}"  # the quality negative prompt
strength = 0.8  # ControlNet and compel image-to-image strength (the pipelines' default)
{resolved("04_control", "num_inference_steps", "denoising steps before strength", "the guide's 50")}
seed = 0  # every call uses torch.Generator("cpu").manual_seed(seed)
""",
    [
        ("code", """import torch
from diffusers.utils import make_image_grid
from img2img_lab.control import prepare_control_image
from img2img_lab.prompts import encode_weighted

init = lab.load_image(image, size=size)"""),
        ("md", "## 7. Prompt weighting with compel\n\n`(jungle)1.5` weighs the jungle 1.5 times; "
               "`encode_weighted` returns the embeddings (cached per prompt text)."),
        ("code", """pipe = lab.load_pipeline(model, **params.load_options)
weighted = encode_weighted(pipe, weighted_prompt, negative_prompt)
plain = pipe(prompt, negative_prompt=negative_prompt, image=init, strength=strength,
             num_inference_steps=num_inference_steps, generator=torch.Generator("cpu").manual_seed(seed)).images[0]
with_compel = pipe(**weighted, image=init, strength=strength,
                   num_inference_steps=num_inference_steps, generator=torch.Generator("cpu").manual_seed(seed)).images[0]
make_image_grid([init, plain, with_compel], rows=1, cols=3, resize=256)"""),
        ("md", "## 8. ControlNet image-to-image, then restyle\n\nThe depth image keeps the composition; then "
               "elden-ring-diffusion restyles the result (`strength=0.45`, `guidance_scale=10.5`)."),
        ("code", """depth = prepare_control_image(control_image, size=init.size)
controlnet = lab.load_pipeline(model, controlnet=controlnet_model, **params.load_options)
controlled = controlnet(prompt, image=init, control_image=depth, strength=strength,
                        num_inference_steps=num_inference_steps, generator=torch.Generator("cpu").manual_seed(seed)).images[0]
style = lab.load_pipeline(style_model, **params.load_options)
restyled = style("elden ring style astronaut in a jungle", negative_prompt=negative_prompt, image=controlled,
                 strength=0.45, guidance_scale=10.5, num_inference_steps=num_inference_steps,
                 generator=torch.Generator("cpu").manual_seed(seed)).images[0]
make_image_grid([init, depth, controlled, restyled], rows=2, cols=2, resize=256)"""),
    ],
    check=check("04_control"),
)

# --------------------------------------------------------------------------------------------
# 05: the generic sweep report


def spec_key(name: str, what: str, default: str) -> str:
    """A 05 parameter line: None takes the spec's value, else the notebook's default."""
    value, tiny = NOTEBOOK_DEFAULTS["05_sweep_report"][name]
    small = f" ({tiny!r} for tiny models)" if tiny != value else ""
    return f"{name} = None  # {what}; None: the spec's, else {default}{small}"


NB05 = notebook(
    "05_sweep_report",
    "Sweep report",
    "Runs (or resumes) one sweep and reports it: the table, labelled grids, image metrics, trade-off "
    "plots and the explorer. Give the sweep as a spec file (`spec = \"sweeps/strength.yaml\"`, relative to "
    "the current folder or the repository root, so it works from `notebooks/` too), as the spec's keys "
    "(`-f sweeps/strength.yaml`, `-p strength ...`: every sweep spec key is a parameter of this notebook), "
    "or both.\n\n"
    "**Which value wins:** every spec key in the parameters cell defaults to `None`, meaning \"the spec's "
    "value, else this notebook's default\" (the comment names it). Any value set there, by editing the "
    "cell or passed in (papermill `-p`/`-f`, `report()`), wins over the spec's (`[None]` for no negative "
    "prompt). Headless: `img2img-lab report SPEC.yaml --model tiny/sd15 --out DIR` or "
    "`lab.report(spec, out_dir)` also write a standalone HTML.",
    f"""
spec = None  # a sweep spec YAML (e.g. "sweeps/strength.yaml"); None: no spec, the keys below and their defaults
{spec_key("model", "the model", 'SD v1.5; "tiny/sd15" runs offline')}
{spec_key("image", "init image (URL, path or a sample)", "the guide's img2img-init.png")}
{spec_key("prompt", "the prompt", "the guide's")}
{spec_key("negative_prompt", "a negative prompt or a list of them", "none")}
{spec_key("strength", "a value or a list (every other sweep spec key works as a parameter too)", "0.8")}
{spec_key("guidance_scale", "a value or a list", "7.5")}
{spec_key("num_inference_steps", "a value or a list", "50")}
{spec_key("seed", "a value or a list", "0")}
name = None  # the report's title; None: the spec's name
out_dir = None  # the sweep folder; None: runs/<name>
metrics = ["ssim", "psnr", "mean_abs_change"]  # image metrics against the init image (no download)
x = None  # grid columns; None: the first swept key
y = None  # grid rows; None: the second swept key
z = None  # one panel per value; None: the third swept key
""",
    [
        ("code", """sweep = params.sweep_spec()
folder = out_dir or f"runs/{sweep.name or 'sweep'}"
print(sweep.to_yaml())"""),
        ("md", "## Run or resume\n\nCells already in the folder are not recomputed."),
        ("code", """result = lab.add_metrics(lab.run_sweep(sweep, folder), metrics)
result.table(["effective_steps", *metrics, "seconds", "status"])"""),
        ("md", "## Labelled grid\n\nAlso saved as one labelled picture, `grid.png`, in the sweep folder."),
        ("code", """axes = report_axes(result, x=x, y=y, z=z)
lab.grid_image(result, **axes, title=sweep.name).save(result.out_dir / "grid.png")
lab.plot_grid(result, **axes)"""),
        ("md", "## Trade-off plots\n\nEach metric against the grid's columns, one line per row value."),
        ("code", """for metric in metrics:
    display(lab.plot_tradeoff(result, x=axes["x"], y=metric, hue=axes["y"] if axes["y"] in result.swept else None))"""),
        ("md", "## Explorer"),
        ("code", 'lab.explore(result)'),
    ],
    check="params = check_parameters(globals(), spec_keys=True)\nparams",
)

NOTEBOOKS = {"01_quickstart": NB01, "02_parameters": NB02, "03_chaining": NB03, "04_control": NB04,
             "05_sweep_report": NB05}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="fail if a committed notebook is not up to date")
    args = parser.parse_args(argv)
    stale = []
    for name, nb in NOTEBOOKS.items():
        nbformat.validate(nb)
        text = nbformat.writes(nb) + "\n"
        for folder in FOLDERS:
            path = folder / f"{name}.ipynb"
            if args.check:
                if not path.is_file() or path.read_text(encoding="utf-8") != text:
                    stale.append(str(path.relative_to(ROOT)))
            else:
                folder.mkdir(parents=True, exist_ok=True)
                path.write_text(text, encoding="utf-8")
    if stale:
        print("out of date (run python scripts/make_notebooks.py): " + ", ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
