"""The LRP engine: functional forward parity with the model, relevance rules, conservation and
AttnLRP invariants, on tiny random models of every supported family."""

from __future__ import annotations

import dataclasses
import threading

import pytest
import torch
import torch.nn.functional as F
import transformers
from torch import nn

import attnlens
from attnlens.errors import UnsupportedModelError
from attnlens.explainers import explain
from attnlens.explainers.base import ExplainContext
from attnlens.attribution import lrp_rules as rules
from attnlens.explainers.lrp.functional import AttnLRPOps, Record, forward
from attnlens.explainers.lrp.relprop import Rows, head_relprop
from attnlens.explainers.lrp.seeds import LOGITS, TOKENS, resolve_seeds
from attnlens.explainers.lrp.spec import Spec, ThreadHook, build_spec

TINY = dict(hidden_size=32, num_attention_heads=4, intermediate_size=64, image_size=32, patch_size=8)
LABELS = dict(num_labels=5, id2label={i: f"class_{i}" for i in range(5)}, label2id={f"class_{i}": i for i in range(5)})
LRP_METHODS = ("lrp", "partial_lrp", "transformer_attribution", "lrp_rollout", "attnlrp")


def _perturbed(module: nn.Module, seed: int = 0) -> nn.Module:
    """Randomise every parameter a little (zero-initialised tables, layer scales, biases...)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.add_(0.1 * torch.randn(parameter.shape, generator=generator))
    return module.eval()


def _build(kind: str) -> nn.Module:
    torch.manual_seed(0)
    if kind == "vit":
        model = transformers.ViTForImageClassification(transformers.ViTConfig(**TINY, num_hidden_layers=2, **LABELS))
    elif kind == "vit_backbone":
        model = transformers.ViTModel(transformers.ViTConfig(**TINY, num_hidden_layers=2))
    elif kind == "deit_teacher":
        model = transformers.DeiTForImageClassificationWithTeacher(transformers.DeiTConfig(**TINY, num_hidden_layers=2, **LABELS))
    elif kind == "beit_mean_relative":
        config = transformers.BeitConfig(**TINY, num_hidden_layers=2, use_mean_pooling=True, use_relative_position_bias=True, **LABELS)
        model = transformers.BeitForImageClassification(config)
    elif kind == "beit_cls_shared":
        config = transformers.BeitConfig(
            **TINY, num_hidden_layers=2, use_mean_pooling=False, use_shared_relative_position_bias=True,
            use_absolute_position_embeddings=True, **LABELS,
        )
        model = transformers.BeitForImageClassification(config)
    elif kind == "dinov2":
        config = transformers.Dinov2Config(hidden_size=32, num_attention_heads=4, mlp_ratio=2, image_size=32, patch_size=8, num_hidden_layers=2, **LABELS)
        model = transformers.Dinov2ForImageClassification(config)
    elif kind == "dinov2_registers":
        config = transformers.Dinov2WithRegistersConfig(
            hidden_size=32, num_attention_heads=4, mlp_ratio=2, image_size=32, patch_size=8, num_hidden_layers=2,
            num_register_tokens=2, **LABELS,
        )
        model = transformers.Dinov2WithRegistersForImageClassification(config)
    elif kind == "dinov2_registers_backbone":
        config = transformers.Dinov2WithRegistersConfig(
            hidden_size=32, num_attention_heads=4, mlp_ratio=2, image_size=32, patch_size=8, num_hidden_layers=2, num_register_tokens=2
        )
        model = transformers.Dinov2WithRegistersModel(config)
    elif kind == "clip_vision":
        model = transformers.CLIPVisionModel(transformers.CLIPVisionConfig(**TINY, num_hidden_layers=2))
    else:
        raise KeyError(kind)
    return _perturbed(model)


_models: dict[str, attnlens.AttnLensModel] = {}


def _model(kind: str) -> attnlens.AttnLensModel:
    if kind not in _models:
        _models[kind] = attnlens.as_model(_build(kind))
    return _models[kind]


def _pixels(size=(32, 32), batch: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, 3, *size, generator=torch.Generator().manual_seed(seed))


def _context(model, pixels, target=None) -> ExplainContext:
    return ExplainContext(model, pixels, target, {})


def _functional(model, pixels, **kwargs) -> tuple[Spec, Record]:
    context = _context(model, pixels)
    spec = build_spec(model, pixels, context.layout)
    with torch.no_grad():
        record = forward(model, spec, pixels, **kwargs)
    return spec, record


# --------------------------------------------------------------------------- forward parity
CLASSIFIERS = ["vit", "deit_teacher", "beit_mean_relative", "beit_cls_shared", "dinov2", "dinov2_registers"]
BACKBONES = ["vit_backbone", "dinov2_registers_backbone", "clip_vision"]


@pytest.mark.parametrize("size", [(32, 32), (32, 48)], ids=["square", "non_square"])
@pytest.mark.parametrize("kind", CLASSIFIERS + BACKBONES)
def test_functional_forward_gives_the_model_output(kind: str, size) -> None:
    """Classifiers: the model's logits; backbones: its last hidden states (before any final norm)."""
    model = _model(kind)
    pixels = _pixels(size)
    _, record = _functional(model, pixels)
    with torch.no_grad():
        if kind in CLASSIFIERS:
            got, expected = record.logits, model(pixels).logits
        else:
            got, expected = record.final, model(pixels, output_hidden_states=True).hidden_states[-1]
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_first_block_input_without_an_embeddings_module() -> None:
    """Adapters without an embeddings path: the first block's input is read from the model."""
    model = _model("vit")
    pixels = _pixels()
    encoder = model.family.encoder()
    flat = attnlens.as_model(model.module)
    flat.family = dataclasses.replace(model.family, encoders=(dataclasses.replace(encoder, embeddings=None),))
    _, record = _functional(flat, pixels)
    _, expected = _functional(model, pixels)
    torch.testing.assert_close(record.logits, expected.logits, atol=1e-6, rtol=0)
    torch.testing.assert_close(
        explain(flat, pixels, method="attnlrp").relevance, explain(model, pixels, method="attnlrp").relevance
    )
    with pytest.raises(UnsupportedModelError, match="embeddings"):
        explain(flat, pixels, method="lrp")


