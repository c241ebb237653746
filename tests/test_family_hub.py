"""Every family of the key table loads from a hub id the way it loads from a folder.

No hub is reachable here, so each tiny twin is put into the Hugging Face cache as if
`tiny-org/<key>` had been downloaded (the layout `huggingface_hub` writes: refs/main and a
snapshot), and `lab.load_pipeline("tiny-org/<key>", **entry.load)` must give the entry's pipeline
class through diffusers' own `from_pretrained`, offline (conftest sets HF_HUB_OFFLINE=1).
Kandinsky's decoders need their prior: an unknown hub id gets it as `prior=`, a cached id too.
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest

import img2img_lab as lab
from img2img_lab import families

HAS_TORCHVISION = importlib.util.find_spec("torchvision") is not None
# transformers 5 builds these pipelines' processors only with torchvision (their notes say so)
# (tiny/flux2 names its tokenizer instead of FLUX.2-dev's processor, so it loads without)
NEEDS_TORCHVISION = {"qwenimage-edit", "qwenimage-edit-plus", "qwenimage-layered"}
KEYS = [e.key for e in families.entries() if e.tiny is not None]


def _cache_as_hub_repo(folder: Path, repo_id: str) -> None:
    from huggingface_hub import constants

    commit = "0" * 40
    repo = Path(constants.HF_HUB_CACHE) / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    shutil.copytree(folder, repo / "snapshots" / commit, dirs_exist_ok=True)


@pytest.mark.heavy
@pytest.mark.parametrize("key", KEYS)
def test_each_family_loads_from_a_cached_hub_id(key):
    entry = families.entry(key)
    if key in NEEDS_TORCHVISION and not HAS_TORCHVISION:
        pytest.skip(f"{entry.pipeline} needs torchvision in transformers 5 (not installable here)")
    repo_id = f"tiny-org/{key}"
    _cache_as_hub_repo(lab.tiny_model_path(entry.tiny), repo_id)
    options = dict(entry.load)
    if key in ("kandinsky", "kandinsky22"):  # a hub id img2img_lab does not know: its prior named
        options["prior"] = str(lab.tiny_model_path(entry.tiny) / "prior")
    pipe = lab.load_pipeline(repo_id, cache=False, **options)
    assert type(pipe).__name__ == entry.pipeline
    assert entry in families.family_of(pipe).entries  # the family whose row it is
