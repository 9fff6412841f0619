"""Guidance losses on hand-made maps: closed-form values."""

from __future__ import annotations

import math

import pytest
import torch

from attnlens.diffusion import AttendExcite, DivideBind, LossTerms, SampleAttention, SynGen
from attnlens.diffusion.losses import (
    as_loss, gaussian_kernel, jensen_shannon, peak_attention, smooth, spatial_distribution, symmetric_kl, total_variation,
)
from attnlens.diffusion.prompts import PromptTokens, Subject, Word
from attnlens.errors import InputError

# "a red ball": <sot> a red ball <eot>, positions 1..3
PROMPT = PromptTokens(
    "a red ball", (49406, 320, 736, 1069, 49407), ("<|startoftext|>", "a</w>", "red</w>", "ball</w>", "<|endoftext|>"),
    (Word("a", (1,)), Word("red", (2,)), Word("ball", (3,))), 77,
)
WORDS = {"a": (1,), "red": (2,), "ball": (3,)}


def attention(maps: dict[int, torch.Tensor], subjects: list[Subject], size: tuple[int, int] = (4, 4)) -> SampleAttention:
    probs = torch.zeros(77, *size)
    for position, values in maps.items():
        probs[position] = values
    return SampleAttention(probs.clone(), probs, subjects, PROMPT, (1, 2, 3), 0, 50, lambda word: WORDS[word])


def test_reference_kernel_and_smoothing() -> None:
    kernel = gaussian_kernel(3, 0.5)
    assert kernel.sum().item() == pytest.approx(1.0)
    assert kernel[0, 0].item() == pytest.approx(0.0449, abs=5e-5)
    assert kernel[0, 1].item() == pytest.approx(0.1221, abs=5e-5)
    assert kernel[1, 1].item() == pytest.approx(0.3319, abs=5e-5)
    assert gaussian_kernel(1, 0.5).tolist() == [[1.0]]
    constant = torch.full((2, 5, 6), 0.25)
    assert torch.allclose(smooth(constant, kernel), constant)
    spike = torch.zeros(1, 5, 5)
    spike[0, 2, 2] = 1.0
    assert torch.allclose(smooth(spike, kernel)[0, 1:4, 1:4], kernel)
    assert peak_attention(spike, kernel).item() == pytest.approx(kernel[1, 1].item())
    with pytest.raises(InputError):
        gaussian_kernel(4, 0.5)


def test_attend_and_excite_loss_is_one_minus_the_weakest_peak() -> None:
    kernel = gaussian_kernel()
    red, ball = torch.zeros(4, 4), torch.full((4, 4), 0.5)
    red[1, 2] = 1.0
    terms = AttendExcite()(attention({2: red, 3: ball}, [Subject("red", (2,)), Subject("ball", (3,))]))
    assert terms.scores.tolist() == pytest.approx([kernel[1, 1].item(), 0.5])
    assert terms.progress.item() == pytest.approx(kernel[1, 1].item())
    assert terms.loss.item() == pytest.approx(1.0 - kernel[1, 1].item())
    saturated = AttendExcite()(attention({2: torch.ones(4, 4)}, [Subject("red", (2,))]))
    assert saturated.loss.item() == 0.0


def test_a_subject_of_several_tokens_sums_their_maps() -> None:
    maps = attention({2: torch.full((4, 4), 0.25), 3: torch.full((4, 4), 0.5)}, [Subject("red ball", (2, 3))])
    assert torch.allclose(maps.subject_maps(), torch.full((1, 4, 4), 0.75))
    assert AttendExcite()(maps).loss.item() == pytest.approx(0.25)


def test_total_variation_closed_forms() -> None:
    checker = (torch.arange(4)[:, None] + torch.arange(6)[None, :]) % 2
    stripes = torch.arange(6).repeat(4, 1) % 2
    maps = torch.stack([torch.full((4, 6), 0.3), checker.float(), stripes.float()])
    assert total_variation(maps).tolist() == pytest.approx([0.0, 2.0, 1.0])


def test_divergences_closed_forms() -> None:
    p, q = torch.tensor([0.75, 0.25]), torch.tensor([0.25, 0.75])
    assert symmetric_kl(p, q).item() == pytest.approx(0.5 * math.log(3))
    assert symmetric_kl(p, p).item() == pytest.approx(0.0)
    assert jensen_shannon(p, p).item() == pytest.approx(0.0)
    assert jensen_shannon(torch.tensor([1.0, 1e-12]), torch.tensor([1e-12, 1.0])).item() == pytest.approx(math.log(2), abs=1e-6)
    assert spatial_distribution(torch.tensor([[1.0, 3.0]])).tolist() == pytest.approx([0.25, 0.75])


def test_divide_and_bind_attendance_and_binding() -> None:
    checker = ((torch.arange(4)[:, None] + torch.arange(4)[None, :]) % 2).float()
    flat = torch.full((4, 4), 0.5)
    loss = DivideBind(kernel_size=1)
    terms = loss(attention({2: flat, 3: checker}, [Subject("red", (2,)), Subject("ball", (3,))]))
    assert terms.scores.tolist() == pytest.approx([0.0, 2.0])
    assert terms.loss.item() == pytest.approx(0.0) and terms.progress.item() == pytest.approx(0.0)
    half = torch.zeros(4, 4)
    half[:, :2] = 1.0
    bound = DivideBind(pairs=[("red", "ball")], binding_weight=2.0, kernel_size=1)
    same = bound(attention({2: half, 3: half}, [Subject("ball", (3,))]))
    assert same.loss.item() == pytest.approx(-total_variation(half[None]).item(), abs=1e-6)
    apart = bound(attention({2: half, 3: 1.0 - half}, [Subject("ball", (3,))]))
    assert apart.loss.item() == pytest.approx(-total_variation(half[None]).item() + 2.0 * math.log(2), abs=1e-5)


def test_syngen_pulls_pairs_together_and_pushes_other_words_away() -> None:
    left, right = torch.tensor([[3.0, 1.0]]), torch.tensor([[1.0, 3.0]])
    loss = SynGen(pairs=[("red", "ball")])
    # red and ball agree, 'a' is elsewhere: attraction 0, repulsion ln(3)/2 from both -> loss -ln(3)/2
    terms = loss(attention({1: right, 2: left, 3: left}, [], size=(1, 2)))
    assert terms.scores.tolist() == pytest.approx([0.0], abs=1e-6)
    assert terms.loss.item() == pytest.approx(-0.5 * math.log(3), abs=1e-6)
    # red and ball disagree, 'a' like ball: attraction ln(3)/2, repulsion (ln(3)/2 + 0) / 2
    terms = loss(attention({1: left, 2: right, 3: left}, [], size=(1, 2)))
    assert terms.loss.item() == pytest.approx(0.5 * math.log(3) - 0.25 * math.log(3), abs=1e-6)
    with pytest.raises(InputError, match="SynGen needs"):
        SynGen()


def test_loss_lookup_and_plain_functions() -> None:
    assert isinstance(as_loss(None), AttendExcite)
    assert as_loss("divide_and_bind", sigma=1.0).sigma == 1.0
    custom = as_loss(lambda maps: maps.probs.sum())
    assert custom.name == "<lambda>" and dict(custom.default_thresholds) == {}
    assert isinstance(custom(attention({1: torch.ones(4, 4)}, [])), torch.Tensor)
    with pytest.raises(InputError, match="unknown guidance loss"):
        as_loss("nope")
    assert LossTerms(torch.tensor(1.0)).progress is None