# --------------------------------------------------------------------------- refusals
def test_models_with_forward_hooks_are_refused() -> None:
    model = _model("vit")
    handle = model.family.encoder().block_modules(model.module)[0].mlp.register_forward_hook(lambda *args: None)
    try:
        for method in LRP_METHODS:
            with pytest.raises(UnsupportedModelError, match="hooks"):
                explain(model, _pixels(), method=method)
    finally:
        handle.remove()


def test_hooks_acting_only_in_other_threads_are_not_refused() -> None:
    """A capture open in another thread, and LRP's own thread-scoped hooks of another call, leave this
    thread's forward passes alone: LRP runs and gives the same result. A capture open in this thread
    would be bypassed: refused."""
    model = _model("vit")
    pixels = _pixels()
    target = lambda out: out.logits[:, 1]  # noqa: E731 (the model's own forward runs too)
    expected = {method: explain(model, pixels, method=method, target=target).relevance for method in LRP_METHODS}
    ready, done = threading.Event(), threading.Event()

    def other_thread() -> None:
        last = model.family.encoder().block_modules(model.module)[-1]
        with attnlens.capture_attention(model):
            handle = last.register_forward_hook(ThreadHook(lambda module, args, output: torch.zeros_like(output[0])))
            ready.set()
            done.wait(timeout=60)
            handle.remove()

    worker = threading.Thread(target=other_thread)
    worker.start()
    try:
        assert ready.wait(timeout=60)
        for method in LRP_METHODS:
            torch.testing.assert_close(explain(model, pixels, method=method, target=target).relevance, expected[method], rtol=0, atol=0)
    finally:
        done.set()
        worker.join()
    with attnlens.capture_attention(model), pytest.raises(UnsupportedModelError, match="hooks"):
        explain(model, pixels, method="lrp")


