"""Shared test set-up: isolated caches, and tiny models built once per test session."""

import os
import tempfile
from pathlib import Path

import pytest

# Isolate every cache/config dir before anything (matplotlib, Jupyter, HF) reads it.
_SESSION_TMP = Path(tempfile.mkdtemp(prefix="img2img_lab_tests_"))
for var, sub in {
    "MPLCONFIGDIR": "mpl",
    "JUPYTER_CONFIG_DIR": "jupyter_config",
    "JUPYTER_DATA_DIR": "jupyter_data",
    "JUPYTER_RUNTIME_DIR": "jupyter_runtime",
    "IPYTHONDIR": "ipython",
    "XDG_CONFIG_HOME": "xdg_config",
    "XDG_CACHE_HOME": "xdg_cache",
}.items():
    os.environ[var] = str(_SESSION_TMP / sub)
# Tiny models are deterministic, so a cache shared across test sessions is safe and saves time;
# set IMG2IMG_LAB_HOME yourself to choose it.
os.environ.setdefault("IMG2IMG_LAB_HOME", str(Path(tempfile.gettempdir()) / "img2img_lab_test_home"))
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_HOME"] = str(_SESSION_TMP / "hf")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MPLBACKEND", "Agg")


def pytest_collection_modifyitems(config, items):
    if os.environ.get("IMG2IMG_LAB_SLOW") == "1":
        return
    skip = pytest.mark.skip(reason="slow tier: set IMG2IMG_LAB_SLOW=1 (needs real checkpoints or a GPU)")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def session_tmp():
    return _SESSION_TMP


@pytest.fixture(scope="session")
def depth_model(tmp_path_factory):
    """A tiny random GLPN depth model with its image processor, saved offline and loaded by path."""
    import torch
    from transformers import GLPNConfig, GLPNForDepthEstimation, GLPNImageProcessor

    folder = tmp_path_factory.mktemp("tiny-depth")
    config = GLPNConfig(num_encoder_blocks=4, depths=[1, 1, 1, 1], sr_ratios=[8, 4, 2, 1], hidden_sizes=[8, 8, 16, 16],
                        num_attention_heads=[1, 1, 1, 1], mlp_ratios=[2, 2, 2, 2], decoder_hidden_size=8)
    torch.manual_seed(0)
    GLPNForDepthEstimation(config).save_pretrained(folder)
    GLPNImageProcessor().save_pretrained(folder)
    return str(folder)
