"""The processor backend on a tiny diffusers UNet2DConditionModel: canonical names, kinds, query grids
of a non-square latent, steps, parity with the stock processors, editing one cross-attention layer,
restoring the original processors, wrapped models and pipelines."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

import attnlens
from attnlens.capture import CaptureProcessor, unwrap_module
from attnlens.errors import InputError

from capture_support import (
    assert_clean,
    drop_key,
    drop_key_probs,
    hook_count,
    merge_heads,
    processors,
    split_heads,
    tiny_unet,
    unet_inputs,
)

CROSS = ["unet.down.0.0.attn2", "unet.mid.0.attn2", "unet.up.1.0.attn2", "unet.up.1.1.attn2"]
# an (8, 12) latent: down.0 and up.1 run at the latent's resolution, mid one level down
GRIDS = {"unet.down.0.0.attn2": (8, 12), "unet.mid.0.attn2": (4, 6), "unet.up.1.0.attn2": (8, 12), "unet.up.1.1.attn2": (8, 12)}


@pytest.fixture(scope="module")
def unet():
    return tiny_unet()


def _run(unet: nn.Module, sample: torch.Tensor, context: torch.Tensor, timestep: int = 3) -> torch.Tensor:
    with torch.no_grad():
        return unet(sample, timestep, encoder_hidden_states=context).sample


class DropTokenReference:
    """Hand-written cross-attention processor: eager attention with one text token dropped."""

    def __init__(self, token: int) -> None:
        self.token = token

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, **kwargs):
        query = split_heads(attn.to_q(hidden_states), attn.heads)
        key = split_heads(attn.to_k(encoder_hidden_states), attn.heads)
        value = split_heads(attn.to_v(encoder_hidden_states), attn.heads)
        probs = drop_key_probs((query @ key.transpose(-1, -2) * attn.scale).softmax(-1), self.token)
        return attn.to_out[1](attn.to_out[0](merge_heads(probs @ value)))


def test_cross_attention_records_names_grids_steps_and_parity(unet) -> None:
    sample, context = unet_inputs()
    stock = processors(unet)
    expected = [_run(unet, sample, context, timestep) for timestep in (3, 5)]
    before = hook_count(unet)
    with attnlens.capture_attention(unet, layers="*.attn2") as capture:
        during = processors(unet)
        outputs = [_run(unet, sample, context, timestep) for timestep in (3, 5)]
    assert capture.canonical_names == CROSS
    for name, processor in during.items():
        if name.endswith("attn1"):  # self-attention keeps its (fused) processor untouched
            assert processor is stock[name]
        else:
            assert isinstance(processor, CaptureProcessor) and processor.original is stock[name]
    for output, stock_output in zip(outputs, expected):
        torch.testing.assert_close(output, stock_output, atol=1e-5, rtol=0)
    assert [(record.name, record.step) for record in capture.records] == [(name, step) for step in (0, 1) for name in CROSS]
    for record in capture.records:
        grid = GRIDS[record.name]
        assert record.kind == "cross" and record.num_keys == 77 and record.query_grid == grid
        assert record.probs.shape == (2, 8, grid[0] * grid[1], 77)
        assert record.module_name.endswith("transformer_blocks.0.attn2")
    assert capture.step == 2
    assert processors(unet) == stock
    assert_clean(unet, before)


def test_query_grids_are_row_major_not_transposed(unet) -> None:
    """Editing the queries of one grid cell (r, c) of down.0.attn2 changes the transformer's output
    map at (r, c) only (everything after attn2 in the block works per position)."""
    sample, context = unet_inputs()
    transformer = unet.down_blocks[0].attentions[0]
    maps: list[torch.Tensor] = []
    handle = transformer.register_forward_hook(lambda module, args, output: maps.append(output[0]))

    def one_cell(record):
        height, width = record.query_grid
        probs = record.probs.reshape(*record.probs.shape[:2], height, width, -1).clone()
        probs[:, :, 1, 9] = torch.nn.functional.one_hot(torch.tensor(0), record.num_keys).to(probs.dtype)
        return probs.reshape(record.probs.shape)

    try:
        _run(unet, sample, context)
        with attnlens.capture_attention(unet, "unet.down.0.0.attn2", edit=one_cell):
            _run(unet, sample, context)
    finally:
        handle.remove()
    changed = (maps[1] - maps[0]).abs().amax(dim=(0, 1)) > 1e-6  # (8, 12)
    assert changed.shape == (8, 12)
    assert changed.nonzero().tolist() == [[1, 9]]


def test_editing_one_cross_attention_layer_matches_a_reference_processor(unet) -> None:
    sample, context = unet_inputs(seed=1)
    target = unet.up_blocks[1].attentions[0].transformer_blocks[0].attn2
    plain = _run(unet, sample, context)
    original = target.processor
    target.set_processor(DropTokenReference(5))
    try:
        expected = _run(unet, sample, context)
    finally:
        target.set_processor(original)
    with attnlens.capture_attention(unet, "unet.up.1.0.attn2", edit=drop_key(5)) as capture:
        edited = _run(unet, sample, context)
    torch.testing.assert_close(edited, expected, atol=1e-5, rtol=0)
    assert (edited - plain).abs().max() > 1e-4
    (record,) = capture.records
    assert torch.all(record.probs[..., 5] == 0) and record.original is not None
    assert target.processor is original


def test_identity_edit_and_gradients_through_the_processor(unet) -> None:
    sample, context = unet_inputs(seed=2)
    plain = _run(unet, sample, context)
    context = context.clone().requires_grad_(True)
    with attnlens.capture_attention(unet, kind="cross", edit=lambda record: record.probs) as capture:
        output = unet(sample, 3, encoder_hidden_states=context).sample
    torch.testing.assert_close(output.detach(), plain, atol=1e-5, rtol=0)
    output.square().sum().backward()
    assert len(capture.gradients) == len(capture.attentions) > 0
    assert all(gradient.shape == probs.shape for gradient, probs in zip(capture.gradients, capture.attentions))
    assert all(float(gradient.abs().sum()) > 0 for gradient in capture.gradients)
    assert context.grad is not None and float(context.grad.abs().sum()) > 0


def test_kind_and_resolution_filters(unet) -> None:
    sample, context = unet_inputs()
    assert attnlens.capture_attention(unet, kind="self", resolutions=2).canonical_names == ["unet.mid.0.attn1"]
    assert attnlens.capture_attention(unet, "unet.up.*", kind="cross", resolutions={1}).canonical_names == CROSS[2:]
    stock = processors(unet)
    with attnlens.capture_attention(unet, kind="cross", resolutions={(4, 6)}) as capture:
        _run(unet, sample, context)
    assert [record.name for record in capture.records] == ["unet.mid.0.attn2"]
    assert processors(unet) == stock
    with pytest.raises(InputError, match="kind must be"):
        attnlens.capture_attention(unet, kind="both")
    with pytest.raises(InputError, match="no selected attention layer"):
        attnlens.capture_attention(unet, kind="cross", resolutions={8})
    with pytest.raises(InputError, match="resolution"):
        attnlens.capture_attention(unet, resolutions={(4, 6, 1)})
    with pytest.raises(InputError, match=r"no attention layer matches 'unet\.side\.\*'; attention layers: \['unet\.down\.0\.0\.attn1'"):
        attnlens.capture_attention(unet, "unet.side.*")


def test_processors_restored_after_an_exception(unet) -> None:
    sample, context = unet_inputs()
    stock = processors(unet)
    before = hook_count(unet)
    with pytest.raises(RuntimeError, match="boom"):
        with attnlens.capture_attention(unet):
            _run(unet, sample, context)
            raise RuntimeError("boom")
    assert processors(unet) == stock
    with pytest.raises(InputError, match="returned shape"):
        with attnlens.capture_attention(unet, kind="cross", edit=lambda record: record.probs[:1]):
            _run(unet, sample, context)
    assert processors(unet) == stock
    assert_clean(unet, before)


def test_interception_backend_on_diffusers_attention(unet) -> None:
    sample, context = unet_inputs()
    stock = processors(unet)
    with attnlens.capture_attention(unet, kind="cross") as by_processor:
        _run(unet, sample, context)
    with attnlens.capture_attention(unet, kind="cross", backend="interception") as by_interception:
        assert processors(unet) == stock
        _run(unet, sample, context)
    assert len(by_interception.records) == len(by_processor.records) > 0
    for left, right in zip(by_processor.records, by_interception.records):
        assert (left.name, left.query_grid) == (right.name, right.query_grid)
        torch.testing.assert_close(left.probs, right.probs, atol=1e-6, rtol=0)
    with pytest.raises(InputError, match="backend='processor' needs diffusers Attention"):
        with attnlens.capture_attention(nn.MultiheadAttention(8, 2), backend="processor"):
            pass


class Compiled(nn.Module):
    """Stands in for ``torch.compile``'s ``OptimizedModule`` (which keeps the model in ``_orig_mod``);
    building a real one imports dynamo, which takes seconds."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self._orig_mod = module

    def forward(self, *args, **kwargs):
        return self._orig_mod(*args, **kwargs)