def test_gated_mlp_is_refused() -> None:
    config = transformers.Dinov2Config(hidden_size=32, num_attention_heads=4, image_size=32, patch_size=8, num_hidden_layers=1, use_swiglu_ffn=True)
    model = attnlens.as_model(transformers.Dinov2Model(config).eval())
    for method in LRP_METHODS:
        with pytest.raises(UnsupportedModelError, match="MLP"):
            explain(model, _pixels(), method=method, target=lambda out: out.pooler_output[:, 0])


def test_attention_pooling_readout_is_refused() -> None:
    """SigLIP's vision tower pools its tokens with a learned probe query: the LRP family says so."""
    vision = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4, image_size=32, patch_size=8)
    text = dict(vocab_size=10, hidden_size=32, intermediate_size=48, num_hidden_layers=1, num_attention_heads=4)
    model = attnlens.as_model(transformers.SiglipModel(transformers.SiglipConfig(text_config=text, vision_config=vision)).eval())
    for method in LRP_METHODS:
        with pytest.raises(UnsupportedModelError, match="attention-pooling head") as info:
            explain(model, _pixels(), method=method, target=lambda out: out.pooler_output[:, 0])
        assert "\n" not in str(info.value)


# --------------------------------------------------------------------------- Chefer's rules
def test_safe_divide_matches_the_reference_definition() -> None:
    a = torch.tensor([1.0, 2.0, 3.0, -1.0])
    b = torch.tensor([2.0, 0.0, -4.0, 1e-12])
    reference = a / (b.clamp(min=1e-9) + b.clamp(max=1e-9)) * b.ne(0)
    torch.testing.assert_close(rules.safe_divide(a, b), reference)


def test_linear_alpha1_beta0_forms_agree_and_conserve() -> None:
    torch.manual_seed(0)
    x = torch.randn(3, 7, 16, dtype=torch.float64)
    weight = torch.randn(24, 16, dtype=torch.float64)
    relevance = torch.randn(3, 7, 24, dtype=torch.float64)
    direct = rules.linear_alpha1_beta0(x, relevance, *rules.split_signs(weight))
    fast = rules.linear_alpha1_beta0_from_product(x, relevance, F.linear(x, weight), weight, weight.abs())
    torch.testing.assert_close(fast, direct)
    # every z+ > 0 here, so the rule is conservative up to the 1e-9 stabiliser
    torch.testing.assert_close(direct.sum(-1), relevance.sum(-1), atol=1e-6, rtol=1e-6)


def test_add_and_clone_rules_conserve_per_row() -> None:
    torch.manual_seed(1)
    a, b, relevance = (torch.randn(4, 5, 6, dtype=torch.float64) for _ in range(3))
    share_a, share_b = rules.add_rule(a, b, relevance)
    torch.testing.assert_close(share_a.sum((1, 2)) + share_b.sum((1, 2)), relevance.sum((1, 2)))
    ratio = share_a.sum((1, 2)).abs() / share_b.sum((1, 2)).abs()
    expected = (a * relevance / (a + b)).sum((1, 2)).abs() / (b * relevance / (a + b)).sum((1, 2)).abs()
    torch.testing.assert_close(ratio, expected)
    # x ⊙ Σ R_i / (x + 1e-9): the sum, up to the stabiliser
    torch.testing.assert_close(rules.clone_rule(a, share_a, share_b), share_a + share_b, rtol=1e-5, atol=1e-6)


def test_conv_zb_rule_conserves() -> None:
    torch.manual_seed(2)
    conv = nn.Conv2d(3, 8, 4, stride=4).double()
    pixels = torch.randn(2, 3, 12, 16, dtype=torch.float64)
    relevance = torch.randn(2, 8, 3, 4, dtype=torch.float64)
    result = rules.conv_zb_rule(pixels, relevance, conv)
    assert result.shape == pixels.shape
    torch.testing.assert_close(result.sum((1, 2, 3)), relevance.sum((1, 2, 3)))


