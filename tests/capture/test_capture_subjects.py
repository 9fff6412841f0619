"""Subjects and selection: canonical names, query grids from the pixel input, glob/module-path
selection, explicit module lists and user-written subjects."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import attnlens
from attnlens.capture import AttentionCapture, AttentionLayer, InputWatch, Subject, as_subject, select_layers
from attnlens.errors import InputError

from capture_support import tiny_clip, tiny_vit


def _grids(capture) -> list[tuple[str, tuple[int, int] | None, int]]:
    return [(record.name, record.query_grid, record.num_keys) for record in capture.records]


def test_vit_canonical_names_and_grids_of_a_non_square_input() -> None:
    model = tiny_vit("sdpa")
    pixels = torch.randn(1, 3, 32, 48)
    for subject in (model, attnlens.AttnLensModel(model)):
        with torch.no_grad(), attnlens.capture_attention(subject, layers=[0, -1]) as capture:
            model(pixels, interpolate_pos_encoding=True)
        assert _grids(capture) == [("blocks.0.attn", (4, 6), 25), ("blocks.2.attn", (4, 6), 25)]
        assert capture.layer_names == ["vit.layers.0.attention", "vit.layers.2.attention"]
        assert [record.kind for record in capture.records] == ["self", "self"]


def test_clip_towers_have_prefixed_names_and_vision_grids() -> None:
    model = tiny_clip()
    ids = torch.randint(2, 99, (1, 5))
    with torch.no_grad():
        with attnlens.capture_attention(model) as vision, attnlens.capture_attention(model, encoder="text") as text:
            model(input_ids=ids, pixel_values=torch.randn(1, 3, 32, 32))
    assert _grids(vision) == [("vision.blocks.0.attn", (4, 4), 17), ("vision.blocks.1.attn", (4, 4), 17)]
    assert _grids(text) == [("text.blocks.0.attn", None, 5), ("text.blocks.1.attn", None, 5)]
    assert text.layer_names == ["text_model.encoder.layers.0.self_attn", "text_model.encoder.layers.1.self_attn"]


def test_models_without_adapter_use_module_paths() -> None:
    layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)
    encoder = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False).eval()
    with torch.no_grad(), attnlens.capture_attention(encoder, "layers.1.self_attn") as capture:
        encoder(torch.randn(2, 5, 16))
    assert _grids(capture) == [("layers.1.self_attn", None, 5)]
    assert capture.records[0].module_name == "layers.1.self_attn"


def test_glob_patterns_module_paths_and_errors() -> None:
    model = tiny_vit("sdpa")
    assert attnlens.capture_attention(model, "blocks.*").layers == [0, 1, 2]
    assert attnlens.capture_attention(model, ["blocks.[02].attn", "vit.layers.1.attention"]).layers == [0, 1, 2]
    assert attnlens.capture_attention(model, ["blocks.?.attn", -1]).canonical_names == ["blocks.0.attn", "blocks.1.attn", "blocks.2.attn"]
    with pytest.raises(InputError, match=r"no attention layer named 'blocks\.9\.attn'; attention layers: \['blocks\.0\.attn'"):
        attnlens.capture_attention(model, "blocks.9.attn")
    with pytest.raises(InputError, match="no attention layer matches 'head.*'"):
        attnlens.capture_attention(model, "head.*")
    with pytest.raises(InputError, match="must be an int index"):
        attnlens.capture_attention(model, [1.5])
    assert select_layers(["a", "b"], "x", aliases=["x", "y"]) == [0]


def test_an_explicit_module_list_still_works() -> None:
    model = tiny_vit("sdpa")
    modules = [(f"layer{index}", block.attention) for index, block in enumerate(model.vit.layers)]
    with torch.no_grad(), AttentionCapture(modules, ["layer1"], keep_grad=False) as capture:
        model(torch.randn(1, 3, 32, 32))
    assert [(record.layer, record.name, record.module_name) for record in capture.records] == [(1, "layer1", "layer1")]


class TwoSteps:
    """A user-written subject: one MHA layer with a fixed 2x3 query grid, counting steps."""

    def __init__(self) -> None:
        self.module = nn.MultiheadAttention(8, 2, batch_first=True).eval()

    def attention_layers(self) -> list[AttentionLayer]:
        return [AttentionLayer("mixer", "", self.module, "cross", factor=1)]

    def input_watch(self) -> InputWatch:
        return InputWatch(self.module, lambda args, kwargs: lambda layer, queries: (2, 3) if queries == 6 else None, steps=True)


def test_a_user_written_subject() -> None:
    subject = TwoSteps()
    assert isinstance(subject, Subject) and as_subject(subject) is subject
    queries, keys = torch.randn(1, 6, 8), torch.randn(1, 4, 8)
    with torch.no_grad(), attnlens.capture_attention(subject, kind="cross", resolutions={(2, 3)}) as capture:
        subject.module(queries, keys, keys)
        subject.module(queries[:, :2], keys, keys)  # a (1, 2) call: not at a chosen resolution
        capture.step = 10
        subject.module(queries, keys, keys)
    assert [(record.name, record.query_grid, record.num_keys, record.step) for record in capture.records] == [
        ("mixer", (2, 3), 4, 0),
        ("mixer", (2, 3), 4, 10),
    ]


def test_unsupported_objects_are_a_type_error() -> None:
    with pytest.raises(TypeError, match="expected an attnlens model"):
        attnlens.capture_attention("vit")


def test_attention_capture_accepts_a_model() -> None:
    model = tiny_vit("sdpa")
    assert AttentionCapture(model, "blocks.1.attn").layer_names == ["vit.layers.1.attention"]
