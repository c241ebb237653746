"""Write the guide's notebooks (notebooks/*.ipynb and their package copies) from one place.

    python scripts/make_notebooks.py          # rewrite every notebook
    python scripts/make_notebooks.py --check  # exit 1 if a committed notebook differs (CI)

Every notebook gets the same frame, so they stay consistent: an "Open in Colab" badge, a first
cell that installs the package in Colab and enables Colab's widget manager, exactly one cell
tagged `parameters` (plain assignments with a short comment each), and right after it a cell
that checks the parameters (`check_parameters`: an unknown `-p name` fails there). Notebooks are
written without outputs. The package copies (`img2img_lab/notebooks/`) let an installed wheel run
`img2img_lab.reports`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

# >>> The GitHub owner of this repository: set it once here, then run this script. <<<
OWNER = "OWNER"
REPO = "img2img_lab"
BRANCH = "main"

ROOT = Path(__file__).resolve().parent.parent
FOLDERS = (ROOT / "notebooks", ROOT / "img2img_lab" / "notebooks")

SD15 = "stable-diffusion-v1-5/stable-diffusion-v1-5"
REFINER = "stabilityai/stable-diffusion-xl-refiner-1.0"
KANDINSKY = "kandinsky-community/kandinsky-2-2-decoder"
DOCS = "https://huggingface.co/datasets/huggingface/documentation-images/resolve/main/diffusers"
PROMPT = "Astronaut in a jungle, cold color palette, muted colors, detailed, 8k"
QUALITY_NEGATIVE = "ugly, deformed, disfigured, poor details, bad anatomy"

# --------------------------------------------------------------------------------------------
# the shared frame


def badge(name: str) -> str:
    url = f"https://colab.research.google.com/github/{OWNER}/{REPO}/blob/{BRANCH}/notebooks/{name}.ipynb"
    return f"[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]({url})"


SETUP = f'''# Colab only: install img2img_lab, and enable the custom widget manager ipywidgets 8 needs there.
import sys

if "google.colab" in sys.modules:
    %pip install -q "img2img_lab @ git+https://github.com/{OWNER}/{REPO}@{BRANCH}"
    from google.colab import output

    output.enable_custom_widget_manager()

%matplotlib inline
import img2img_lab as lab
from img2img_lab.reports import check_parameters, notebook_spec, report_axes'''

KNOBS = '''offload = None  # experiment 9: "model" or "sequential" CPU offload (needs CUDA); None: all on the device
attention = None  # experiment 9: "sdpa" (PyTorch 2's default) or "xformers"; None: diffusers' default
compile = False  # experiment 9: torch.compile the denoiser (True or a mode such as "reduce-overhead")'''

PARAMETERS_INTRO = (
    "## Parameters\n\n"
    "Edit them here, or pass them headless: `papermill {name}.ipynb out.ipynb -p model tiny/sd15`. "
    "The models default to the guide's real checkpoints (a GPU is recommended); the `tiny/...` models run "
    "offline on a CPU in seconds (random weights: their pictures are noise). "
    "The next cell checks the parameters: an unknown name fails there."
)


def notebook(name: str, title: str, intro: str, parameters: str, body: list, *, check: str) -> nbformat.NotebookNode:
    nb = new_notebook()
    nb.metadata = {
        "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
        "language_info": {"name": "python"},
        "colab": {"provenance": []},
    }
    cells = [
        new_markdown_cell(f"{badge(name)}\n\n# {title}\n\n{intro}"),
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


CHECK = "params = check_parameters(globals())\nparams"

# --------------------------------------------------------------------------------------------
# 01: quickstart and model comparison (guide experiments 1-2)

NB01 = notebook(
    "01_quickstart",
    "Quickstart: image-to-image with Kandinsky 2.2, then three models side by side",
    "The diffusers image-to-image guide, experiments 1 and 2. Image-to-image encodes the init image to "
    "latent space, adds noise to it (how much: `strength`), and denoises it guided by the prompt. "
    "Each picture here is a one-cell sweep: stored as a PNG with its parameters and a row of a table, "
    "so re-running a cell computes nothing new.",
    f'''
model = "{SD15}"  # SD v1.5 (experiment 2); "tiny/sd15" runs offline
kandinsky_model = "{KANDINSKY}"  # Kandinsky 2.2, its prior loads too; "tiny/kandinsky22" offline
refiner_model = "{REFINER}"  # SDXL refiner (experiment 2); "tiny/sdxl-refiner" offline
cat_image = "{DOCS}/cat.png"  # experiment 1's init image (URL, path or "cat")
image = "{DOCS}/img2img-init.png"  # experiment 2's init image (URL, path or "astronaut")
refiner_image = "{DOCS}/img2img-sdxl-init.png"  # the SDXL refiner's init image
cat_prompt = "cat wizard, gandalf, lord of the rings, detailed, fantasy, cute, adorable, Pixar, Disney, 8k"  # experiment 1
prompt = "{PROMPT}"  # experiment 2
seed = 0  # every picture uses torch.Generator("cpu").manual_seed(seed)
num_inference_steps = 50  # denoising steps before strength: int(steps * strength) run
prior_num_inference_steps = 25  # Kandinsky 2.2 prior steps
height = None  # output height in px; None: each pipeline's own (64 makes tiny runs fast)
width = None  # output width in px; None: each pipeline's own
out_dir = "runs/01_quickstart"  # where the sweeps (PNG images + results.parquet) are stored
''',
    [
        ("md", "## 1. Quickstart: Kandinsky 2.2\n\nThe guide calls the pipeline with its defaults; "
               "Kandinsky 2.2's default `strength` is 0.3."),
        ("code", '''kandinsky = dict(prior_num_inference_steps=prior_num_inference_steps, strength=0.3)
common = dict(seed=seed, num_inference_steps=num_inference_steps, height=height, width=width, **params.load_options)
quickstart = lab.run_sweep(
    notebook_spec(model=kandinsky_model, image=cat_image, prompt=cat_prompt, **kandinsky, **common),
    f"{out_dir}/quickstart",
)
lab.plot_grid(quickstart, x="model", y="seed", title="cat wizard")'''),
        ("md", "## 2. Model comparison\n\nThe same prompt on SD v1.5 (defaults), the SDXL refiner (its own init "
               "image, `strength=0.5`) and Kandinsky 2.2. All three sweeps go into one folder, so one table "
               "and one grid hold them."),
        ("code", '''folder = f"{out_dir}/model_comparison"
lab.run_sweep(notebook_spec(model=model, image=image, prompt=prompt, **common), folder)
lab.run_sweep(notebook_spec(model=refiner_model, image=refiner_image, prompt=prompt, strength=0.5, **common), folder)
comparison = lab.run_sweep(notebook_spec(model=kandinsky_model, image=image, prompt=prompt, **kandinsky, **common), folder)
comparison.df[["model", "image", "strength", "effective_steps", "pipeline_class", "seconds", "status"]]'''),
        ("code", 'lab.plot_grid(comparison, x="model", y="image")'),
        ("md", "Each image is stored with its parameters; `lab.explore` browses them (select a cell for the "
               "code that reproduces it)."),
        ("code", 'lab.explore(comparison)'),
    ],
    check=CHECK,
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
    f'''
model = "{SD15}"  # SD v1.5 (experiments 3-4); "tiny/sd15" runs offline
refiner_model = "{REFINER}"  # SDXL refiner (experiment 5); "tiny/sdxl-refiner" offline
image = "{DOCS}/img2img-init.png"  # init image of experiments 3-4 (URL, path or "astronaut")
refiner_image = "{DOCS}/img2img-sdxl-init.png"  # init image of experiment 5
prompt = "{PROMPT}"  # the guide's prompt
strength = [0.4, 0.6, 0.8, 1.0]  # experiment 3's values (figures 0.4, 0.6, 1.0; the code uses 0.8)
guidance_scale = [0.1, 5.0, 8.0, 10.0]  # experiment 4's values (figures 0.1, 5.0, 10.0; the code uses 8.0)
negative_prompt = [None, "{QUALITY_NEGATIVE}", "jungle"]  # experiment 5: none, quality, content
num_inference_steps = 50  # denoising steps before strength: int(steps * strength) run
seed = 0  # every picture uses torch.Generator("cpu").manual_seed(seed)
height = None  # output height in px; None: the init image's (64 makes tiny runs fast)
width = None  # output width in px; None: the init image's
metrics = ["ssim", "psnr", "mean_abs_change"]  # fidelity to the init image (no model download)
out_dir = "runs/02_parameters"  # where the sweeps are stored
''',
    [
        ("code", '''base = notebook_spec(
    model=model, image=image, prompt=prompt, strength=strength, guidance_scale=guidance_scale,
    negative_prompt=negative_prompt, num_inference_steps=num_inference_steps, seed=seed,
    height=height, width=width, **params.load_options,
)
base'''),
        ("md", "## 3. strength\n\nHigher strength gives the model more freedom; 1.0 mostly ignores the image. "
               "`effective_steps` shows `int(num_inference_steps * strength)`."),
        ("code", '''by_strength = lab.run_sweep(base.replace(guidance_scale=7.5, negative_prompt=None), f"{out_dir}/strength")
by_strength.df[["strength", "num_inference_steps", "effective_steps", "seconds", "status"]]'''),
        ("code", 'lab.plot_grid(by_strength, x="strength", y="seed")'),
        ("md", "## 4. guidance_scale\n\nHigher guidance ties the picture more closely to the prompt "
               "(at the guide's `strength=0.8`)."),
        ("code", '''by_guidance = lab.run_sweep(base.replace(strength=0.8, negative_prompt=None), f"{out_dir}/guidance_scale")
lab.plot_grid(by_guidance, x="guidance_scale", y="seed")'''),
        ("md", "### strength x guidance_scale\n\nBoth high: the most creative; both low: close to the image, "
               "loosely tied to the prompt. The trade-off plots measure it against the init image."),
        ("code", '''combined = lab.run_sweep(base.replace(negative_prompt=None), f"{out_dir}/strength_x_guidance")
combined = lab.add_metrics(combined, metrics)
lab.plot_grid(combined, x="strength", y="guidance_scale")'''),
        ("code", 'lab.plot_tradeoff(combined, x="strength", y=metrics[0], hue="guidance_scale")'),
        ("code", 'lab.plot_tradeoff(combined, x="guidance_scale", y=metrics[-1], hue="strength")'),
        ("code", 'lab.explore(combined)'),
        ("md", "## 5. negative_prompt on the SDXL refiner\n\nA quality negative prompt versus one that removes "
               "content (\"jungle\"), against none; the refiner's own init image at `strength=0.5`."),
        ("code", '''by_negative = lab.run_sweep(
    base.replace(model=refiner_model, image=refiner_image, strength=0.5, guidance_scale=7.5), f"{out_dir}/negative_prompt"
)
lab.plot_grid(by_negative, x="negative_prompt", y="seed")'''),
        ("md", "## All three combined\n\n`strength` x `guidance_scale` x `negative_prompt` on SD v1.5, one panel "
               "per negative prompt."),
        ("code", '''everything = lab.add_metrics(lab.run_sweep(base, f"{out_dir}/combined"), metrics)
lab.plot_grid(everything, x="strength", y="guidance_scale", z="negative_prompt")'''),
        ("code", 'lab.plot_tradeoff(everything, x="strength", y=metrics[0], hue="guidance_scale", style="negative_prompt")'),
        ("code", 'lab.explore(everything)'),
    ],
    check=CHECK,
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
    f'''
model = "{SD15}"  # SD v1.5; "tiny/sd15" runs offline
kandinsky_model = "{KANDINSKY}"  # Kandinsky 2.2; "tiny/kandinsky22" offline
comic_model = "ogkalu/Comic-Diffusion"  # SD v1.5 fine-tune, trigger "charliebo artstyle"; "tiny/sd15" offline
pixel_model = "kohbanye/pixel-art-style"  # SD v1.5 fine-tune, trigger "pixelartstyle"; "tiny/sd15" offline
x2_upscaler_model = "stabilityai/sd-x2-latent-upscaler"  # latent in, latent out; "tiny/sd-x2-latent-upscaler"
x4_upscaler_model = "stabilityai/stable-diffusion-x4-upscaler"  # pixels in; "tiny/sd-x4-upscaler" offline
image = "{DOCS}/img2img-init.png"  # init image of the image-to-image chains (URL, path or "astronaut")
prompt = "{PROMPT}"  # the guide's prompt
num_inference_steps = 50  # denoising steps of every stage (before strength)
prior_num_inference_steps = 25  # Kandinsky 2.2 prior steps
height = 512  # text-to-image and Kandinsky output height in px (64 makes tiny runs fast)
width = 512  # text-to-image and Kandinsky output width in px
size = None  # resize the init image (longer side in px); None keeps it
seed = 0  # seed of every stage
''',
    [
        ("code", '''from diffusers.utils import make_image_grid
from img2img_lab.chains import run_chain

init = lab.load_image(image, size=size)
steps = dict(num_inference_steps=num_inference_steps)
options = params.load_options  # offload / attention / compile for every stage's load_pipeline'''),
        ("md", "## Text-to-image, then image-to-image\n\nSD v1.5 makes a picture from the prompt; Kandinsky 2.2 "
               "(its own autoencoder, so the picture is handed over as an image) transforms it."),
        ("code", '''t2i_then_i2i = run_chain([
    (model, {"task": "text2img", "prompt": prompt, "height": height, "width": width, **steps}, options),
    (kandinsky_model, {"prompt": "oil painting, " + prompt, "height": height, "width": width,
                       "prior_num_inference_steps": prior_num_inference_steps, **steps}, options),
], seed=seed)
make_image_grid([t2i_then_i2i.images[0], t2i_then_i2i.image], rows=1, cols=2, resize=256)'''),
        ("md", "## Image-to-image three times, in latent space\n\nSD v1.5, then Comic-Diffusion, then pixel-art-style: "
               "the three share SD v1.5's VAE, so the latents go from one to the next without decoding."),
        ("code", '''import pandas as pd

styles = run_chain([
    (model, {"prompt": prompt, **steps}, options),
    (comic_model, {"prompt": "Astronaut in a jungle, charliebo artstyle", **steps}, options),
    (pixel_model, {"prompt": "Astronaut in a jungle, pixelartstyle", **steps}, options),
], image=init, seed=seed)
pd.DataFrame(styles.params)[["stage", "model", "input", "output_type", "prompt"]]'''),
        ("code", 'make_image_grid([init, styles.image], rows=1, cols=2, resize=256)'),
        ("md", "## Image-to-image, then the x2 latent upscaler, then the x4 upscaler\n\nThe x2 upscaler takes "
               "and returns latents; the x4 upscaler takes pixels. Shown at 512x512 as in the guide."),
        ("code", '''upscaled = run_chain([
    (model, {"prompt": prompt, **steps}, options),
    (x2_upscaler_model, {"prompt": prompt, **steps}, options),
    (x4_upscaler_model, {"prompt": prompt, **steps}, options),
], image=init, seed=seed)
print(upscaled.image.size)
make_image_grid([init.resize((512, 512)), upscaled.image.resize((512, 512))], rows=1, cols=2)'''),
    ],
    check=CHECK,
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
    f'''
model = "{SD15}"  # SD v1.5; "tiny/sd15" runs offline
controlnet_model = "lllyasviel/control_v11f1p_sd15_depth"  # depth ControlNet (a hub id or a folder)
style_model = "nitrosocke/elden-ring-diffusion"  # trigger "elden ring style"; "tiny/sd15" offline
image = "{DOCS}/img2img-init.png"  # the init image (URL, path or "astronaut")
control_image = "https://huggingface.co/lllyasviel/control_v11f1p_sd15_depth/resolve/main/images/control.png"  # depth image
size = [958, 960]  # (width, height) the init and control images are resized to, as in the guide
prompt = "{PROMPT}"  # the guide's prompt
weighted_prompt = "Astronaut in a (jungle)1.5, cold color palette, muted colors, detailed, 8k"  # compel syntax
negative_prompt = "{QUALITY_NEGATIVE}"  # the quality negative prompt
strength = 0.8  # ControlNet and compel image-to-image strength (the pipelines' default)
num_inference_steps = 50  # denoising steps before strength
seed = 0  # every call uses torch.Generator("cpu").manual_seed(seed)
''',
    [
        ("code", '''import torch
from diffusers.utils import make_image_grid
from img2img_lab.control import prepare_control_image
from img2img_lab.prompts import encode_weighted

init = lab.load_image(image, size=size)'''),
        ("md", "## 7. Prompt weighting with compel\n\n`(jungle)1.5` weighs the jungle 1.5 times; "
               "`encode_weighted` returns the embeddings (cached per prompt text)."),
        ("code", '''pipe = lab.load_pipeline(model, **params.load_options)
weighted = encode_weighted(pipe, weighted_prompt, negative_prompt)
plain = pipe(prompt, negative_prompt=negative_prompt, image=init, strength=strength,
             num_inference_steps=num_inference_steps, generator=torch.Generator("cpu").manual_seed(seed)).images[0]
with_compel = pipe(**weighted, image=init, strength=strength,
                   num_inference_steps=num_inference_steps, generator=torch.Generator("cpu").manual_seed(seed)).images[0]
make_image_grid([init, plain, with_compel], rows=1, cols=3, resize=256)'''),
        ("md", "## 8. ControlNet image-to-image, then restyle\n\nThe depth image keeps the composition; then "
               "elden-ring-diffusion restyles the result (`strength=0.45`, `guidance_scale=10.5`)."),
        ("code", '''depth = prepare_control_image(control_image, size=init.size)
controlnet = lab.load_pipeline(model, controlnet=controlnet_model, **params.load_options)
controlled = controlnet(prompt, image=init, control_image=depth, strength=strength,
                        num_inference_steps=num_inference_steps, generator=torch.Generator("cpu").manual_seed(seed)).images[0]
style = lab.load_pipeline(style_model, **params.load_options)
restyled = style("elden ring style astronaut in a jungle", negative_prompt=negative_prompt, image=controlled,
                 strength=0.45, guidance_scale=10.5, num_inference_steps=num_inference_steps,
                 generator=torch.Generator("cpu").manual_seed(seed)).images[0]
make_image_grid([init, depth, controlled, restyled], rows=2, cols=2, resize=256)'''),
    ],
    check=CHECK,
)

# --------------------------------------------------------------------------------------------
# 05: the generic sweep report

NB05 = notebook(
    "05_sweep_report",
    "Sweep report",
    "Runs (or resumes) one sweep and reports it: the table, labelled grids, image metrics, trade-off "
    "plots and the explorer. Give the sweep as a spec file (`-p spec sweeps/strength.yaml`) or as the "
    "spec's keys directly (`-f sweeps/strength.yaml`, `-p strength ...`): every sweep spec key is a "
    "parameter of this notebook. Headless: `img2img-lab report SPEC.yaml --model tiny/sd15 --out DIR` "
    "or `lab.report(spec, out_dir)` also write a standalone HTML.",
    f'''
spec = None  # a sweep spec YAML; spec keys passed in (-p/-f, report()) replace its keys. None: the keys below
model = "{SD15}"  # the model; "tiny/sd15" runs offline
image = "{DOCS}/img2img-init.png"  # init image (URL, path or "astronaut")
prompt = "{PROMPT}"  # the prompt
negative_prompt = None  # a negative prompt or a list of them
strength = 0.8  # a value or a list (every other sweep spec key works as a parameter too)
guidance_scale = 7.5  # a value or a list
num_inference_steps = 50  # a value or a list
seed = 0  # a value or a list
name = None  # the report's title; None: the spec's name
out_dir = None  # the sweep folder; None: runs/<name>
metrics = ["ssim", "psnr", "mean_abs_change"]  # image metrics against the init image (no download)
x = None  # grid columns; None: the first swept key
y = None  # grid rows; None: the second swept key
z = None  # one panel per value; None: the third swept key
''',
    [
        ("code", '''sweep = params.sweep_spec()
folder = out_dir or f"runs/{sweep.name or 'sweep'}"
print(sweep.to_yaml())'''),
        ("md", "## Run or resume\n\nCells already in the folder are not recomputed."),
        ("code", '''result = lab.add_metrics(lab.run_sweep(sweep, folder), metrics)
result.df[[*result.swept, "effective_steps", *metrics, "seconds", "status"]]'''),
        ("md", "## Labelled grid\n\nAlso saved as one labelled picture, `grid.png`, in the sweep folder."),
        ("code", '''axes = report_axes(result, x=x, y=y, z=z)
lab.grid_image(result, **axes, title=sweep.name).save(result.out_dir / "grid.png")
lab.plot_grid(result, **axes, title=sweep.name)'''),
        ("md", "## Trade-off plots\n\nEach metric against the grid's columns, one line per row value."),
        ("code", '''for metric in metrics:
    display(lab.plot_tradeoff(result, x=axes["x"], y=metric, hue=axes["y"]))'''),
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