@pytest.mark.parametrize("kind", CLASSIFIERS)
def test_head_relprop_conserves_the_unit_start(kind: str) -> None:
    """From the one-hot start at the logits to the final tokens, Chefer's rules conserve relevance."""
    model = _model(kind)
    pixels = _pixels()
    context = _context(model, pixels)
    spec, record = _functional(model, pixels)
    start = resolve_seeds(context, spec, record)
    relevance = head_relprop(spec, record, start.values, Rows(start.input_index, 2))
    assert relevance.shape == record.final.shape
    torch.testing.assert_close(relevance.sum((1, 2)), torch.ones(2), atol=1e-4, rtol=0)


def test_patch_relevance_is_the_pixel_relevance_per_patch() -> None:
    model = _model("deit_teacher")
    explanation = explain(model, _pixels((32, 48)), method="lrp")
    pixel_relevance = explanation.extras["pixel_relevance"]
    assert pixel_relevance.shape == (2, 32, 48)
    sums = pixel_relevance.reshape(2, 4, 8, 6, 8).sum(dim=(2, 4))
    torch.testing.assert_close(explanation.relevance, sums)


def test_callable_targets_start_where_they_should() -> None:
    # classifier: the gradient w.r.t. the logits, i.e. the one-hot vector for a logit
    model = _model("vit")
    pixels = _pixels()
    context = _context(model, pixels, target=lambda out: out.logits[:, 2])
    spec, record = _functional(model, pixels)
    start = resolve_seeds(context, spec, record)
    assert start.kind == LOGITS
    torch.testing.assert_close(start.values, F.one_hot(torch.tensor([2, 2]), 5).float())
    # backbone: gradient at the final tokens (through the model's own final norm)
    model = _model("vit_backbone")
    context = _context(model, pixels, target=lambda out: out.last_hidden_state[:, 0, 3])
    spec, record = _functional(model, pixels)
    start = resolve_seeds(context, spec, record)
    assert start.kind == TOKENS
    final = record.final.detach().requires_grad_(True)
    norm = model.module.layernorm
    (expected,) = torch.autograd.grad(norm(final)[:, 0, 3].sum(), final)
    torch.testing.assert_close(start.values, expected)


# --------------------------------------------------------------------------- AttnLRP
def _zero_biases(module: nn.Module) -> nn.Module:
    with torch.no_grad():
        for sub in module.modules():
            if isinstance(sub, (nn.Linear, nn.LayerNorm)) and sub.bias is not None:
                sub.bias.zero_()
    return module


@pytest.mark.parametrize("kind", ["vit", "dinov2_registers", "deit_teacher"])
def test_attnlrp_conservation(kind: str) -> None:
    """Without biases and with ε=0, AttnLRP is conservative except at the softmax.

    Closed form: Σ R(embeddings) = logit − Σ_l [Σ R(A_l) − Σ R(scores_l)], with the softmax rule
    R(scores)_i = x_i (R(A)_i − A_i Σ_j R(A)_j). That rule is invariant to a per-row shift of x,
    so x = log A is used.
    """
    model = attnlens.as_model(_zero_biases(_build(kind)).double())
    pixels = _pixels().double()
    context = _context(model, pixels)
    spec = build_spec(model, pixels, context.layout)
    record = forward(model, spec, pixels, ops=AttnLRPOps(0.0), embeddings_leaf=True)
    classes = record.logits.argmax(-1)
    targets = record.logits[torch.arange(2), classes]
    gradients = torch.autograd.grad(targets.sum(), [record.embeddings, *record.attentions])
    total = (record.embeddings * gradients[0]).sum((1, 2))
    absorbed = torch.zeros(2, dtype=torch.float64)
    for attention, gradient in zip(record.attentions, gradients[1:]):
        relevance = attention * gradient
        scores = attention.log()
        into_scores = scores * (relevance - attention * relevance.sum(-1, keepdim=True))
        absorbed += (relevance.sum((1, 2, 3)) - into_scores.sum((1, 2, 3))).detach()
    torch.testing.assert_close(total.detach(), (targets - absorbed).detach(), atol=1e-9, rtol=1e-9)
    # and the method reports the patch part of the same relevance
    explanation = explain(model, pixels, method="attnlrp", epsilon=0.0)
    patches = context.layout.patches((record.embeddings * gradients[0]).sum(-1), dim=-1)
    torch.testing.assert_close(explanation.relevance, context.layout.to_grid(patches.detach()))


