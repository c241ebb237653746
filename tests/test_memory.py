"""memory: the estimated memory table (parameter counts x bytes per parameter) and the memory options."""

import pytest

from img2img_lab import vocab
from img2img_lab.errors import ValidationError
from img2img_lab.families import entries
from img2img_lab.loaders import validate_options
from img2img_lab.memory import BASIS, BYTES_PER_PARAMETER, CHECKPOINTS, GIB, NOT_AN_OPTION, memory_options, memory_table, verdict


def _row(table, checkpoint, precision):
    rows = table[(table["checkpoint"] == checkpoint) & (table["precision"] == precision)]
    assert len(rows) == 1
    return rows.iloc[0]


def test_weights_are_parameter_counts_times_bytes_the_vae_staying_bf16():
    table = memory_table(["bf16", "nf4"])
    flux = _row(table, "black-forest-labs/FLUX.1-dev", "bf16")
    # 11.9 B transformer + CLIP-L 0.12 B + T5-XXL 4.76 B + VAE 0.08 B, 2 bytes each
    assert flux["denoiser_b"] == 11.9 and flux["text_encoders_b"] == pytest.approx(4.88)
    assert flux["weights_gib"] == pytest.approx(round((11.9 + 4.88 + 0.08) * 1e9 * 2 / GIB, 1))
    assert flux["largest_gib"] == pytest.approx(round(11.9e9 * 2 / GIB, 1))
    nf4 = _row(table, "black-forest-labs/FLUX.1-dev", "nf4")
    assert nf4["weights_gib"] == pytest.approx(round(((11.9 + 4.88) * 0.5 + 0.08 * 2) * 1e9 / GIB, 1))
    assert set(table["basis"]) == {BASIS} == {"estimated from parameter counts"}
    assert len(table) == 2 * len(CHECKPOINTS)


def test_verdicts_per_card():
    table = memory_table(["bf16", "fp8", "nf4"], cards=[24, 80])
    # Qwen-Image's ~20 B transformer alone is ~38 GiB in bf16: no 24 GB card without quantization or group offload
    qwen = _row(table, "Qwen/Qwen-Image", "bf16")
    assert qwen["largest_gib"] > 24 and qwen["24 GiB"] == "needs quantization or group offload"
    assert qwen["80 GiB"] == "fits"
    assert _row(table, "Qwen/Qwen-Image", "nf4")["24 GiB"] == "fits"
    # FLUX.2-dev (32 B + Mistral 24 B) needs model offload even on 80 GB in bf16
    assert _row(table, "black-forest-labs/FLUX.2-dev", "bf16")["80 GiB"] == "needs model offload"
    assert _row(table, "black-forest-labs/FLUX.2-dev", "fp8")["24 GiB"] == "needs group offload"
    assert _row(table, "stabilityai/stable-diffusion-3.5-large", "bf16")["24 GiB"] == "needs model offload"
    assert set(table[table["key"].isin(["sd15", "sdxl"])]["24 GiB"]) == {"fits"}


def test_verdict_rule_and_overhead():
    assert verdict(20, 10, 24) == "fits"                      # 20 x 1.2 = 24
    assert verdict(20.1, 10, 24) == "needs model offload"
    assert verdict(30, 20.1, 24) == "needs quantization or group offload"
    assert verdict(30, 20.1, 24, quantized=True) == "needs group offload"
    assert verdict(30, 20.1, 24, overhead=0) == "needs model offload"
    assert memory_table(["bf16"], cards=[40], overhead=0).columns.tolist()[-2] == "40 GiB"


def test_checkpoints_are_rows_of_the_key_table():
    keys = {e.key: e for e in entries()}
    for c in CHECKPOINTS:
        assert c.key in keys, c.key
        assert c.denoiser > 0 and c.vae > 0 and all(b > 0 for _, b in c.text_encoders)
    # the key table's typical checkpoint of each family listed here is one of its rows
    listed = {c.checkpoint for c in CHECKPOINTS}
    assert all(keys[c.key].checkpoint in listed for c in CHECKPOINTS)


@pytest.mark.parametrize("bad, message", [
    ({"precisions": ["fp4"]}, "`precisions` must hold names from"),
    ({"cards": [0]}, "`cards` must hold GPU memory sizes in GiB (numbers > 0), got 0"),
    ({"overhead": -1}, "`overhead` must be a share of the weights in [0, 10], got -1"),
])
def test_bad_arguments_name_the_argument(bad, message):
    with pytest.raises(ValidationError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        memory_table(**bad)


def test_memory_options_use_load_pipelines_option_names():
    table = memory_options()
    options = [o for o in table["load_pipeline"] if o != NOT_AN_OPTION]
    assert {o.split("=")[0] for o in options} == {"dtype", "offload", "vae_slicing", "vae_tiling"}
    for option in options:
        name, value = option.split("=")
        assert name in vocab.DEFAULT_OPTIONS
        if name != "offload":  # offload needs a CUDA device: checked against its value list instead
            validate_options({name: eval(value)})
    assert {eval(o.split("=")[1]) for o in options if o.startswith("offload")} == {"model", "sequential"}
    assert any("enable_group_offload" in c for c in table["diffusers"])
    assert any("PipelineQuantizationConfig" in c for c in table["diffusers"])
    assert table["installed"].dtype == bool
    assert set(BYTES_PER_PARAMETER) >= {"bf16", "fp8", "int8", "nf4"}


def test_plot_memory_draws_a_bar_per_checkpoint_and_precision_and_a_line_per_card():
    import img2img_lab as lab

    table = lab.memory_table(precisions=["bf16", "nf4"], cards=[24, 80])
    fig = lab.plot_memory(table)
    (ax,) = fig.axes
    bars = [p for p in ax.patches]
    assert len(bars) == table["checkpoint"].nunique() * 2
    # the bf16 bar of Qwen-Image is its weights plus the 20% margin, past the 24 GiB line
    qwen = table[(table["checkpoint"] == "Qwen/Qwen-Image") & (table["precision"] == "bf16")]["weights_gib"].item()
    assert any(abs(b.get_width() - qwen * 1.2) < 1e-9 for b in bars) and qwen * 1.2 > 24
    assert sorted(line.get_xdata()[0] for line in ax.lines) == [24, 80]
    assert "estimated from parameter counts" in ax.get_xlabel()
    assert fig._repr_png_().startswith(b"\x89PNG")
    with pytest.raises(lab.ValidationError, match="`table` must be a memory_table"):
        lab.plot_memory(table.drop(columns=["weights_gib"]))
