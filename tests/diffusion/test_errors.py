"""Bad input gets one-line errors that name the problem (and leave the pipeline as it was)."""

from __future__ import annotations

import pytest

from attnlens.diffusion import attend_and_excite, heatmaps
from attnlens.errors import InputError, UnsupportedModelError

from diffusion_support import processors, seeded, tiny_pipe  # noqa: F401  (fixtures)

SMALL = dict(height=64, width=64, num_inference_steps=1, output_type="latent")


def one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize(
    "prompt,subjects,settings,expected",
    [
        ("a cat and a frog", ["dog"], {}, "subject 'dog' is not a word of the prompt 'a cat and a frog'; its words: a, cat, and, a, frog"),
        ("a cat and a frog", ["ca"], {}, "subject 'ca' is not a word"),
        ("a cat and a frog", [9], {}, "token position 9 is not a token of the prompt"),
        ("a cat and a frog", [0], {}, "token position 0 is not a token"),
        ("   ", ["cat"], {}, "the prompt is empty"),
        ("cat " * 80, ["cat"], {}, "the prompt has 80 tokens but the text encoder reads 75 (+ start/end tokens): 'cat cat cat cat cat' would be truncated"),
        ("a cat", ["cat"], {"height": 100}, "height must be a positive multiple of 8"),
        ("a cat", ["cat"], {"width": 60}, "width must be a positive multiple of 8"),
        ("a cat", ["cat"], {"attn_res": (5, 5)}, "attn_res (5, 5) matches no cross-attention layer at 64x64 px; the layers run at [(8, 8), (4, 4), (2, 2), (1, 1)]"),
        ("a cat", ["cat"], {"max_iter": 3}, "attend_and_excite has no option(s) ['max_iter']"),
        ("a cat", ["cat"], {"thresholds": "0-0.5"}, "thresholds '0-0.5' must look like STEP:VALUE"),
        ("a cat", ["cat"], {"loss": "dreambooth"}, "unknown guidance loss 'dreambooth'"),
        ("a cat", [], {}, "attend_and_excite needs subjects"),
        ("a cat", ["cat"], {"output_type": "jpeg"}, "output_type must be one of"),
        ("a cat", ["cat"], {"num_inference_steps": 0}, "num_inference_steps must be a positive integer"),
    ],
)
def test_bad_input_is_one_line(tiny_pipe, prompt, subjects, settings, expected) -> None:
    before = processors(tiny_pipe.unet)
    with pytest.raises(InputError) as error:
        attend_and_excite(tiny_pipe, prompt, subjects, generator=seeded(0), **{**SMALL, **settings})
    assert expected in one_line(error)
    assert all(processors(tiny_pipe.unet)[name] is processor for name, processor in before.items())


def test_heat_map_options_are_checked(tiny_pipe) -> None:
    with pytest.raises(InputError) as error:
        heatmaps(tiny_pipe, "a cat", layers=["unet.up.9.0.attn2"], **SMALL)
    assert "no attention layer named 'unet.up.9.0.attn2'" in one_line(error)
    with pytest.raises(InputError) as error:
        heatmaps(tiny_pipe, "a cat", aggregate_steps=[3], **SMALL)
    assert "step 3 is out of range: the generation has 1 denoising steps" in one_line(error)


def test_unsupported_pipelines_and_schedulers(tiny_pipe) -> None:
    from diffusers import DDPMPipeline, StableDiffusionPipeline, UNet2DModel

    unet = UNet2DModel(sample_size=8, block_out_channels=(8, 8), norm_num_groups=4, layers_per_block=1,
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"))
    with pytest.raises(UnsupportedModelError) as error:
        attend_and_excite(DDPMPipeline(unet, tiny_pipe.scheduler), "a cat", ["cat"])
    assert "works on diffusers pipelines StableDiffusionPipeline, StableDiffusionAttendAndExcitePipeline, StableDiffusionXLPipeline" in one_line(error)
    assert "got DDPMPipeline" in str(error.value)

    class NoScaling:
        config = tiny_pipe.scheduler.config

    pipe = StableDiffusionPipeline(**dict(tiny_pipe.components, scheduler=tiny_pipe.scheduler))
    pipe.scheduler = NoScaling()
    with pytest.raises(UnsupportedModelError) as error:
        heatmaps(pipe, "a cat", **SMALL)
    assert "scheduler NoScaling has no scale_model_input()" in one_line(error)