def _linear_mean_pooled_model() -> attnlens.AttnLensModel:
    """BEiT with mean pooling whose blocks are identities and whose pooling norm is removed:
    logits = W · mean(patch embeddings) + b."""
    module = _build("beit_mean_relative")
    with torch.no_grad():
        for layer in module.beit.layers:
            for linear in (layer.attention.o_proj, layer.mlp.fc2):
                linear.weight.zero_()
                linear.bias.zero_()
    module.beit.pooler.layernorm = nn.Identity()
    return attnlens.as_model(module.double())


def test_attnlrp_closed_form_on_a_linear_model() -> None:
    model = _linear_mean_pooled_model()
    pixels = _pixels().double()
    explanation = explain(model, pixels, method="attnlrp", target=[1, 3], epsilon=0.0)
    with torch.no_grad():
        embeddings = model.module.beit.embeddings(pixels)[:, 1:]  # (2, 16, D)
    weight = model.module.classifier.weight
    expected = torch.stack([embeddings[0] @ weight[1], embeddings[1] @ weight[3]]) / 16
    torch.testing.assert_close(explanation.relevance.reshape(2, 16), expected)
    # sign: patches that raise the logit are positive, the others negative
    assert torch.equal(explanation.relevance.reshape(2, 16) > 0, expected > 0)


def test_attnlrp_is_local_without_token_mixing() -> None:
    """Without attention mixing (zero values) and with a linear mean-pooled head, a patch's AttnLRP
    relevance depends on that patch only: changing one patch changes only its relevance."""
    module = _build("beit_mean_relative")
    with torch.no_grad():
        for layer in module.beit.layers:
            layer.attention.v_proj.weight.zero_()
            layer.attention.v_proj.bias.zero_()
    module.beit.pooler.layernorm = nn.Identity()
    model = attnlens.as_model(module)
    pixels = _pixels(batch=1)
    changed = pixels.clone()
    changed[..., :8, 8:16] += 1.0  # patch (0, 1)
    # ε = 0: the ε-rule at the classifier scales every patch by logit / (logit + ε), a global factor
    before = explain(model, pixels, method="attnlrp", target=2, epsilon=0.0).relevance[0]
    after = explain(model, changed, method="attnlrp", target=2, epsilon=0.0).relevance[0]
    difference = (after - before).abs() > 1e-6 * before.abs().max()
    expected = torch.zeros(4, 4, dtype=torch.bool)
    expected[0, 1] = True
    assert torch.equal(difference, expected)
    # the attention carries no relevance at all: the attention-relevance maps are empty
    assert explain(model, pixels, method="partial_lrp", target=2).relevance.abs().max() == 0


