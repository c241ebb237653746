"""The one small interface every model family implements.

A family is one kind of diffusers pipeline (SD 1.x/2.x, SDXL, Kandinsky 2.2, ...) and everything
img2img_lab knows about it, in five parts:

1. **detect**: the pipeline classes it covers (`classes`, `detect(class_name)`), and which
   single-file checkpoint layouts are its own (`checkpoint_types`, `single_file_class`);
2. **load**: the class to load with where `AutoPipelineForImage2Image` does not map it
   (`loader_class`), and the extra `from_pretrained` keywords its options make (`load_extras`,
   e.g. Kandinsky's prior components);
3. **tiny twin**: its offline random-weight models (`tiny_models`, `build_tiny(name, folder)`);
4. **knobs**: the `load_pipeline` options it reads (`options`), the pipelines whose `__call__`
   keywords a spec may set (`call_pipelines`), the call arguments that hold a picture to load and
   size like the init image (`picture_args`), the compel encoding of its prompts
   (`prompt_encoding`), whether its output may stay latent for the next stage of a chain
   (`takes_latents`), whether it has a text-to-image relative (`text2img`) and the multiple its
   sizes must be (`size_multiple`);
5. **per-step batching pieces**: a `StepBatching` that `batched.py` drives, or None with the
   reason its cells run one call each (`batching`, `batching_reason`).

`Family` holds the defaults (those of an ordinary `AutoPipelineForImage2Image` pipeline with a
`vae`); a family module subclasses it and overrides what differs. Nothing here imports torch,
diffusers or the rest of the package (but `errors`), so the registry is cheap to import.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol

from ..errors import ValidationError


@dataclass(frozen=True)
class TinyModel:
    """One offline random-weight twin: its name (`"tiny/sd15"`), what it is, and its builder.

    `build(folder)` writes an ordinary diffusers checkpoint into `folder` (which exists and is
    empty), deterministically: the same code gives the same files, bit for bit.
    """

    name: str
    description: str
    build: Callable[[Path], None]
    # Call arguments every cell of this twin gets (in its call, content key, row and snippet), so a
    # pipeline that would otherwise enlarge a small picture (Kontext's ~1 MP, Qwen-Image-Edit's
    # ~1024 px reference) stays at the twin's size: the pipeline's own options, e.g. {"max_area": 4096}.
    call: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Entry:
    """One row of the key table (`lab.families()`): one image-to-image pipeline a family covers.

    Args:
        key: the one name of this row: `tiny/<key>` where it has a twin of its own, the CLI's
            `models` table, `bench_sweep.py --family <key>` ("flux-kontext", "sd15", ...).
        pipeline: the diffusers image-to-image class ("FluxKontextPipeline").
        checkpoint: a typical real checkpoint id ("black-forest-labs/FLUX.1-Kontext-dev").
        mapping_key: its key in diffusers' `AUTO_IMAGE2IMAGE_PIPELINES_MAPPING`, or None.
        tiny: the tiny model that loads as this pipeline (with `load`), or None.
        load: the `load_pipeline` options that make it from `tiny` (or a real checkpoint of the
            shared layout): {"enable_pag": True}, {"controlnet": "tiny/controlnet-sd15"}.
        single_file: whether diffusers loads an original single `.safetensors` of it
            (`from_single_file`), and img2img_lab with it.
        image_list: whether `image` takes several reference pictures (multi-image editing).
        note: what a user should know (shared layout, a missing component class, forced sizes).
        requires: packages beyond img2img_lab's own requirements that loading it needs
            (("torchvision",): transformers 5 builds its processor only with it).
    """

    key: str
    pipeline: str
    checkpoint: str
    mapping_key: str | None = None
    tiny: str | None = None
    load: Mapping[str, Any] = field(default_factory=dict)
    single_file: bool = False
    image_list: bool = False
    note: str = ""
    requires: tuple = ()


@dataclass(frozen=True)
class LoadContext:
    """What a family's load hook sees: the model being loaded, and the loader's helpers.

    Args:
        source: the hub id or local folder being loaded.
        class_name: the pipeline class its `model_index.json` names (or, for a single file,
            the class inferred from its tensors).
        options: the validated `load_pipeline` options (every key of `DEFAULT_OPTIONS`).
        tiny: the tiny model name when one is loaded (then `source` is its folder), else None.
        load_component: `(value, diffusers class name, option name) -> model`: a sub-model given
            as an object, hub id, folder or tiny name (ControlNet, VAE), checked like the model.
        load_pipeline: `(value, diffusers pipeline class name, option name) -> pipeline`: a whole
            companion pipeline from a hub id or folder (Kandinsky's prior).
    """

    source: str
    class_name: str
    options: Mapping[str, Any]
    tiny: str | None
    load_component: Callable[[Any, str, str], Any]
    load_pipeline: Callable[[Any, str, str], Any]

    @property
    def name(self) -> str:
        """The model as the user named it, for messages: the tiny name, else the hub id or folder."""
        return self.tiny or self.source


class StepBatching(Protocol):
    """The family-specific pieces of `batched.py`'s engine, which batches many image-to-image
    calls of one pipeline through one denoiser forward per step (see that module).

    The engine owns what is common to every family: cohorts by start step (`vocab.effective_steps`),
    one scheduler copy each, classifier-free guidance rows, padding, out-of-memory halving. The
    pieces below are what a family's own pipeline `__call__` does at each of those points; they
    must do exactly what it does, so a batched image equals a direct call's.
    """

    def unsupported(self, pipe) -> str | None:
        """Why this pipeline can't be batched (a variant, an adapter), or None when it can."""
        ...

    def check_call(self, pipe, call: dict) -> None:
        """Raise ValueError for a call (with the pipeline's defaults filled in) `pipe` would refuse."""
        ...

    def timesteps(self, pipe, scheduler, steps: int, strength: float, device):
        """Set `scheduler`'s grid of `steps` and return the call's own timesteps (a tensor)."""
        ...

    def text_owner(self, pipe):
        """The module whose weights decide a prompt's embeddings (the prompt cache's key)."""
        ...

    def encode_prompt(self, pipe, text: str, device) -> dict:
        """One text's conditioning: tensor rows by denoiser keyword (e.g. `encoder_hidden_states`)."""
        ...

    def dtype(self, pipe):
        """The dtype of the latents and conditioning in a direct call."""
        ...

    def encode_image(self, pipe, pixels, device, dtype):
        """The autoencoder's output for one preprocessed init image (computed once per image)."""
        ...

    def noisy_latents(self, pipe, encoded, generator, scheduler, timestep, device, dtype):
        """The call's initial latents: drawn from `generator` in the order of a direct call."""
        ...

    def predict_noise(self, pipe, sample, timestep, conditioning: dict):
        """One denoiser forward over all rows (`conditioning` as `encode_prompt`'s, concatenated)."""
        ...

    def decode(self, pipe, latents):
        """Latents -> pixel tensors on a -1..1 scale."""
        ...

    def safety_check(self, pipe, image, device, dtype):
        """`(image, nsfw flags or None)`, as the pipeline's own safety checker answers."""
        ...


class Family:
    """One model family: the defaults of an `AutoPipelineForImage2Image` pipeline with a `vae`.

    Subclasses set the class attributes and override the methods that differ (see the module
    docstring for the five parts). An instance is what the registry holds.
    """

    key: str = "generic"
    title: str = "pipeline"
    # 1. detect
    classes: frozenset = frozenset()        # diffusers pipeline class names this family covers
    checkpoint_types: tuple = ()            # prefixes of diffusers' `infer_diffusers_model_type`
    # 3. tiny twins
    tiny_models: tuple = ()                 # TinyModel, ...
    # 4. knobs
    options: tuple = ("controlnet", "vae")  # family-specific load_pipeline options it reads
    call_pipelines: Mapping[str, str] = {}  # class -> its file in the diffusers package (call keywords)
    picture_args: tuple = ()                # call arguments holding a picture sized like the init image
    latent_input: frozenset = frozenset()   # classes whose `image` may be latents from the same VAE
    sized_input: frozenset = frozenset()    # classes that take height/width but never resize `image` to them
    text2img: bool = True                   # has a text-to-image relative (`related_pipeline`)
    vae_component: tuple = ("vae", "AutoencoderKL")  # (pipeline attribute, diffusers class) of `vae=`
    controlnet_class: str = "ControlNetModel"  # the diffusers class `controlnet=` sources load as
    # class -> {argument: value}: where the spec is silent, what a cell runs with when it is not the
    # signature's default (FLUX.1's distilled guidance 3.5, its model card's and FluxPipeline's value)
    call_defaults: Mapping[str, Mapping[str, Any]] = {}
    # argument -> what to use instead, when this family's pipelines lack it (the knob check's hint)
    knob_hints: Mapping[str, str] = {}
    # the key table: one Entry per image-to-image pipeline of this family
    entries: tuple = ()
    # 5. batching
    batching: StepBatching | None = None
    batching_reason: str = "no per-step batching pieces: each cell runs as one pipeline call"

    # --- 1. detect ----------------------------------------------------------------------------

    def detect(self, class_name: str) -> bool:
        """Whether this family covers the diffusers pipeline class `class_name`."""
        return class_name in self.classes

    def single_file_class(self, path: str, model_type: str, keys, controlnet: bool) -> str | None:
        """The img2img class to load a single checkpoint of `model_type` with (None: not ours).

        `keys` are the checkpoint's tensor names; `controlnet` says whether ControlNets come with it.
        """
        return None

    # --- 2. load ------------------------------------------------------------------------------

    def loader_class(self, class_name: str) -> str | None:
        """The diffusers class whose `from_pretrained` loads `class_name` (None: AutoPipeline)."""
        return None

    def load_extras(self, ctx: LoadContext) -> dict:
        """Extra `from_pretrained` keywords the options make: ControlNets and a replacement VAE."""
        opts = ctx.options
        extra = {}
        if opts["controlnet"] is not None:
            if "controlnet" not in self.options:
                raise ValidationError(f"`controlnet` can't be used with the {self.title} {ctx.name!r} ({ctx.class_name})")
            controlnets = opts["controlnet"]
            loaded = [ctx.load_component(c, self.controlnet_class, "controlnet")
                      for c in (controlnets if isinstance(controlnets, (list, tuple)) else [controlnets])]
            extra["controlnet"] = loaded if isinstance(controlnets, (list, tuple)) else loaded[0]
        if opts["vae"] is not None and "vae" in self.options:
            attribute, cls_name = self.vae_component
            extra[attribute] = ctx.load_component(opts["vae"], cls_name, "vae")
        return extra

    # --- 3. tiny twins ------------------------------------------------------------------------

    def build_tiny(self, name: str, folder: Path) -> None:
        """Build tiny model `name` of this family into `folder`."""
        for model in self.tiny_models:
            if model.name == name:
                model.build(Path(folder))
                return
        raise ValidationError(
            f"`name` must be one of the {self.title} tiny models {[m.name for m in self.tiny_models]}, got {name!r}"
        )

    # --- 4. knobs -----------------------------------------------------------------------------

    def size_multiple(self, pipe) -> int | None:
        """The multiple a call's `height`/`width` must be for `pipe` to give exactly that size.

        The default: the factor its image processor rounds every size down to (the VAE's
        `vae_scale_factor`: 8 for Stable Diffusion and SDXL, 4 for the x4 upscaler), read from
        `pipe` or, for a combined pipeline, from its `decoder_pipe`; None when it has none.
        """
        decoder = getattr(pipe, "decoder_pipe", None) or pipe
        processor = getattr(decoder, "image_processor", None)
        factor = getattr(getattr(processor, "config", None), "vae_scale_factor", None)
        if factor is None:
            factor = getattr(decoder, "vae_scale_factor", None)
        if isinstance(factor, bool) or not isinstance(factor, int) or factor <= 1:
            return None
        return factor

    def takes_latents(self, class_name: str) -> bool:
        """Whether a `class_name` pipeline takes latents of its own VAE as `image`."""
        return class_name in self.latent_input

    def prompt_encoding(self, pipe) -> str | None:
        """'sd', 'sdxl' or 'sdxl-refiner': how compel weights `pipe`'s prompts (None: it can't).

        The default reads the text encoders `pipe` has: two (SDXL), the second only (the SDXL
        refiner), or one CLIP encoder without a prior (SD 1.x/2.x).
        """
        te1 = getattr(pipe, "text_encoder", None)
        te2 = getattr(pipe, "text_encoder_2", None)
        tok1 = getattr(pipe, "tokenizer", None)
        tok2 = getattr(pipe, "tokenizer_2", None)
        if te2 is not None and tok2 is not None:
            return "sdxl" if te1 is not None and tok1 is not None else "sdxl-refiner"
        if te1 is not None and tok1 is not None and "CLIP" in type(te1).__name__ and not hasattr(pipe, "prior"):
            return "sd"
        return None

    def knob_problem(self, class_name: str, call: Mapping[str, Any], config: Mapping[str, Any] | None = None
                     ) -> dict[str, str]:
        """The arguments of a cell's call that a `class_name` pipeline would silently ignore, each
        with why and what to use instead: `{argument: why}` (empty: none). The default: none.
        `config` is the loaded pipeline's own config (`pipe.config`) once it is loaded, else None
        (e.g. FLUX.2 [klein]'s `is_distilled`).

        E.g. FLUX.1 reads `negative_prompt` only with `true_cfg_scale` > 1. A sweep where no cell
        uses such an argument is refused before it runs; otherwise those cells record it as not
        applied (`knobs`).
        """
        return {}

    def speed_path(self, class_name: str) -> str:
        """'batched' when the batched engine runs `class_name`'s cells, else 'per cell: <why>'."""
        return "batched" if self.batching is not None else f"per cell: {self.batching_reason}"

    def __repr__(self) -> str:
        return f"<family {self.key!r}: {self.title}>"


# What the registry answers for a pipeline class no family covers: the defaults above.
GENERIC = Family()
