"""open_clip CLIP models: explain_clip, image similarity, every probe and every method give the
same results as Hugging Face's CLIPModel with the same weights (the mapping is in
``open_clip_support``), with open_clip's own tokenizer."""

from __future__ import annotations

import open_clip
import pytest
import torch
from transformers import CLIPTokenizer

import attnlens
from attnlens import probe
from attnlens.adapters.open_clip import OpenClipTokenizer
from attnlens.errors import InputError

from clip_support import TOKENIZER_DIR
from open_clip_support import CONTEXT, IMAGE_SIZE, hf_clip_twin, tiny_open_clip

TEXTS = ["a photo of a cat", "a red square on a table", "pineapple"]
RELATIVE = 1e-5


def _assert_close(got: torch.Tensor, expected: torch.Tensor, what: str, relative: float = RELATIVE) -> None:
    scale = float(expected.abs().max())
    assert scale > 0, f"{what}: the reference is all zeros, the comparison would prove nothing"
    torch.testing.assert_close(got.to(expected.dtype), expected, rtol=relative, atol=relative * scale, msg=lambda m: f"{what}: {m}")


@pytest.fixture(scope="module")
def twins():
    """``(open_clip model wrapped, HF twin wrapped with the same tokenizer and processor)``."""
    module = tiny_open_clip()
    open_clip_model = attnlens.as_model(module)
    hf_model = attnlens.as_model(hf_clip_twin(module))
    hf_model.tokenizer, hf_model.processor = open_clip_model.tokenizer, open_clip_model.processor
    return open_clip_model, hf_model


@pytest.fixture(scope="module")
def pixels() -> torch.Tensor:
    return torch.randn(2, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(3))


def test_the_adapter_and_open_clip_tokenizer_are_used(twins) -> None:
    model, _ = twins
    assert model.family.name == "open-clip" and "image_text" in model.capabilities
    assert isinstance(model.tokenizer, OpenClipTokenizer)
    native = open_clip.SimpleTokenizer(context_length=CONTEXT)
    long_text = " ".join(["word"] * 100)
    encoded = model.tokenizer(TEXTS + [long_text], padding="max_length", truncation=True, max_length=CONTEXT, return_tensors="pt")
    assert torch.equal(encoded["input_ids"], native(TEXTS + [long_text]))  # open_clip's own ids, padding and truncation
    reference = CLIPTokenizer.from_pretrained(TOKENIZER_DIR, model_max_length=CONTEXT)
    assert model.tokenizer(TEXTS)["input_ids"] == reference(TEXTS)["input_ids"]


@pytest.mark.parametrize("start_layer", [0, -1])
def test_explain_clip_equals_hugging_face(twins, pixels, start_layer: int) -> None:
    open_clip_model, hf_model = twins
    got = attnlens.explain_clip(open_clip_model, pixels, TEXTS, start_layer, start_layer)
    expected = attnlens.explain_clip(hf_model, pixels, TEXTS, start_layer, start_layer)
    _assert_close(got.logits, expected.logits, "logits")
    _assert_close(got.scores, expected.scores, "scores")
    _assert_close(got.image.relevance, expected.image.relevance, "image maps")
    _assert_close(got.text.relevance, expected.text.relevance, "text rows")
    assert got.text.tokens == expected.text.tokens
    assert got.text.tokens[0] == ["a ", "photo ", "of ", "a ", "cat "]


def test_image_similarity_equals_hugging_face(twins, pixels) -> None:
    open_clip_model, hf_model = twins
    got = attnlens.explain_image_similarity(open_clip_model, pixels[:1], pixels, start_layer=0)
    expected = attnlens.explain_image_similarity(hf_model, pixels[:1], pixels, start_layer=0)
    _assert_close(got.scores, expected.scores, "cosines")
    _assert_close(got.a.relevance, expected.a.relevance, "maps of a")
    _assert_close(got.b.relevance, expected.b.relevance, "maps of b")


def test_every_probe_equals_hugging_face(twins) -> None:
    open_clip_model, hf_model = twins
    images = torch.randn(4, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(4))
    probes = {
        "mean attention distance": lambda model: probe.mean_attention_distance(model, images),
        "cls attention maps": lambda model: probe.cls_attention_maps(model, images),
        "attention entropy": lambda model: probe.attention_entropy(model, images),
        "prefix attention mass": lambda model: probe.prefix_attention_mass(model, images),
        "prefix attention maps": lambda model: probe.prefix_attention_maps(model, images),
        "token norms": lambda model: probe.token_norms(model, images).norms,
        "layer features": lambda model: torch.stack(probe.layer_features(model, images, tokens="flatten")[0]),
        "layer CKA": lambda model: probe.layer_cka_matrix(model, images, batch_size=4, progress=False).matrix,
    }
    for name, run in probes.items():
        _assert_close(run(open_clip_model), run(hf_model), name, relative=1e-4)


def test_every_method_equals_hugging_face_on_the_vision_tower(pixels) -> None:
    """Callable targets on the projected image embedding; float64, because the explicit-LRP maps of a
    random tiny model are sums of large terms of both signs (float32 agrees to about 1e-2 there)."""
    module = tiny_open_clip().double()
    hf = hf_clip_twin(module).double()
    direction = torch.randn(module.visual.output_dim, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    open_clip_target = lambda output: output @ direction  # noqa: E731  (visual() returns the projected embedding)
    hf_target = lambda output: hf.visual_projection(output.pooler_output) @ direction  # noqa: E731
    images = pixels.double()
    for method in sorted(attnlens.methods()):
        got = attnlens.explain(module, images, method=method, target=open_clip_target)
        expected = attnlens.explain(hf, images, method=method, target=hf_target)
        if method == "attention_gradcam" and not expected.relevance.any():
            assert not got.relevance.any()  # every positive part clamped away on both
            continue
        _assert_close(got.relevance, expected.relevance, method, relative=1e-8)


def test_other_input_sizes_are_refused_in_one_line(twins, pixels) -> None:
    model, _ = twins
    with pytest.raises(InputError, match="fixed position embeddings") as caught:
        attnlens.explain_clip(model, torch.randn(1, 3, IMAGE_SIZE, 2 * IMAGE_SIZE), "a cat")
    assert "\n" not in str(caught.value)
