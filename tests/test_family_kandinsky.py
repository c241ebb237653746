"""The Kandinsky 2.1 family: tiny/kandinsky (decoder with its multilingual CLIP text encoder, prior in
prior/) loads as KandinskyImg2ImgCombinedPipeline and builds the same weights every time (its sweep
cells equal the direct call: tests/test_family_equality.py)."""

import hashlib
import shutil
from pathlib import Path

import pytest

import img2img_lab as lab
from img2img_lab import families
from img2img_lab.errors import ValidationError
from img2img_lab.quiet import quiet_loading
from img2img_lab.tiny import tiny_model_path

ENTRY = families.entry("kandinsky")


def _weights(folder: Path) -> tuple:
    files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and p.name != "tiny_model.json")
    return files, {n: hashlib.sha256((folder / n).read_bytes()).hexdigest() for n in files if n.endswith(".safetensors")}


@pytest.fixture(scope="module")
def pipe():
    return lab.load_pipeline(ENTRY.tiny, **ENTRY.load)


def test_the_entry_loads_as_its_pipeline_and_family(pipe):
    from transformers import XLMRobertaTokenizer

    assert (ENTRY.key, ENTRY.mapping_key, ENTRY.checkpoint) == ("kandinsky", "kandinsky", "kandinsky-community/kandinsky-2-1")
    assert type(pipe).__name__ == ENTRY.pipeline == "KandinskyImg2ImgCombinedPipeline"
    assert families.family_of(pipe) is families.by_key("kandinsky") is families.family_of_tiny("tiny/kandinsky")
    # Kandinsky 2.2's classes stay its own
    assert families.family_of_class("KandinskyV22Img2ImgCombinedPipeline").key == "kandinsky22"
    assert families.family_of_class("KandinskyPipeline").key == "kandinsky"
    # the decoder's text encoder and tokenizer are the real classes, and the tokenizer reloads as that class
    assert type(pipe.text_encoder).__name__ == "MultilingualCLIP" and isinstance(pipe.tokenizer, XLMRobertaTokenizer)
    reloaded = XLMRobertaTokenizer.from_pretrained(tiny_model_path("tiny/kandinsky") / "tokenizer")
    ids = reloaded("a cat, 2 dogs").input_ids
    assert ids[0] == reloaded.bos_token_id == 0 and ids[-1] == reloaded.eos_token_id == 2
    assert reloaded.unk_token_id not in ids and (reloaded.pad_token_id, reloaded.unk_token_id) == (1, 3)
    assert ids == pipe.tokenizer("a cat, 2 dogs").input_ids
    # knobs: the prior option, the movq slot, sizes in multiples of the MoVQ factor squared
    family = families.family_of(pipe)
    assert "prior" in family.options and family.vae_component == ("movq", "VQModel")
    assert family.size_multiple(pipe) == 64 and family.prompt_encoding(pipe) is None


def test_a_decoder_without_a_prior_says_which_option(tmp_path):
    folder = tmp_path / "decoder"
    shutil.copytree(tiny_model_path("tiny/kandinsky"), folder, ignore=shutil.ignore_patterns("prior"))
    with pytest.raises(ValidationError, match=r"`prior` is needed for the Kandinsky 2.1 decoder .*kandinsky-2-1-prior"):
        lab.load_pipeline(str(folder), cache=False)


def test_the_twin_builds_the_same_weights(tmp_path):
    folder = tmp_path / "kandinsky"
    folder.mkdir()
    with quiet_loading():
        families.by_key("kandinsky").build_tiny("tiny/kandinsky", folder)
    assert _weights(folder) == _weights(tiny_model_path("tiny/kandinsky"))
