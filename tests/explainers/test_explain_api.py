"""Invariants every registered explanation method must satisfy.

The tests are parametrised over the registry at collection time (``attnlens.explainers.methods()``),
so a newly added method is checked automatically. A method that cannot apply to a model must say
so with :class:`UnsupportedModelError`; any other failure fails the test. The methods in
``UNIVERSAL`` must support every model used here.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torch.nn.modules.module as module_globals
import transformers
from PIL import Image

import attnlens
from attnlens.capture import patches_installed
from attnlens.errors import InputError, UnsupportedModelError
from attnlens.explainers import Explanation, explain, get_method, methods

METHODS = sorted(methods())
UNIVERSAL = {"attention", "rollout", "attention_gradcam", "generic"}
GRID = (4, 4)  # 32 px input, patch 8

TINY = dict(hidden_size=32, num_attention_heads=4, intermediate_size=64, image_size=32, patch_size=8)
LABELS = {i: f"class_{i}" for i in range(5)}


def pooled_dim0(output):
    return output.pooler_output[:, 0]


def cls_dim3(output):
    return output.last_hidden_state[:, 0, 3]


def _build(kind: str) -> torch.nn.Module:
    torch.manual_seed(0)
    labels = dict(num_labels=5, id2label=LABELS, label2id={v: k for k, v in LABELS.items()})
    if kind == "vit_backbone":
        return transformers.ViTModel(transformers.ViTConfig(**TINY, num_hidden_layers=2))
    if kind == "deit_teacher":
        return transformers.DeiTForImageClassificationWithTeacher(transformers.DeiTConfig(**TINY, num_hidden_layers=2, **labels))
    if kind == "beit_mean":
        config = transformers.BeitConfig(**TINY, num_hidden_layers=2, use_mean_pooling=True, **labels)
        return transformers.BeitForImageClassification(config)
    if kind == "dinov2":
        return transformers.Dinov2Model(transformers.Dinov2Config(**TINY, num_hidden_layers=2))
    if kind == "dinov2_registers":
        config = transformers.Dinov2WithRegistersConfig(**TINY, num_hidden_layers=2, num_register_tokens=2)
        return transformers.Dinov2WithRegistersModel(config)
    if kind == "clip_vision":
        return transformers.CLIPVisionModel(transformers.CLIPVisionConfig(**TINY, num_hidden_layers=2))
    raise KeyError(kind)


# kind -> (target for the model, prefix tokens)
KINDS = {
    "vit": (None, ("cls",)),
    "vit_backbone": (pooled_dim0, ("cls",)),
    "deit_teacher": (None, ("cls", "distillation")),
    "beit_mean": (None, ("cls",)),
    "dinov2": (pooled_dim0, ("cls",)),
    "dinov2_registers": (cls_dim3, ("cls", "register", "register")),
    "clip_vision": (pooled_dim0, ("cls",)),
}


@pytest.fixture(scope="module")
def vit(tiny_vit_dir) -> attnlens.AttnLensModel:
    """The conftest's tiny ViT classifier (3 layers, 5 labels), saved and loaded back."""
    return attnlens.load(str(tiny_vit_dir))


@pytest.fixture(scope="module")
def zoo(vit):
    built = {"vit": vit}

    def get(kind: str) -> attnlens.AttnLensModel:
        if kind not in built:
            built[kind] = attnlens.as_model(_build(kind).eval())
        return built[kind]

    return get


@pytest.fixture(scope="module")
def pixels() -> torch.Tensor:
    return torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))


# --------------------------------------------------------------------------- helpers
def _hook_counts(module: torch.nn.Module) -> tuple:
    counts = []
    for sub in module.modules():
        counts.append(tuple(len(value) for key, value in sorted(vars(sub).items()) if "hooks" in key and isinstance(value, dict)))
    for parameter in module.parameters():
        counts.append((len(parameter._backward_hooks or {}), len(getattr(parameter, "_post_accumulate_grad_hooks", None) or {})))
    global_hooks = tuple(
        len(value) for key, value in sorted(vars(module_globals).items()) if key.startswith("_global") and isinstance(value, dict)
    )
    return tuple(counts), global_hooks


