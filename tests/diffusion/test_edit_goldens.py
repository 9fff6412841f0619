"""``attnlens.diffusion.edit`` against the authors' Prompt-to-Prompt controllers on the tiny pipeline
at 512 px (goldens: tests/data/goldens/p2p). Tolerances from the goldens' README: latents 5e-4,
attention and local-blend maps 4e-5, masks and tables exact."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from attnlens.capture import AttentionRecord
from attnlens.diffusion import edit
from attnlens.diffusion.alignment import cross_replace_schedule, self_replace_window
from attnlens.diffusion.controllers import AttentionEditor
from attnlens.diffusion.edit import _cross_edit

from diffusion_support import seeded, tiny_pipe  # noqa: F401  (fixture)
from p2p_support import p2p_goldens

RUNS = {
    "replace": (["a cat riding a bicycle", "a dog riding a bicycle"], 1, {"edit": "replace"}),
    "refine": (
        ["a painting of a squirrel eating a burger", "a neoclassical painting of a squirrel eating a burger"], 2,
        {"edit": "refine", "cross_replace_steps": 0.5, "self_replace_steps": 0.2},
    ),
    "reweight_pos": (["a smiling bunny doll"] * 2, 3, {"edit": "reweight", "equalizer": {"smiling": 5}}),
    "reweight_neg_refine": (
        ["soup", "pea soup with croutons"], 4, {"edit": "reweight", "equalizer": {"croutons": -1}, "reweight_on": "refine"},
    ),
    "localblend_replace": (
        ["a painting of a squirrel eating a burger", "a painting of a lion eating a burger"], 2,
        {"edit": "replace", "cross_replace_steps": {"default_": 1.0, "lion": 0.4},
         "local_blend": {"words": [["squirrel"], ["lion"]], "threshold": 0.3}},
    ),
    "localblend_refine": (
        ["a bowl of soup", "a bowl of pea soup with croutons"], 5,
        {"edit": "refine", "local_blend": {"words": [["soup"], ["soup"]], "threshold": 0.6}},
    ),
}
SETTINGS = dict(num_inference_steps=10, height=512, width=512, output_type="latent")


@pytest.mark.parametrize("run", list(RUNS))
def test_edit_reproduces_the_authors_controllers(tiny_pipe, run: str) -> None:
    prompts, seed, options = RUNS[run]
    gold = p2p_goldens()
    result = edit(tiny_pipe, prompts, generator=seeded(seed), keep_steps=True, **SETTINGS, **options)
    assert [step.timestep for step in result.telemetry.steps] == gold[f"{run}__timesteps"].tolist()
    kept = result.step_latents[gold[f"{run}__x_steps_idx"]]
    assert float((kept - torch.from_numpy(gold[f"{run}__x_steps"])).abs().max()) < 5e-4
    assert torch.equal(result.latents, result.step_latents[-1])
    assert torch.equal(result.images, result.latents)
    if "local_blend" in options:
        assert torch.equal(result.blend_masks, torch.from_numpy(gold[f"{run}__lb_mask"]).float())
        assert float((result.blend_maps - torch.from_numpy(gold[f"{run}__lb_map16"])).abs().max()) < 4e-5


def _editor(tiny_pipe, run: str) -> AttentionEditor:
    prompts, _, options = RUNS[run]
    tokenizer = tiny_pipe.tokenizer
    return AttentionEditor(
        _cross_edit(tiny_pipe, options["edit"], prompts, options.get("equalizer"), options.get("reweight_on")),
        cross_replace_schedule(tokenizer, prompts, 10, options.get("cross_replace_steps", 0.8)),
        self_replace_window(10, options.get("self_replace_steps", 0.4)),
        (16, 16),
        slice(2, 4),
    )


@pytest.mark.parametrize(
    "capture,name,kind,grid",
    [("s0_l09", "unet.down.2.0.attn2", "cross", (16, 16)), ("s5_l09", "unet.down.2.0.attn2", "cross", (16, 16)),
     ("s0_l12", "unet.mid.0.attn1", "self", (8, 8)), ("s5_l12", "unet.mid.0.attn1", "self", (8, 8))],
)
def test_controller_edits_attention_like_the_reference(tiny_pipe, capture: str, name: str, kind: str, grid) -> None:
    """The conditional half before and after the authors' AttentionReplace at a cross- and a self-attention layer."""
    gold = p2p_goldens()
    before = torch.from_numpy(gold[f"replace__attn__{capture}__before"])
    after = torch.from_numpy(gold[f"replace__attn__{capture}__after"])
    conditional = before.reshape(2, 2, *before.shape[1:])
    unconditional = torch.rand_like(conditional)
    probs = torch.cat([unconditional, conditional])
    step = int(capture[1])
    record = AttentionRecord(0, name, probs, kind=kind, query_grid=grid, num_keys=probs.shape[-1], step=step)
    edited = _editor(tiny_pipe, "replace")(record)
    result = probs if edited is None else edited
    assert torch.equal(result[:2], unconditional)
    assert float((result[2:].reshape(after.shape) - after).abs().max()) < 4e-5


def test_controller_tables_equal_the_runs(tiny_pipe) -> None:
    gold = p2p_goldens()
    for run in RUNS:
        editor = _editor(tiny_pipe, run)
        assert torch.equal(editor.schedule, torch.from_numpy(gold[f"{run}__cross_replace_alpha"])), run
        assert editor.self_window == tuple(gold[f"{run}__num_self_replace"].tolist()), run
        cross = editor.cross_edit
        if hasattr(cross, "equalizer"):
            assert torch.equal(cross.equalizer, torch.from_numpy(gold[f"{run}__equalizer"])), run
            cross = cross.inner
        if run == "reweight_neg_refine":
            assert torch.equal(cross.mapper, torch.from_numpy(gold[f"{run}__prev_mapper"]))
            assert torch.equal(cross.alphas, torch.from_numpy(gold[f"{run}__prev_refine_alphas"]))
        elif cross is not None:
            assert torch.equal(cross.mapper, torch.from_numpy(gold[f"{run}__mapper"])), run
