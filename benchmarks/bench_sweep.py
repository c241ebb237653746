"""Time one img2img sweep two ways: the plain per-cell diffusers loop and img2img_lab's batched path.

Builds an SD-1.5-shaped pipeline with random weights (no download), runs the same grid of
3 strengths x 3 guidance scales x 2 negative prompts at 20 steps both ways, checks the images
match, and prints seconds, speed-up, UNet rows per second and achieved UNet TFLOP/s.

    python benchmarks/bench_sweep.py --config cpu     # ~35M-parameter UNet, 128x128, float32
    python benchmarks/bench_sweep.py --config gpu     # SD 1.5-size UNet, 512x512, float16, CUDA
    python benchmarks/bench_sweep.py --family flux    # any key of lab.families(), on its tiny twin

`--family KEY` (a key of the key table, `lab.families()`; `sd15` is the SD-1.5-shaped run above)
times the plain diffusers loop against `run_sweep` on that family's tiny twin, loaded as
`tiny/<key>` is (CPU, float32), over the knobs its pipeline takes: plain and `run_sweep` alternate
(A/B, `--repeat` pairs) and the median ratio is printed, with the largest pixel difference.

Not a test: numbers go into benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionImg2ImgPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from img2img_lab.batched import run_batched

CONFIGS = {
    # SD 1.5 layout (4 levels, 2 layers per block, cross-attention at 3 levels), channels / 5
    "cpu": dict(
        device="cpu",
        dtype=torch.float32,
        size=128,
        unet=dict(block_out_channels=(64, 128, 256, 256), attention_head_dim=8),
        vae=dict(block_out_channels=(32, 64, 64, 64), layers_per_block=1),
        text=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=2, num_attention_heads=12),
        max_batch_size=18,
    ),
    # SD 1.5 sizes: 860M UNet, 84M VAE, CLIP ViT-L/14 text encoder (123M)
    "gpu": dict(
        device="cuda",
        dtype=torch.float16,
        size=512,
        unet=dict(block_out_channels=(320, 640, 1280, 1280), attention_head_dim=8),
        vae=dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2),
        text=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12),
        max_batch_size=8,
    ),
}
STRENGTHS = (0.3, 0.55, 0.8)
GUIDANCE_SCALES = (3.0, 7.5, 12.0)
NEGATIVE_PROMPTS = (None, "blurry, low quality")
STEPS = 20
# dense fp16/bf16 tensor-core peak, TFLOP/s
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L4": 121.0, "T4": 65.0, "A10": 125.0}


def byte_tokenizer() -> CLIPTokenizer:
    """A real CLIPTokenizer on a byte-level vocabulary (no merges), built offline."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars = [chr(b) for b in printable] + [chr(256 + n) for n in range(256 - len(printable))]
    tokens = chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]
    with tempfile.TemporaryDirectory() as folder:
        Path(folder, "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}), encoding="utf-8")
        Path(folder, "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
        return CLIPTokenizer.from_pretrained(folder, model_max_length=77)


def build_pipeline(config: dict) -> StableDiffusionImg2ImgPipeline:
    torch.manual_seed(0)
    text = CLIPTextConfig(
        vocab_size=49408, max_position_embeddings=77, bos_token_id=512, eos_token_id=513, pad_token_id=513, **config["text"]
    )
    unet = UNet2DConditionModel(sample_size=config["size"] // 8, cross_attention_dim=768, **config["unet"])
    vae = AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        sample_size=config["size"],
        **config["vae"],
    )
    scheduler = PNDMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", skip_prk_steps=True, steps_offset=1,
        set_alpha_to_one=False,
    )
    pipe = StableDiffusionImg2ImgPipeline(
        vae=vae, text_encoder=CLIPTextModel(text), tokenizer=byte_tokenizer(), unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(config["device"], config["dtype"])


def sweep(size: int) -> list[dict]:
    y, x = np.mgrid[0:size, 0:size] / size
    image = Image.fromarray((np.stack([x, y, (x + y) / 2], -1) * 255).astype(np.uint8))
    return [
        dict(prompt="a photo of a red fox in the snow", image=image, strength=s, guidance_scale=g,
             negative_prompt=n, num_inference_steps=STEPS, output_type="np")
        for s in STRENGTHS for g in GUIDANCE_SCALES for n in NEGATIVE_PROMPTS
    ]


def seeded(calls: list[dict]) -> list[dict]:
    return [dict(call, generator=torch.Generator().manual_seed(i)) for i, call in enumerate(calls)]


def unet_rows(calls: list[dict]) -> int:
    """UNet sample evaluations of the sweep (two rows per step with classifier-free guidance)."""
    return sum(int(c["num_inference_steps"] * c["strength"]) * (2 if c["guidance_scale"] > 1 else 1) for c in calls)


def unet_flops_per_row(pipe, size: int) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    unet, device, dtype = pipe.unet, pipe.device, pipe.unet.dtype
    sample = torch.randn(2, 4, size // 8, size // 8, device=device, dtype=dtype)
    embeds = torch.randn(2, 77, 768, device=device, dtype=dtype)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        unet(sample, torch.tensor([500, 500], device=device), encoder_hidden_states=embeds)
    return counter.get_total_flops() / 2


def timed(fn):
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    result = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return result, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", choices=sorted(CONFIGS), default="cpu")
    parser.add_argument("--family", default="sd15", metavar="KEY",
                        help="a key of lab.families(): sd15 is the SD-1.5-shaped --config run, any other key "
                             "times its tiny twin (CPU) through the plain loop and run_sweep")
    parser.add_argument("--max-batch-size", type=int, help="batched path: most cells per batch")
    parser.add_argument("--repeat", type=int, default=3, help="interleaved runs of each path; the fastest counts")
    parser.add_argument("--peak-tflops", type=float, help="the device's peak, for the utilisation column")
    parser.add_argument("--sweep", action="store_true",
                        help="also time run_sweep (store included) and a re-run of the finished sweep")
    parser.add_argument("--compile", action="store_true",
                        help="also run the sweep with a torch.compile-d UNet and count (re)compilations")
    args = parser.parse_args()
    if args.family != "sd15":
        from img2img_lab import ValidationError, families
        from img2img_lab.vocab import suggest

        try:
            families.entry(args.family)
        except ValidationError:
            keys = [e.key for e in families.entries()]
            parser.error(f"--family {args.family!r} is not a key of lab.families(){suggest(args.family, keys)}; "
                         f"the keys: {', '.join(keys)}")
        family_run(args.family, args.repeat)
        return
    config = CONFIGS[args.config]
    max_batch_size = args.max_batch_size or config["max_batch_size"]

    pipe = build_pipeline(config)
    calls = sweep(config["size"])
    rows = unet_rows(calls)
    flops = unet_flops_per_row(pipe, config["size"])

    # warm up both paths (allocator, kernels, oneDNN/cuDNN choices) on a short sweep
    warm = [dict(c, num_inference_steps=4) for c in calls[:4]]
    for call in seeded(warm):
        pipe(**call)
    run_batched(pipe, seeded(warm), max_batch_size=max_batch_size)

    # interleaved repeats, fastest of each: robust to other load on a shared machine
    plain_s = batched_s = float("inf")
    for _ in range(args.repeat):
        plain, seconds = timed(lambda: [pipe(**call).images[0] for call in seeded(calls)])
        plain_s = min(plain_s, seconds)
        batched, seconds = timed(lambda: run_batched(pipe, seeded(calls), max_batch_size=max_batch_size))
        batched_s = min(batched_s, seconds)

    diffs = [float(np.abs(out.image - ref).max()) for out, ref in zip(batched, plain) if out.error is None]
    errors = [repr(out.error) for out in batched if out.error is not None]
    if config["device"] == "cuda":
        device = torch.cuda.get_device_name()
    else:
        device = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    peak = args.peak_tflops or next((v for k, v in PEAK_TFLOPS.items() if k in device), None)

    n_params = sum(p.numel() for p in pipe.unet.parameters()) / 1e6
    print(f"config {args.config}: UNet {n_params:.1f}M params, {config['size']}x{config['size']}, "
          f"{str(config['dtype']).removeprefix('torch.')}, {len(calls)} cells x {STEPS} steps, "
          f"{rows} UNet rows, {flops / 1e9:.1f} GFLOP/row; device: {device}; "
          f"torch {torch.__version__}, max_batch_size {max_batch_size}, best of {args.repeat}")
    print(f"{'path':<10}{'seconds':>10}{'rows/s':>10}{'TFLOP/s':>10}{'% peak':>8}")
    for name, seconds in (("plain", plain_s), ("batched", batched_s)):
        tflops = rows * flops / seconds / 1e12
        share = f"{100 * tflops / peak:.1f}" if peak else "-"
        print(f"{name:<10}{seconds:>10.2f}{rows / seconds:>10.1f}{tflops:>10.3f}{share:>8}")
    print(f"speed-up {plain_s / batched_s:.2f}x; max |batched - plain| {max(diffs, default=float('nan')):.2e} "
          f"(0-1 scale); batch sizes {sorted({o.batch_size for o in batched})}; "
          f"nan {sum(o.nan for o in batched)}/{len(calls)}; errors {errors or 0}")
    if args.sweep or args.compile:
        sweep_section(pipe, calls, max_batch_size, plain_s, args.compile)


def sweep_spec(calls: list[dict], folder: Path):
    """The benchmark grid as a SweepSpec (the init image saved once as a PNG)."""
    from img2img_lab import SweepSpec

    image_path = folder / "init.png"
    calls[0]["image"].save(image_path)
    return SweepSpec(model="bench/random-sd15", prompt=calls[0]["prompt"], image=str(image_path),
                     strength=list(STRENGTHS), guidance_scale=list(GUIDANCE_SCALES),
                     negative_prompt=list(NEGATIVE_PROMPTS), num_inference_steps=STEPS, seed=0)


def sweep_section(pipe, calls, max_batch_size: int, plain_s: float, compile_unet: bool) -> None:
    """run_sweep end to end (PNG + parquet writes included), its re-run, and torch.compile."""
    from img2img_lab import run_sweep

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        spec = sweep_spec(calls, tmp)
        first, first_s = timed(lambda: run_sweep(spec, tmp / "a", pipe=pipe, progress=False,
                                                 max_batch_size=max_batch_size))
        _, again_s = timed(lambda: run_sweep(spec, tmp / "a", pipe=pipe, progress=False,
                                             max_batch_size=max_batch_size))
        print(f"run_sweep: first run {first_s:.2f}s ({plain_s / first_s:.2f}x the plain loop, store included), "
              f"re-run of the finished sweep {again_s:.3f}s = {100 * again_s / first_s:.1f}% of the first "
              f"(target < 5%); statuses {first.df['status'].value_counts().to_dict()}")
        if not compile_unet:
            return
        from torch._dynamo.utils import counters

        eager_unet = pipe.unet
        pipe.unet = torch.compile(eager_unet, fullgraph=True)
        pipe.img2img_lab_info = {"options": {"compile": True}}  # run_sweep pads batches to one shape
        try:
            _, compile_s = timed(lambda: run_sweep(spec, tmp / "c1", pipe=pipe, progress=False,
                                                   max_batch_size=max_batch_size))
            graphs = counters["stats"]["unique_graphs"]
            _, compiled_s = timed(lambda: run_sweep(spec, tmp / "c2", pipe=pipe, progress=False,
                                                    max_batch_size=max_batch_size))
            new_graphs = counters["stats"]["unique_graphs"] - graphs
            print(f"torch.compile: first sweep {compile_s:.2f}s (compiling {graphs} graph(s)), second sweep "
                  f"{compiled_s:.2f}s with {new_graphs} new graph(s) (target 0: no recompiles inside a sweep); "
                  f"{plain_s / compiled_s:.2f}x the plain eager loop")
        finally:
            pipe.unet = eager_unet
            del pipe.img2img_lab_info


FAMILY_STEPS = 4


def family_grid(pipe) -> dict:
    """The sweep's axes that `pipe` takes and reads: strength, guidance (true CFG where the pipeline has
    it, with a negative prompt it then reads), negative_prompt; 2 x 2 x 2 at most."""
    from img2img_lab.families import family_of
    from img2img_lab.knobs import taken

    names = taken(type(pipe).__name__)
    negatives = [None, "blurry, low quality"]
    if "true_cfg_scale" in names:  # FLUX.1 / Qwen-Image: guidance is true CFG, read with a negative prompt
        grid = {"strength": [0.5, 0.9], "true_cfg_scale": [1.0, 4.0], "negative_prompt": negatives[1:]}
    else:
        grid = {"strength": [0.5, 0.9], "guidance_scale": [2.0, 5.0], "negative_prompt": negatives}
    grid = {k: v for k, v in grid.items() if k in names}
    ignored = family_of(pipe).knob_problem(type(pipe).__name__, {k: v[-1] for k, v in grid.items()}, pipe.config)
    return {k: v for k, v in grid.items() if k not in ignored}  # e.g. a distilled FLUX.2 [klein]'s guidance


def family_run(key: str, repeat: int) -> None:
    """Plain diffusers loop vs `run_sweep` on the tiny twin of family `key`, A/B alternated."""
    import statistics

    from img2img_lab import SweepSpec, families, load_image, load_pipeline, run_sweep
    from img2img_lab.knobs import resolve_call, taken

    entry = families.entry(key)
    if entry.tiny is None:
        raise SystemExit(f"--family {key}: {entry.pipeline} has no tiny twin here ({entry.note or 'see lab.families()'})")
    pipe = load_pipeline(entry.tiny, **dict(entry.load))
    pipe.set_progress_bar_config(disable=True)
    grid = family_grid(pipe)
    pictures = {"control_image": "astronaut"} if "control_image" in taken(type(pipe).__name__) else {}
    spec = SweepSpec(model=entry.tiny, prompt="a photo of a red fox in the snow", image="astronaut",
                     num_inference_steps=FAMILY_STEPS, seed=0, **dict(entry.load), **pictures, **grid)
    init = load_image("astronaut", size=64)
    calls = []
    for cell in spec.cells():  # the arguments each cell's pipeline call gets, silent ones left to diffusers
        call = resolve_call(pipe, dict(cell.call)).call
        call.update({k: load_image(v, size=64) for k, v in pictures.items()})
        calls.append((call, cell.seed))

    def plain():
        return [pipe(image=init, **call, generator=torch.Generator().manual_seed(seed)).images[0] for call, seed in calls]

    with tempfile.TemporaryDirectory() as tmp:
        run_sweep(spec, Path(tmp) / "warm", pipe=pipe, progress=False)  # warm-up of both paths
        plain()
        plain_times, sweep_times = [], []
        for n in range(repeat):  # A/B pairs: a loaded machine slows both of a pair alike
            images, seconds = timed(plain)
            plain_times.append(seconds)
            result, seconds = timed(lambda: run_sweep(spec, Path(tmp) / f"run{n}", pipe=pipe, progress=False))
            sweep_times.append(seconds)
        def point(values):  # a cell's place in the grid, from its call or its row
            return tuple(None if v is None or v != v else v for v in values)

        index = {point(cell.call.get(k) for k in grid): n for n, cell in enumerate(spec.cells())}
        diff = max(int(np.abs(np.asarray(result.image(i), np.int16)
                              - np.asarray(images[index[point(row[k] for k in grid)]], np.int16)).max())
                   for i, (_, row) in enumerate(result.df.iterrows()))
        sizes = sorted(set(result.df["batch_size"])) if "batch_size" in result.df else "-"
    ratios = [p / s for p, s in zip(plain_times, sweep_times)]
    print(f"family {key}: {entry.pipeline} on {entry.tiny} {dict(entry.load) or ''}, {len(calls)} cells "
          f"({', '.join(f'{k} {v}' for k, v in grid.items())}) x {FAMILY_STEPS} steps, 64x64, CPU float32, "
          f"{torch.get_num_threads()} threads, {repeat} A/B pairs")
    print(f"plain loop median {statistics.median(plain_times):.2f}s, run_sweep median {statistics.median(sweep_times):.2f}s "
          f"(store included), median ratio {statistics.median(ratios):.2f}x; speed path: "
          f"{families.family_of(pipe).speed_path(type(pipe).__name__)}; batch sizes {sizes}; "
          f"max |run_sweep - plain| {diff} (8-bit levels)")


if __name__ == "__main__":
    main()