def _outputs(model: attnlens.AttnLensModel, pixels: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        output = model(pixels.to(model.device, model.dtype))
    return output.logits if hasattr(output, "logits") else output.last_hidden_state


class Snapshot:
    """State of a model before a call; :meth:`check` asserts the call left it unchanged."""

    def __init__(self, model: attnlens.AttnLensModel, pixels: torch.Tensor) -> None:
        self.model = model
        self.pixels = pixels
        self.hooks = _hook_counts(model.module)
        self.training = model.module.training
        self.requires_grad = [p.requires_grad for p in model.module.parameters()]
        self.outputs = _outputs(model, pixels)

    def check(self) -> None:
        module = self.model.module
        assert not patches_installed()
        assert "softmax" not in torch.Tensor.__dict__
        assert _hook_counts(module) == self.hooks
        assert module.training == self.training
        assert [p.requires_grad for p in module.parameters()] == self.requires_grad
        assert all(p.grad is None for p in module.parameters())
        assert torch.equal(_outputs(self.model, self.pixels), self.outputs)


def _explain_or_unsupported(model, images, method: str, target=None, **options) -> Explanation | None:
    """Explain; ``None`` where the method refuses the model with UnsupportedModelError (asserted)."""
    snapshot = Snapshot(model, images if isinstance(images, torch.Tensor) else torch.zeros(1, 3, 32, 32))
    try:
        result = explain(model, images, method=method, target=target, **options)
    except UnsupportedModelError as error:
        assert method not in UNIVERSAL, f"{method} must support {type(model.module).__name__}: {error}"
        assert str(error)
        snapshot.check()
        return None
    snapshot.check()
    return result


def _close(a: torch.Tensor, b: torch.Tensor, rtol: float = 1e-5) -> None:
    scale = max(float(b.abs().max()), 1e-12)
    torch.testing.assert_close(a, b, atol=rtol * scale, rtol=0)


# --------------------------------------------------------------------------- models
@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("method", METHODS)
def test_method_on_model_family(zoo, pixels, method: str, kind: str) -> None:
    model = zoo(kind)
    target, roles = KINDS[kind]
    assert model.token_layout(pixels).prefix_roles == roles
    explanation = _explain_or_unsupported(model, pixels[:2], method, target)
    if explanation is None:
        return
    assert explanation.relevance.shape == (2, *GRID)
    assert torch.isfinite(explanation.relevance).all()
    assert explanation.method == method
    assert explanation.image_index.tolist() == [0, 1]
    if target is None:
        assert explanation.logits is not None and explanation.logits.shape == (2, 5)
        assert explanation.targets.tolist() == explanation.logits.argmax(-1).tolist()
    else:
        assert explanation.logits is None
        assert explanation.targets.tolist() == [-1, -1]
        assert explanation.target_names == ["callable", "callable"]


@pytest.mark.parametrize("method", METHODS)
def test_backbone_targets(zoo, pixels, method: str) -> None:
    model = zoo("vit_backbone")
    for target in (pooled_dim0, cls_dim3, lambda out: out.last_hidden_state[:, 0].sum(-1)):
        explanation = _explain_or_unsupported(model, pixels[:2], method, target)
        if explanation is not None:
            assert explanation.relevance.shape == (2, *GRID)
            assert torch.isfinite(explanation.relevance).all()
    for target in (None, 0, "class_0"):
        with pytest.raises((InputError, UnsupportedModelError), match="callable|support"):
            explain(model, pixels[:2], method=method, target=target)
    assert not patches_installed()


# --------------------------------------------------------------------------- batching and targets
@pytest.mark.parametrize("method", METHODS)
def test_batch_equals_single_calls(vit, pixels, method: str) -> None:
    batch = _explain_or_unsupported(vit, pixels, method, [1, [0, "class_2"], 4])
    if batch is None:
        return
    assert batch.image_index.tolist() == [0, 1, 1, 2]
    assert batch.targets.tolist() == [1, 0, 2, 4]
    singles = [
        explain(vit, pixels[0:1], method=method, target=1),
        explain(vit, pixels[1:2], method=method, target=0),
        explain(vit, pixels[1:2], method=method, target="class_2"),
        explain(vit, pixels[2:3], method=method, target=4),
    ]
    _close(batch.relevance, torch.cat([s.relevance for s in singles]))
    predicted = explain(vit, pixels, method=method)
    singles = [explain(vit, pixels[i : i + 1], method=method) for i in range(3)]
    _close(predicted.relevance, torch.cat([s.relevance for s in singles]))
    assert predicted.targets.tolist() == [int(s.targets[0]) for s in singles]


@pytest.mark.parametrize("method", METHODS)
def test_target_forms(vit, pixels, method: str) -> None:
    images = pixels[:2]
    base = _explain_or_unsupported(vit, images, method, None)
    if base is None:
        return
    logits = _outputs(vit, images)
    assert base.targets.tolist() == logits.argmax(-1).tolist()
    assert base.target_names == [LABELS[int(c)] for c in base.targets]
    fixed = explain(vit, images, method=method, target=2)
    assert fixed.targets.tolist() == [2, 2]
    by_name = explain(vit, images, method=method, target="CLASS_2")  # names are case-insensitive
    assert by_name.targets.tolist() == [2, 2]
    _close(by_name.relevance, fixed.relevance)
    listed = explain(vit, images, method=method, target=[1, "class_4"])
    assert listed.targets.tolist() == [1, 4]
    as_tensor = explain(vit, images, method=method, target=torch.tensor([1, 4]))
    assert as_tensor.targets.tolist() == [1, 4]
    _close(as_tensor.relevance, listed.relevance)
    several = explain(vit, images, method=method, target=[[0, 2, 3], 1])
    assert several.image_index.tolist() == [0, 0, 0, 1]
    assert several.targets.tolist() == [0, 2, 3, 1]
    assert several.relevance.shape == (4, *GRID)
    _close(several.relevance[1], fixed.relevance[0])
    _close(several.relevance[3], explain(vit, images[1:], method=method, target=1).relevance[0])
    by_callable = explain(vit, images, method=method, target=lambda out: out.logits[:, 2])
    assert by_callable.targets.tolist() == [-1, -1]
    _close(by_callable.relevance, fixed.relevance)
    if not get_method(method).class_specific:
        _close(fixed.relevance, base.relevance)
        _close(several.relevance[0], several.relevance[2])


# --------------------------------------------------------------------------- hygiene
@pytest.mark.parametrize("method", METHODS)
def test_model_left_untouched(vit, pixels, method: str) -> None:
    module = vit.module
    module.train()  # the mode must be restored too
    try:
        snapshot = Snapshot(vit, pixels[:2])
        try:
            explain(vit, pixels[:2], method=method)
        except UnsupportedModelError:
            assert method not in UNIVERSAL
        snapshot.check()
    finally:
        module.eval()


class Boom(RuntimeError):
    pass


@pytest.mark.parametrize("method", METHODS)
def test_model_left_untouched_when_an_exception_escapes(vit, pixels, method: str) -> None:
    snapshot = Snapshot(vit, pixels[:2])

    def raising_target(output):
        raise Boom("target failed")

    if get_method(method).class_specific:
        with pytest.raises((Boom, UnsupportedModelError)):
            explain(vit, pixels[:2], method=method, target=raising_target)
    else:  # class-independent maps never evaluate the target
        explain(vit, pixels[:2], method=method, target=raising_target)
    snapshot.check()

    def raising_hook(module, args, output):
        raise Boom("forward failed")

    last_block = vit.family.encoder().block_modules(vit.module)[-1]
    handle = last_block.register_forward_hook(raising_hook)
    try:
        with pytest.raises((Boom, UnsupportedModelError)):
            explain(vit, pixels[:2], method=method)
    finally:
        handle.remove()
    snapshot.check()


# --------------------------------------------------------------------------- errors
def test_unknown_method_lists_the_valid_ones(vit, pixels) -> None:
    with pytest.raises(InputError) as info:
        explain(vit, pixels[:1], method="no_such_method")
    for name in METHODS:
        assert name in str(info.value)


@pytest.mark.parametrize("method", METHODS)
def test_option_and_target_errors(vit, pixels, method: str) -> None:
    images = pixels[:2]
    with pytest.raises(InputError, match="no_such_option"):
        explain(vit, images, method=method, no_such_option=1)
    layers = len(vit.attention_layers())
    if "start_layer" in get_method(method).defaults:
        for bad in (layers, -layers - 1, 1.5):
            with pytest.raises(InputError, match="start_layer"):
                explain(vit, images, method=method, start_layer=bad)
        assert explain(vit, images, method=method, start_layer=-layers).relevance.shape == (2, *GRID)
    else:
        with pytest.raises(InputError, match="start_layer"):
            explain(vit, images, method=method, start_layer=0)
    with pytest.raises(InputError, match="out of range"):
        explain(vit, images, method=method, target=5)
    with pytest.raises(InputError, match="out of range"):
        explain(vit, images, method=method, target=[0, -1])
    with pytest.raises(InputError, match="3 targets for 2 images"):
        explain(vit, images, method=method, target=[0, 1, 2])
    with pytest.raises(InputError, match="unknown class name"):
        explain(vit, images, method=method, target="zebra")
    with pytest.raises(InputError, match="empty"):
        explain(vit, images, method=method, target=[[], 1])
    assert not patches_installed()


# --------------------------------------------------------------------------- inputs and dtypes
@pytest.mark.parametrize("method", METHODS)
def test_non_square_input(vit, method: str) -> None:
    pixels = torch.randn(2, 3, 32, 48, generator=torch.Generator().manual_seed(2))
    explanation = _explain_or_unsupported(vit, pixels, method)
    if explanation is None:
        return
    assert explanation.relevance.shape == (2, 4, 6)
    assert explanation.input_size == (32, 48)
    assert explanation.pixel_map().shape == (2, 32, 48)
    assert torch.isfinite(explanation.relevance).all()
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)]
    resized = explain(vit, images, method=method, size=(32, 48))
    assert resized.relevance.shape == (1, 4, 6)


