"""Editing attention through the interception backend (Hugging Face eager/sdpa, nn.MultiheadAttention,
causal CLIP text): identity edits change nothing; an edit that drops one key gives exactly what an
independent eager recomputation of the layer predicts; gradients flow through edits."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import attnlens
from attnlens.errors import InputError

from capture_support import (
    assert_clean,
    drop_key,
    drop_key_probs,
    hook_count,
    merge_heads,
    split_heads,
    tiny_clip,
    tiny_vit,
)

Projection = Callable[[torch.Tensor], torch.Tensor]


def reference_attention(
    hidden: torch.Tensor, projections: tuple[Projection, Projection, Projection, Projection], heads: int, key: int, causal: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Eager multi-head self-attention of ``hidden (B, N, C)`` with key ``key`` dropped: (output, probs)."""
    to_q, to_k, to_v, to_out = projections
    query, keys, values = (split_heads(project(hidden), heads) for project in (to_q, to_k, to_v))
    scores = query @ keys.transpose(-1, -2) / query.shape[-1] ** 0.5
    if causal:
        allowed = torch.ones(scores.shape[-2:], dtype=torch.bool).tril()
        scores = scores.masked_fill(~allowed, float("-inf"))
    probs = drop_key_probs(scores.softmax(-1), key)
    return to_out(merge_heads(probs @ values)), probs


def _replace_output(module: nn.Module, projections, heads: int, key: int, causal: bool = False, seen: list | None = None):
    """Make ``module`` return the reference computation (hidden states as first argument or keyword)."""

    def hook(module: nn.Module, args: tuple, kwargs: dict, output: tuple) -> tuple:
        hidden = args[0] if args else kwargs["hidden_states"]
        result, probs = reference_attention(hidden, projections, heads, key, causal)
        if seen is not None and probs.requires_grad:
            probs.retain_grad()
            seen.append(probs)
        return result, probs

    return module.register_forward_hook(hook, with_kwargs=True)


def _vit_projections(attention: nn.Module) -> tuple:
    return attention.q_proj, attention.k_proj, attention.v_proj, attention.o_proj


@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
def test_vit_identity_edit_leaves_outputs_unchanged(implementation: str) -> None:
    model = tiny_vit(implementation)
    pixels = torch.randn(2, 3, 32, 48)
    before = hook_count(model)
    with torch.no_grad():
        plain = model(pixels, interpolate_pos_encoding=True).logits
        with attnlens.capture_attention(model, edit=lambda record: record.probs) as capture:
            edited = model(pixels, interpolate_pos_encoding=True).logits
    torch.testing.assert_close(edited, plain, atol=1e-6, rtol=0)
    assert len(capture.records) == 3 and all(record.original is record.probs for record in capture.records)
    assert_clean(model, before)


@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
def test_vit_drop_key_edit_matches_eager_recomputation(implementation: str) -> None:
    model = tiny_vit(implementation)
    pixels = torch.randn(2, 3, 32, 32)
    attention = model.vit.layers[1].attention
    with torch.no_grad():
        plain = model(pixels).logits
        handle = _replace_output(attention, _vit_projections(attention), 4, key=3)
        try:
            expected = model(pixels).logits
        finally:
            handle.remove()
        with attnlens.capture_attention(model, layers="blocks.1.attn", edit=drop_key(3)) as capture:
            edited = model(pixels).logits
    torch.testing.assert_close(edited, expected, atol=1e-5, rtol=0)
    assert (edited - plain).abs().max() > 1e-4
    (record,) = capture.records
    assert torch.all(record.probs[..., 3] == 0) and torch.all(record.original[..., 3] > 0)
    torch.testing.assert_close(record.probs, drop_key_probs(record.original, 3))


def test_gradients_flow_through_a_differentiable_edit() -> None:
    model = tiny_vit("sdpa")
    reference = tiny_vit("eager")
    pixels = torch.randn(2, 3, 32, 32)
    attention = reference.vit.layers[2].attention
    seen: list[torch.Tensor] = []
    handle = _replace_output(attention, _vit_projections(attention), 4, key=0, seen=seen)
    try:
        reference(pixels).logits[:, 1].sum().backward()
    finally:
        handle.remove()
    source = pixels.clone().requires_grad_(True)
    with attnlens.capture_attention(model, layers=-1, edit=drop_key(0)) as capture:
        logits = model(source).logits
    logits[:, 1].sum().backward()
    (gradient,) = capture.gradients
    torch.testing.assert_close(gradient, seen[0].grad, atol=1e-5, rtol=1e-4)
    assert source.grad is not None and float(source.grad.abs().sum()) > 0