def test_wrapped_unets_and_pipelines_unwrap(unet) -> None:
    sample, context = unet_inputs()
    parallel = nn.DataParallel(unet)
    compiled = Compiled(unet)
    assert unwrap_module(parallel) is unet and unwrap_module(nn.DataParallel(compiled)) is unet
    wrapped = (parallel, compiled, nn.DataParallel(compiled), SimpleNamespace(_orig_mod=unet), SimpleNamespace(unet=parallel))
    for model in wrapped:
        assert attnlens.capture_attention(model, kind="cross").canonical_names == CROSS
    with attnlens.capture_attention(SimpleNamespace(unet=unet), "unet.mid.*") as capture:
        parallel(sample, 3, encoder_hidden_states=context)
    assert [record.name for record in capture.records] == ["unet.mid.0.attn1", "unet.mid.0.attn2"]
    with pytest.raises(InputError, match="encoder='text' does not apply to a UNet"):
        attnlens.capture_attention(unet, encoder="text")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_is_accumulated_in_float32(dtype: torch.dtype) -> None:
    attention_module = pytest.importorskip("diffusers.models.attention_processor")
    torch.manual_seed(0)
    attention = attention_module.Attention(query_dim=16, cross_attention_dim=8, heads=2, dim_head=8).eval()
    hidden, context = torch.randn(2, 6, 16), torch.randn(2, 4, 8)
    with torch.no_grad(), attnlens.capture_attention(attention) as reference:
        expected = attention(hidden, encoder_hidden_states=context)
    attention.to(dtype)
    with torch.no_grad(), attnlens.capture_attention(attention) as capture:
        out = attention(hidden.to(dtype), encoder_hidden_states=context.to(dtype))
    (probs,) = capture.attentions
    assert probs.dtype == dtype and out.dtype == dtype
    torch.testing.assert_close(probs.float(), reference.attentions[0], atol=2e-2, rtol=0)
    torch.testing.assert_close(out.float(), expected, atol=5e-2, rtol=0)