@pytest.mark.parametrize("method", METHODS)
def test_float64_model(vit, pixels, method: str) -> None:
    double = attnlens.as_model(copy.deepcopy(vit.module).double())
    explanation = _explain_or_unsupported(double, pixels[:2].double(), method, [1, 3])
    if explanation is None:
        return
    assert explanation.relevance.dtype == torch.float64
    assert torch.isfinite(explanation.relevance).all()
    single = explain(vit, pixels[:2], method=method, target=[1, 3])
    _close(explanation.relevance.float(), single.relevance, rtol=1e-3)


@pytest.mark.parametrize(
    "device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"))]
)
@pytest.mark.parametrize("method", METHODS)
def test_device_follows_model(vit, pixels, method: str, device: str) -> None:
    model = attnlens.as_model(copy.deepcopy(vit.module).to(device))
    explanation = _explain_or_unsupported(model, pixels[:2], method)  # CPU pixels are moved to the model
    if explanation is None:
        return
    assert explanation.relevance.device.type == device
    reference = explain(vit, pixels[:2], method=method)
    _close(explanation.relevance.cpu(), reference.relevance, rtol=1e-3)


# --------------------------------------------------------------------------- the Explanation object
@pytest.mark.parametrize("method", METHODS)
def test_explanation_api(vit, method: str) -> None:
    rng = np.random.default_rng(3)
    images = [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8), Image.fromarray(rng.integers(0, 256, (48, 40, 3), dtype=np.uint8))]
    explanation = _explain_or_unsupported(vit, images, method, [[0, 1], 2])
    if explanation is None:
        return
    assert len(explanation) == 3
    assert explanation.relevance.shape == (3, *GRID)
    assert explanation.targets.tolist() == [0, 1, 2]
    assert explanation.target_names == ["class_0", "class_1", "class_2"]
    assert explanation.options == {**get_method(method).defaults}

    pixel_map = explanation.pixel_map()
    assert pixel_map.shape == (3, 32, 32)
    expected = F.interpolate(explanation.relevance[:, None].float(), size=(32, 32), mode="bilinear", align_corners=False)[:, 0]
    torch.testing.assert_close(pixel_map, expected)
    assert explanation.pixel_map((8, 12)).shape == (3, 8, 12)

    normalized = explanation.normalized()
    assert normalized.shape == (3, *GRID)
    assert torch.isfinite(normalized).all()
    assert normalized.min() >= 0 and normalized.max() <= 1

    for how in ("otsu", "mean", 0.5, 0, 1.0):
        mask = explanation.threshold(how)
        assert mask.shape == (3, 32, 32) and mask.dtype == torch.bool
    assert explanation.threshold("mean", upsample=False).shape == (3, *GRID)
    for bad in ("median", 1.5, True):
        with pytest.raises(InputError):
            explanation.threshold(bad)

    overlays = explanation.overlay(images)
    assert len(overlays) == 3
    assert all(isinstance(o, Image.Image) and o.mode == "RGB" for o in overlays)
    assert overlays[0].size == (32, 32) and overlays[2].size == (40, 48)
    with pytest.raises(InputError):
        explanation.overlay(images[:1])


