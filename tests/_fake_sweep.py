"""Test helpers: a fake sweep folder and a tiny random CLIP, built offline in a few milliseconds.

Nothing here runs a diffusion pipeline. `make_fake_sweep` writes a sweep folder with the layout and
columns of docs/ARCHITECTURE.md (``results.parquet``, ``meta.json``, ``images/<key>.png``,
``inputs/<hash>.png``), whose "outputs" are the init image plus deterministic noise that grows with
`strength`, and returns it as a `SweepResult`. `make_tiny_clip` saves a random-weight CLIP (model,
byte-level tokenizer, image processor) loadable with `CLIPModel`/`CLIPProcessor.from_pretrained`.

In a test module (pytest puts ``tests/`` on ``sys.path``, there is no ``tests/__init__.py``):

Example:
    >>> from _fake_sweep import make_fake_sweep, make_tiny_clip
    >>> result = make_fake_sweep(tmp_path / "sweep")          # 3 x 2 x 2 cells, one failed
    >>> result = make_fake_sweep(tmp_path / "s2", strength=[0.2, 0.5], negative_prompt=[""],
    ...                          image=["astronaut", "cat"], seed=[0, 1], error_cell=None)
    >>> clip_dir = make_tiny_clip(tmp_path / "clip")
"""

from __future__ import annotations

import hashlib
import itertools
import json
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from img2img_lab.result import SweepResult

DEFAULT_PROMPT = "Astronaut in a jungle, cold color palette, muted colors, detailed, 8k"
# The default failed cell: one (strength, guidance_scale, negative_prompt) combination.
DEFAULT_ERROR_CELL = {"strength": 0.9, "guidance_scale": 7.5, "negative_prompt": ""}
_ERROR_MESSAGE = "RuntimeError: fake failure for tests"


def sample_array(name: str = "astronaut", size: int = 64) -> np.ndarray:
    """A scikit-image sample ("astronaut" or "cat") as a ``size`` x ``size`` RGB uint8 array."""
    from skimage import data

    source = {"astronaut": data.astronaut, "cat": data.chelsea}[name]()
    return np.asarray(Image.fromarray(source).convert("RGB").resize((size, size), Image.LANCZOS))


def noisy(init: np.ndarray, sigma: float, seed: int) -> np.ndarray:
    """``init`` plus Gaussian noise of standard deviation ``sigma`` (8-bit levels), clipped to uint8."""
    rng = np.random.default_rng(seed)
    out = init.astype(np.float64) + rng.normal(0.0, sigma, init.shape)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _hash(*parts) -> str:
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:16]


