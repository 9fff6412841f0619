"""Attention capture: parity with eager attention for every way attention is computed, layer
selection, gradients, and removal of every hook and patch (also on exceptions)."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers import CLIPTextConfig, CLIPTextModel

import attnlens
from attnlens.capture import patches_installed
from attnlens.errors import AttentionNotFoundError, InputError

from capture_support import assert_clean, hook_count, tiny_vit


@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
def test_hf_vit_parity_with_eager_attention(implementation: str) -> None:
    reference = tiny_vit("eager")
    model = tiny_vit(implementation)
    pixels = torch.randn(2, 3, 32, 48)
    with torch.no_grad():
        expected = reference(pixels, output_attentions=True, interpolate_pos_encoding=True)
        plain = model(pixels, interpolate_pos_encoding=True).logits
        before = hook_count(model)
        with attnlens.capture_attention(model) as capture:
            logits = model(pixels, interpolate_pos_encoding=True).logits
    assert len(capture.attentions) == 3
    for recorded, eager in zip(capture.attentions, expected.attentions):
        assert recorded.shape == (2, 4, 1 + 4 * 6, 1 + 4 * 6)
        torch.testing.assert_close(recorded, eager, atol=1e-5, rtol=0)
    torch.testing.assert_close(logits, plain, atol=1e-5, rtol=0)
    assert_clean(model, before)


@pytest.mark.parametrize("need_weights", [True, False])
@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("grad", [True, False])
def test_multihead_attention_parity(need_weights: bool, batch_first: bool, grad: bool) -> None:
    torch.manual_seed(0)
    attention = nn.MultiheadAttention(16, 4, batch_first=batch_first).eval()
    tokens = torch.randn(3, 7, 16) if batch_first else torch.randn(7, 3, 16)
    with torch.no_grad():
        expected_out, expected_weights = attention(tokens, tokens, tokens, average_attn_weights=False)
    with torch.set_grad_enabled(grad), attnlens.capture_attention(attention) as capture:
        out = attention(tokens, tokens, tokens, need_weights=need_weights)[0]
    torch.testing.assert_close(capture.attentions[0], expected_weights, atol=1e-5, rtol=0)
    torch.testing.assert_close(out, expected_out, atol=1e-5, rtol=0)
    assert_clean(attention, 0)


@pytest.mark.parametrize("need_weights", [True, False])
def test_multihead_attention_gradients_reach_the_record(need_weights: bool) -> None:
    """With weights, MHA's softmax output is (B*H, Q, K): the record must be on the output's path."""
    torch.manual_seed(0)
    attention = nn.MultiheadAttention(16, 4, batch_first=True).eval()
    tokens = torch.randn(3, 7, 16)
    with attnlens.capture_attention(attention) as capture:
        out = attention(tokens[:, :1], tokens, tokens, need_weights=need_weights)[0]
        out.sum().backward()
    grad = capture.gradients[0]
    assert grad.shape == (3, 4, 1, 7) and float(grad.abs().sum()) > 0
    assert_clean(attention, 0)


def test_multihead_attention_inside_a_model_with_mask() -> None:
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True).eval()
    encoder = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False).eval()
    tokens = torch.randn(2, 5, 16)
    mask = nn.Transformer.generate_square_subsequent_mask(5)
    with torch.no_grad():
        expected = encoder(tokens, mask=mask)
        with attnlens.capture_attention(encoder) as capture:
            out = encoder(tokens, mask=mask)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)
    assert len(capture.attentions) == 2
    upper = torch.ones(5, 5, dtype=torch.bool).triu(1)
    assert torch.all(capture.attentions[0][..., upper] == 0)
    torch.testing.assert_close(capture.attentions[1].sum(-1), torch.ones(2, 2, 5))


def test_causal_text_encoder_parity() -> None:
    torch.manual_seed(0)
    config = CLIPTextConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, vocab_size=100, max_position_embeddings=16)
    eager = CLIPTextModel(config).eval()
    eager.set_attn_implementation("eager")
    sdpa = CLIPTextModel(config).eval()
    sdpa.load_state_dict(eager.state_dict())
    ids = torch.randint(0, 99, (2, 9))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    with torch.no_grad():
        expected = eager(input_ids=ids, attention_mask=mask, output_attentions=True)
        with attnlens.capture_attention(sdpa) as capture:
            out = sdpa(input_ids=ids, attention_mask=mask)
    for recorded, reference in zip(capture.attentions, expected.attentions):
        torch.testing.assert_close(recorded, reference, atol=1e-5, rtol=0)
    torch.testing.assert_close(out.last_hidden_state, expected.last_hidden_state, atol=1e-5, rtol=0)


def test_gradients_match_eager_autograd() -> None:
    reference = tiny_vit("eager")
    model = tiny_vit("sdpa")
    pixels = torch.randn(2, 3, 32, 32)
    output = reference(pixels, output_attentions=True)
    for attention in output.attentions:
        attention.retain_grad()
    output.logits[:, 1].sum().backward()
    with attnlens.capture_attention(model) as capture:
        logits = model(pixels).logits
    logits[:, 1].sum().backward()
    for gradient, attention in zip(capture.gradients, output.attentions):
        torch.testing.assert_close(gradient, attention.grad, atol=1e-5, rtol=1e-4)


def test_layer_selection_by_index_and_name() -> None:
    model = tiny_vit("sdpa")
    pixels = torch.randn(1, 3, 32, 32)
    with torch.no_grad(), attnlens.capture_attention(model, layers=[-1, 0]) as capture:
        model(pixels)
    assert capture.layers == [0, 2]
    assert {record.layer for record in capture.records} == {0, 2}
    path, name = capture.layer_names[1], capture.canonical_names[1]
    assert (path, name) == ("vit.layers.2.attention", "blocks.2.attn")
    for selection in (path, name):
        with torch.no_grad(), attnlens.capture_attention(model, layers=selection) as capture:
            model(pixels)
        assert [(record.name, record.module_name) for record in capture.records] == [(name, path)]


@pytest.mark.parametrize("layers", [3, -4, "no.such.layer", [0, 7]])
def test_bad_layer_selection_names_valid_range(layers) -> None:
    with pytest.raises(InputError, match="attention layer"):
        attnlens.capture_attention(tiny_vit("sdpa"), layers=layers)


def test_streaming_without_storing() -> None:
    model = tiny_vit("sdpa")
    seen: list[tuple[int, tuple[int, ...]]] = []
    with torch.no_grad(), attnlens.capture_attention(model, store=False, on_record=lambda r: seen.append((r.layer, tuple(r.probs.shape)))) as capture:
        model(torch.randn(2, 3, 32, 32))
    assert capture.records == []
    assert seen == [(layer, (2, 4, 17, 17)) for layer in range(3)]


def test_hooks_and_patches_removed_when_an_exception_escapes() -> None:
    model = tiny_vit("sdpa")
    before = hook_count(model)
    with pytest.raises(RuntimeError, match="boom"):
        with attnlens.capture_attention(model):
            model(torch.randn(1, 3, 32, 32))
            raise RuntimeError("boom")
    assert_clean(model, before)
    with pytest.raises(ValueError):
        with attnlens.capture_attention(model):
            model(torch.randn(1, 5, 32, 32))  # wrong channel count fails inside the forward
    assert_clean(model, before)


def test_nested_captures_restore_patches_once() -> None:
    model = tiny_vit("sdpa")
    with attnlens.capture_attention(model, layers=0) as outer:
        with attnlens.capture_attention(model, layers=1) as inner:
            with torch.no_grad():
                model(torch.randn(1, 3, 32, 32))
        assert patches_installed()
    assert not patches_installed()
    assert [r.layer for r in outer.records] == [0] and [r.layer for r in inner.records] == [1]


def test_model_without_attention_is_an_error() -> None:
    with pytest.raises(AttentionNotFoundError, match="no attention layers"):
        attnlens.capture_attention(nn.Sequential(nn.Linear(4, 4), nn.ReLU()))


class OpaqueAttention(nn.Module):
    """An 'attention' whose probabilities never exist as a tensor attnlens can intercept."""

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return tokens * torch.sigmoid(tokens)


def test_attention_that_cannot_be_seen_is_an_error_not_an_empty_result() -> None:
    model = nn.Sequential(OpaqueAttention())
    with pytest.raises(AttentionNotFoundError, match="could not be seen"):
        with attnlens.capture_attention(model):
            model(torch.randn(1, 3, 4))
    assert not patches_installed()


def test_accessing_results_without_forward_is_an_error() -> None:
    with attnlens.capture_attention(tiny_vit("sdpa")) as capture:
        pass
    with pytest.raises(AttentionNotFoundError, match="run a forward pass"):
        capture.attentions


def test_gradients_missing_is_an_error() -> None:
    model = tiny_vit("sdpa")
    with torch.no_grad(), attnlens.capture_attention(model) as capture:
        model(torch.randn(1, 3, 32, 32))
    with pytest.raises(AttentionNotFoundError, match="no attention gradient"):
        capture.gradients


def test_diffusers_attention_processor_parity() -> None:
    attention_module = pytest.importorskip("diffusers.models.attention_processor")
    torch.manual_seed(0)
    attention = attention_module.Attention(query_dim=16, cross_attention_dim=8, heads=2, dim_head=8).eval()
    hidden = torch.randn(2, 6, 16)
    context = torch.randn(2, 4, 8)
    with torch.no_grad():
        expected = attention(hidden, encoder_hidden_states=context)
        with attnlens.capture_attention(attention) as capture:
            out = attention(hidden, encoder_hidden_states=context)
        query = attention.to_q(hidden).view(2, 6, 2, 8).transpose(1, 2)
        key = attention.to_k(context).view(2, 4, 2, 8).transpose(1, 2)
        probabilities = (query @ key.transpose(-1, -2) * attention.scale).softmax(-1)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(capture.attentions[0], probabilities, atol=1e-5, rtol=0)


def test_timm_fused_attention_parity() -> None:
    import timm

    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, num_classes=3).eval()
    pixels = torch.randn(1, 3, 32, 32)
    with torch.no_grad(), attnlens.capture_attention(model) as capture:
        out = model(pixels)
    for block in model.blocks:
        block.attn.fused_attn = False
    with torch.no_grad(), attnlens.capture_attention(model) as eager_capture:
        eager_out = model(pixels)
    torch.testing.assert_close(out, eager_out, atol=1e-5, rtol=0)
    for fused, eager in zip(capture.attentions, eager_capture.attentions):
        torch.testing.assert_close(fused, eager, atol=1e-5, rtol=0)