def test_overlay_refuses_images_of_other_sizes(vit, pixels, tmp_path) -> None:
    rng = np.random.default_rng(5)
    path = tmp_path / "tall.png"
    Image.fromarray(rng.integers(0, 256, (48, 40, 3), dtype=np.uint8)).save(path)
    images = [rng.integers(0, 256, (32, 36, 3), dtype=np.uint8), path]
    explanation = explain(vit, images, method="rollout")
    assert explanation.source_sizes == [(32, 36), (48, 40)]
    assert [overlay.size for overlay in explanation.overlay(images)] == [(36, 32), (40, 48)]
    with pytest.raises(InputError) as error:
        explanation.overlay([images[0], rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)])
    message = str(error.value)
    assert "\n" not in message and "image 1 is 48x40 px" in message and "was 40x48 px" in message
    with pytest.raises(InputError, match="got 1 image"):
        explanation.overlay(images[:1])
    # concatenated batches keep the sizes; a save/load round trip keeps them
    joined = Explanation.concat([explanation, explain(vit, images[:1], method="rollout")])
    assert joined.source_sizes == [(32, 36), (48, 40), (32, 36)]
    for suffix in (".safetensors", ".npz"):
        loaded = Explanation.load(joined.save(tmp_path / f"run{suffix}"))
        assert loaded.source_sizes == joined.source_sizes
        with pytest.raises(InputError, match="image 0 is 40x48 px"):
            loaded.overlay([images[1], images[1], images[0]])
    # a pixel tensor has no original size: nothing to check but the count
    from_pixels = explain(vit, pixels, method="rollout")
    assert from_pixels.source_sizes is None
    assert len(from_pixels.overlay([images[1]] * 3)) == 3
    assert Explanation.concat([explanation, from_pixels]).source_sizes is None
