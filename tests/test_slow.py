"""Slow tier: the guide's real checkpoints (hub access, ideally a GPU). Run with IMG2IMG_LAB_SLOW=1.

Skipped in CI and on machines without the hub; the fast tier covers the same code paths on the
tiny models.
"""

import numpy as np
import pytest
import torch

import img2img_lab as lab

pytestmark = pytest.mark.slow


@pytest.mark.equality
@pytest.mark.parametrize("spec_file", ["sweeps/strength.yaml", "sweeps/negative_prompt.yaml"])
def test_guide_sweep_on_the_real_checkpoint_equals_direct_calls(spec_file, tmp_path):
    from pathlib import Path

    spec = lab.SweepSpec.from_yaml(Path(__file__).resolve().parents[1] / spec_file, num_inference_steps=20)
    result = lab.run_sweep(spec, tmp_path, batched=False)
    assert set(result.df["status"]) <= {"ok", "nan"}
    pipe = lab.load_pipeline(spec.model[0], **spec.options)
    row = result.df.iloc[-1]
    init = lab.load_image(spec.image[0])
    negative = row["negative_prompt"] if isinstance(row["negative_prompt"], str) else None
    direct = pipe(prompt=row["prompt"], image=init, strength=row["strength"], guidance_scale=row["guidance_scale"],
                  negative_prompt=negative, num_inference_steps=int(row["num_inference_steps"]),
                  generator=torch.Generator("cpu").manual_seed(int(row["seed"]))).images[0]
    assert np.array_equal(np.asarray(result.image(len(result.df) - 1)), np.asarray(direct))
