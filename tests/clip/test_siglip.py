"""SigLIP (Hugging Face ``SiglipModel``) in the CLIP explanations: a tiny random model saved and
loaded with :func:`attnlens.load`, checked against the model's logits and against an independent
step-by-step computation of the generic rule on the eager-attention model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import attnlens
from attnlens.capture.recorder import patches_installed
from attnlens.clip import explain_clip, explain_image_similarity

torch.set_num_threads(1)

WORDS = ["</s>", "<unk>", "a", "photo", "of", "dog", "cat", "red", "square", "blue", "circle"]
CONTEXT = 8
TEXTS = ["a photo of a dog", "red square", "a blue circle"]


@pytest.fixture(scope="module")
def siglip_dir(tmp_path_factory):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast, SiglipConfig, SiglipModel
    from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

    torch.manual_seed(0)
    # SigLIP-like tokenizer (SiglipTokenizer needs sentencepiece): no start token, "</s>" appended,
    # padding with "</s>" too.
    tokenizer = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 0)])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, eos_token="</s>", pad_token="</s>", unk_token="<unk>", model_max_length=CONTEXT
    )
    config = SiglipConfig(
        text_config=dict(
            vocab_size=len(WORDS), hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
            max_position_embeddings=CONTEXT, pad_token_id=0, eos_token_id=0, bos_token_id=None,
        ),
        vision_config=dict(
            hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4, image_size=32, patch_size=8
        ),
    )
    model = SiglipModel(config).eval()
    with torch.no_grad():  # make the pooling head and the logit parameters non-trivial
        model.logit_scale.fill_(1.3)
        model.logit_bias.fill_(-0.7)
    path = tmp_path_factory.mktemp("siglip")
    model.save_pretrained(path)
    fast.save_pretrained(path)
    SiglipImageProcessorPil(size={"height": 32, "width": 32}).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def siglip(siglip_dir):
    return attnlens.load(siglip_dir)


@pytest.fixture(scope="module")
def images() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (40, 48, 3), dtype=np.uint8) for _ in range(2)]


def _logits_per_image(model, images, texts) -> torch.Tensor:
    pixels = model.preprocess(images)
    ids = model.tokenizer(texts, padding="max_length", max_length=CONTEXT, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        return model.module(input_ids=ids, pixel_values=pixels).logits_per_image


def test_load_layout_and_tokens(siglip) -> None:
    assert siglip.family.name == "hf-siglip"
    assert siglip.tokenizer is not None
    layout = siglip.token_layout()
    assert layout.num_prefix_tokens == 0 and layout.grid == (4, 4) and layout.num_tokens == 16
    assert not layout.has_cls
    explanation = explain_clip(siglip, np.zeros((32, 32, 3), np.uint8), TEXTS)
    assert explanation.tokens[:3] == [["a", "photo", "of", "a", "dog"], ["red", "square"], ["a", "blue", "circle"]]
    assert [len(r) for r in explanation.text_relevance[:3]] == [5, 2, 3]


def test_scores_are_logits_per_image(siglip, images) -> None:
    explanation = explain_clip(siglip, images, TEXTS)
    expected = _logits_per_image(siglip, images, TEXTS)
    torch.testing.assert_close(explanation.logits, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(explanation.scores, expected.flatten(), atol=1e-5, rtol=1e-5)


def test_batch_equals_single_pairs(siglip, images) -> None:
    grid = explain_clip(siglip, images, TEXTS, image_start_layer=0, text_start_layer=0)
    assert grid.image_relevance.shape == (6, 4, 4)
    for pair, (image, text) in enumerate(grid.pairs):
        single = explain_clip(siglip, images[image], TEXTS[text], image_start_layer=0, text_start_layer=0)
        torch.testing.assert_close(grid.image_relevance[pair], single.image_relevance[0], atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(grid.text_relevance[pair], single.text_relevance[0], atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(grid.scores[pair], single.scores[0], atol=1e-6, rtol=1e-5)
        assert grid.tokens[pair] == single.tokens[0]
    assert float(grid.image_relevance.abs().sum()) > 0


def _reference(model_dir, pixels: torch.Tensor, ids: torch.Tensor, stop: int) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Generic rule for one (image, text) pair, all layers, written out step by step."""
    from transformers import SiglipModel

    model = SiglipModel.from_pretrained(model_dir, attn_implementation="eager").eval()
    vision, text = model.vision_model, model.text_model
    v_out = vision(pixel_values=pixels, output_attentions=True)
    t_out = text(input_ids=ids, output_attentions=True)
    v_attn, t_attn = list(v_out.attentions), list(t_out.attentions)
    for attention in v_attn + t_attn:
        attention.retain_grad()
    # the attention-pooling head, by hand: probe query over the final tokens
    head = vision.head
    x = v_out.last_hidden_state  # (1, T, D), after post_layernorm
    dim, heads = x.shape[-1], head.attention.num_heads
    w_q, w_k, w_v = head.attention.in_proj_weight.chunk(3)
    b_q, b_k, b_v = head.attention.in_proj_bias.chunk(3)
    split = lambda t: t.reshape(1, -1, heads, dim // heads).transpose(1, 2)  # noqa: E731
    q, k, v = split(head.probe @ w_q.T + b_q), split(x @ w_k.T + b_k), split(x @ w_v.T + b_v)
    pool = torch.softmax(q @ k.transpose(-1, -2) / (dim // heads) ** 0.5, dim=-1)  # (1, H, 1, T)
    pool.retain_grad()
    attended = head.attention.out_proj((pool @ v).transpose(1, 2).reshape(1, 1, dim))
    image_embedding = (attended + head.mlp(head.layernorm(attended)))[:, 0]
    torch.testing.assert_close(image_embedding, v_out.pooler_output)
    text_embedding = t_out.pooler_output
    cosine = torch.nn.functional.cosine_similarity(image_embedding, text_embedding)[0]
    score = model.logit_scale.exp()[0] * cosine + model.logit_bias[0]
    score.backward()

    def rule(attentions):
        tokens = attentions[0].shape[-1]
        relevance = torch.eye(tokens)
        for attention in attentions:
            weighted = (attention.grad[0] * attention.detach()[0]).clamp(min=0).mean(dim=0)
            relevance = relevance + weighted @ relevance
        return relevance

    image_row = (pool.grad[0] * pool.detach()[0]).clamp(min=0).mean(dim=0)[0] @ rule(v_attn)
    text_row = rule(t_attn)[-1, :stop]
    return image_row.detach(), text_row.detach(), float(score.detach())


def test_matches_manual_reference(siglip, siglip_dir, images) -> None:
    explanation = explain_clip(siglip, images, TEXTS[:2], image_start_layer=0, text_start_layer=0)
    pixels = siglip.preprocess(images)
    ids = siglip.tokenizer(TEXTS[:2], padding="max_length", max_length=CONTEXT, return_tensors="pt")["input_ids"]
    for pair, (image, text) in enumerate(explanation.pairs):
        stop = int((ids[text] == 0).int().argmax())  # first "</s>"
        image_row, text_row, score = _reference(siglip_dir, pixels[image : image + 1], ids[text : text + 1], stop)
        torch.testing.assert_close(explanation.image_relevance[pair].flatten(), image_row, atol=1e-6, rtol=1e-4)
        torch.testing.assert_close(explanation.text_relevance[pair], text_row, atol=1e-6, rtol=1e-4)
        assert abs(float(explanation.scores[pair]) - score) < 1e-5


def test_model_left_clean(siglip, images) -> None:
    module = siglip.module
    explain_clip(siglip, images, TEXTS[:1])
    explain_image_similarity(siglip, images[0], images[1])
    assert not patches_installed()
    assert not module.training
    for sub in module.modules():
        assert not sub._forward_hooks and not sub._forward_pre_hooks
    assert all(p.grad is None for p in module.parameters())


def test_image_similarity(siglip, images) -> None:
    result = explain_image_similarity(siglip, images[0], images)
    assert result.relevance_a.shape == (2, 4, 4) and result.relevance_b.shape == (2, 4, 4)
    assert abs(float(result.scores[0]) - 1.0) < 1e-5  # the same image twice
    pixels = siglip.preprocess(images)
    with torch.no_grad():
        features = siglip.module.get_image_features(pixel_values=pixels).pooler_output
    expected = torch.nn.functional.cosine_similarity(features[0:1], features[1:2])[0]
    assert abs(float(result.scores[1]) - float(expected)) < 1e-5


@pytest.mark.parametrize("method", ["rollout", "generic"])
def test_explain_vision_tower(siglip, images, method) -> None:
    explanation = attnlens.explain(siglip, images, method=method, target=lambda output: output.pooler_output.sum(-1))
    assert explanation.relevance.shape == (2, 4, 4)
    assert torch.isfinite(explanation.relevance).all()