def _mha_reference(attention: nn.MultiheadAttention, tokens: torch.Tensor, key: int) -> tuple[torch.Tensor, torch.Tensor]:
    weights = attention.in_proj_weight.chunk(3)
    biases = attention.in_proj_bias.chunk(3)
    projections = tuple(lambda x, w=w, b=b: F.linear(x, w, b) for w, b in zip(weights, biases)) + (attention.out_proj,)
    return reference_attention(tokens, projections, attention.num_heads, key)


@pytest.mark.parametrize("need_weights", [True, False])
def test_multihead_attention_edits(need_weights: bool) -> None:
    torch.manual_seed(0)
    attention = nn.MultiheadAttention(16, 4, batch_first=True).eval()
    tokens = torch.randn(3, 7, 16)
    with torch.no_grad():
        plain = attention(tokens, tokens, tokens)[0]
        expected, expected_probs = _mha_reference(attention, tokens, key=2)
        with attnlens.capture_attention(attention, edit=lambda record: record.probs):
            unchanged = attention(tokens, tokens, tokens, need_weights=need_weights)[0]
        with attnlens.capture_attention(attention, edit=drop_key(2)) as capture:
            out, weights = attention(tokens, tokens, tokens, need_weights=need_weights, average_attn_weights=False)
    torch.testing.assert_close(unchanged, plain, atol=1e-6, rtol=0)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(capture.attentions[0], expected_probs, atol=1e-6, rtol=0)
    if need_weights:  # the layer returns the weights it used: the edited ones
        torch.testing.assert_close(weights, expected_probs, atol=1e-6, rtol=0)
    assert_clean(attention, 0)


@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
def test_causal_text_encoder_edits(implementation: str) -> None:
    model = tiny_clip(implementation)
    text = model.text_model
    ids = torch.randint(2, 99, (2, 9), generator=torch.Generator().manual_seed(0))
    attention = text.encoder.layers[0].self_attn
    projections = (attention.q_proj, attention.k_proj, attention.v_proj, attention.out_proj)
    with torch.no_grad():
        plain = text(input_ids=ids).last_hidden_state
        handle = _replace_output(attention, projections, 2, key=2, causal=True)
        try:
            expected = text(input_ids=ids).last_hidden_state
        finally:
            handle.remove()
        with attnlens.capture_attention(model, encoder="text", edit=lambda record: record.probs):
            unchanged = text(input_ids=ids).last_hidden_state
        with attnlens.capture_attention(model, "text.blocks.0.attn", encoder="text", edit=drop_key(2)) as capture:
            edited = text(input_ids=ids).last_hidden_state
    torch.testing.assert_close(unchanged, plain, atol=1e-6, rtol=0)
    torch.testing.assert_close(edited, expected, atol=1e-5, rtol=0)
    assert (edited - plain).abs().max() > 1e-4
    (record,) = capture.records
    assert (record.name, record.module_name) == ("text.blocks.0.attn", "text_model.encoder.layers.0.self_attn")
    assert record.query_grid is None and record.num_keys == 9


def test_an_edit_of_the_wrong_shape_is_refused_and_everything_is_removed() -> None:
    model = tiny_vit("sdpa")
    before = hook_count(model)
    with pytest.raises(InputError, match=r"'blocks.0.attn' returned shape \(1, 4, 17\); .* \(1, 4, 17, 17\)"):
        with torch.no_grad(), attnlens.capture_attention(model, layers=0, edit=lambda record: record.probs[..., 0]):
            model(torch.randn(1, 3, 32, 32))
    with pytest.raises(InputError, match="returned list"):
        with torch.no_grad(), attnlens.capture_attention(model, layers=0, edit=lambda record: [1.0]):
            model(torch.randn(1, 3, 32, 32))
    assert_clean(model, before)


def test_nested_captures_on_one_layer_both_record_and_edits_chain() -> None:
    model = tiny_vit("sdpa")
    pixels = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        with attnlens.capture_attention(model, layers=0, edit=drop_key(1)) as outer:
            with attnlens.capture_attention(model, layers="blocks.0.attn", edit=drop_key(2)) as inner:
                model(pixels)
    (first,), (second,) = outer.records, inner.records
    assert torch.equal(second.original, first.probs)
    assert torch.all(second.probs[..., 1:3] == 0)
    assert not torch.all(first.probs[..., 2] == 0)