def test_attnlrp_rules_are_the_paper_rules() -> None:
    torch.manual_seed(3)
    x = torch.randn(2, 5, 6, dtype=torch.float64, requires_grad=True)
    upstream = torch.randn(2, 5, 6, dtype=torch.float64)
    # softmax: R_x = x (R_s - s Σ R_s) with R_s = s ⊙ ĝ
    s = torch.softmax(x, -1)
    (gradient,) = torch.autograd.grad(s, x, upstream)
    r_s = s * upstream
    torch.testing.assert_close(x * gradient, x * (r_s - s * r_s.sum(-1, keepdim=True)))
    # identity rule for activations: x ⊙ ĝ_x = y ⊙ ĝ_y
    y = rules.IdentityRule.apply(x, F.gelu)
    (gradient,) = torch.autograd.grad(y, x, upstream)
    torch.testing.assert_close(x * gradient, y * upstream)
    # layer norm with frozen scale: conservative up to the bias
    norm = nn.LayerNorm(6).double()
    with torch.no_grad():
        norm.weight.normal_()
        norm.bias.normal_()
    y = rules.LayerNormIdentity.apply(x, (6,), norm.weight, norm.bias, norm.eps)
    torch.testing.assert_close(y, norm(x))
    (gradient,) = torch.autograd.grad(y, x, upstream)
    torch.testing.assert_close((x * gradient).sum(-1), ((y - norm.bias) * upstream).sum(-1))
    # uniform rule for a product of two activations: half each, conservative
    a = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    b = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    left, right = AttnLRPOps.bilinear(a, b)
    out = left @ right
    grad_out = torch.randn(3, 5, dtype=torch.float64)
    grad_a, grad_b = torch.autograd.grad(out, (a, b), grad_out)
    torch.testing.assert_close((a * grad_a).sum() + (b * grad_b).sum(), (out * grad_out).sum())
    torch.testing.assert_close((a * grad_a).sum(), (b * grad_b).sum())
    # ε-rule: R_x = x ⊙ Wᵀ (R_y / (y + ε sign y))
    weight = torch.randn(7, 6, dtype=torch.float64)
    bias = torch.randn(7, dtype=torch.float64)
    y = rules.EpsilonLinear.apply(x, weight, bias, 0.5)
    (gradient,) = torch.autograd.grad(y, x, upstream[..., :1].expand(2, 5, 7))
    r_y = y * upstream[..., :1]
    expected = x * ((r_y / (y + 0.5 * torch.where(y >= 0, 1.0, -1.0))) @ weight)
    torch.testing.assert_close(x * gradient, expected)


# --------------------------------------------------------------------------- engine behaviour
def test_several_targets_reuse_one_forward_and_match_single_calls() -> None:
    model = _model("dinov2_registers")
    pixels = _pixels(batch=2)
    for method in LRP_METHODS:
        several = explain(model, pixels, method=method, target=[[0, 3], 1])
        for row, (image, target) in enumerate([(0, 0), (0, 3), (1, 1)]):
            single = explain(model, pixels[image : image + 1], method=method, target=target)
            scale = float(single.relevance.abs().max()) or 1.0
            torch.testing.assert_close(several.relevance[row], single.relevance[0], atol=1e-5 * scale, rtol=0)


def test_absolute_weight_cache_lives_on_the_wrapper_and_follows_weight_changes() -> None:
    model = attnlens.as_model(_build("vit"))
    pixels = _pixels()
    layout = model.token_layout(pixels)

    def absolute_fc1(wrapper):
        return build_spec(wrapper, pixels, layout).blocks[1].fc1.absolute()

    before = explain(model, pixels, method="lrp_rollout", target=1).relevance
    cached = absolute_fc1(model)
    assert absolute_fc1(model) is cached  # kept between calls, on this wrapper
    other = attnlens.as_model(model.module)
    assert absolute_fc1(other) is not cached  # another wrapper has its own cache
    weight = model.module.vit.layers[1].mlp.fc1.weight
    with torch.no_grad():
        weight.mul_(2)  # in place: same storage, new version
    recomputed = absolute_fc1(model)
    assert recomputed is not cached
    torch.testing.assert_close(recomputed, weight.detach().abs())
    after = explain(model, pixels, method="lrp_rollout", target=1).relevance
    fresh = explain(attnlens.as_model(model.module), pixels, method="lrp_rollout", target=1).relevance
    torch.testing.assert_close(after, fresh)
    assert not torch.allclose(before, after)