def make_fake_sweep(
    out_dir,
    *,
    strength=(0.3, 0.6, 0.9),
    guidance_scale=(1.0, 7.5),
    negative_prompt=("", "ugly, deformed, disfigured, poor details, bad anatomy"),
    seed=(0,),
    image=("astronaut",),
    prompt: str = DEFAULT_PROMPT,
    size: int = 64,
    error_cell: dict | None = DEFAULT_ERROR_CELL,
    num_inference_steps: int = 10,
) -> SweepResult:
    """Write a fake sweep folder and return it as a `SweepResult` (``spec=None``).

    Rows are the product ``image x strength x guidance_scale x negative_prompt x seed``, in that
    order. Each output is ``noisy(init, 40 * strength + guidance_scale, seed + 1000 * i)`` (``i``:
    the index of the row's `negative_prompt`), so images
    differ per cell and their distance to the init grows with `strength`.

    Args:
        out_dir: the sweep folder to create (parents included).
        strength, guidance_scale, negative_prompt, seed: the values of each swept parameter.
        image: sample names ("astronaut", "cat"): the init images, stored once each in ``inputs/``.
        prompt: the prompt of every row.
        size: side of the square images, in pixels.
        error_cell: rows whose parameters match every item of this dict get ``status="error"``,
            an empty ``image_path`` and no PNG; None for a sweep without failures.
        num_inference_steps: stored as is; ``effective_steps`` follows from it.
    """
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    (out_dir / "inputs").mkdir(parents=True, exist_ok=True)

    inits = {}
    for name in image:
        arr = sample_array(name, size)
        image_hash = hashlib.sha256(arr.tobytes()).hexdigest()[:16]
        Image.fromarray(arr).save(out_dir / "inputs" / f"{image_hash}.png")
        inits[name] = (arr, image_hash)

    rows = []
    for name, s, g, (ni, neg), sd in itertools.product(image, strength, guidance_scale, enumerate(negative_prompt), seed):
        arr, image_hash = inits[name]
        params = {"image": name, "strength": float(s), "guidance_scale": float(g), "negative_prompt": neg, "seed": int(sd)}
        key = _hash("tiny/sd15", prompt, image_hash, *params.values())
        failed = error_cell is not None and all(params.get(k) == v for k, v in error_cell.items())
        if not failed:
            Image.fromarray(noisy(arr, 40.0 * s + g, sd + 1000 * ni)).save(out_dir / "images" / f"{key}.png")
        rows.append(
            {
                "key": key,
                "model": "tiny/sd15",
                "prompt": prompt,
                "negative_prompt": neg,
                "image": name,
                "image_hash": image_hash,
                "strength": float(s),
                "guidance_scale": float(g),
                "num_inference_steps": num_inference_steps,
                "seed": int(sd),
                "effective_steps": int(num_inference_steps * s),
                "width": size,
                "height": size,
                "pipeline_class": "StableDiffusionImg2ImgPipeline",
                "scheduler": "PNDMScheduler",
                "dtype": "float32",
                "device": "cpu",
                "image_path": "" if failed else f"images/{key}.png",
                "init_image_path": f"inputs/{image_hash}.png",
                "seconds": 0.01,
                "batch_size": 1,
                "status": "error" if failed else "ok",
                "error": _ERROR_MESSAGE if failed else "",
            }
        )
    df = pd.DataFrame(rows)
    df.to_parquet(out_dir / "results.parquet", index=False)
    meta = {"fake": True, "runs": []}
    (out_dir / "meta.json").write_text(json.dumps(meta))
    return SweepResult(df=df, out_dir=out_dir, spec=None, meta=meta)


def make_tiny_clip(path, *, seed: int = 0, image_size: int = 32, num_vision_layers: int = 3) -> Path:
    """Save a tiny random-weight CLIP (model + processor) to ``path`` and return the path.

    The tokenizer has a byte-level vocabulary (every byte, with and without ``</w>``, plus the two
    special tokens) and no merges, so any text tokenizes; ``model_max_length`` is 77 like CLIP's.
    Weights are seeded, so two builds with the same arguments are identical.
    """
    import torch
    from transformers import CLIPConfig, CLIPModel, CLIPProcessor

    from img2img_lab.families.tiny_parts import tokenizer as byte_tokenizer

    try:  # transformers 5: the PIL processor needs no torchvision
        from transformers import CLIPImageProcessorPil as ImageProcessor
    except ImportError:  # transformers 4
        from transformers import CLIPImageProcessor as ImageProcessor

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = byte_tokenizer()  # the tiny models' byte-level CLIP tokenizer (one token per byte)
    vocab = tokenizer.get_vocab()
    image_processor = ImageProcessor(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(path)

    bos, eos = vocab["<|startoftext|>"], vocab["<|endoftext|>"]
    config = CLIPConfig(
        text_config={
            "vocab_size": len(vocab), "hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2,
            "num_attention_heads": 4, "max_position_embeddings": 77,
            "bos_token_id": bos, "eos_token_id": eos, "pad_token_id": eos,
        },
        vision_config={
            "hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": num_vision_layers,
            "num_attention_heads": 4, "image_size": image_size, "patch_size": 8,
        },
        projection_dim=16,
    )
    torch.manual_seed(seed)
    CLIPModel(config).save_pretrained(path)
    return path
