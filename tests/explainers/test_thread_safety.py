"""Several threads explaining with one model at once (what a web server does) get exactly the
results of single-threaded calls, and the model is left as it was."""

from __future__ import annotations

import threading

import torch
from transformers import ViTForImageClassification

import attnlens
from attnlens.capture import patches_installed
from attnlens.explainers import explain, methods

from conftest import tiny_vit_config

THREADS = 4
CALLS = 25


def _model() -> attnlens.AttnLensModel:
    """A tiny ViT with dropout: a thread that switched the model back to training mode while another
    explains would change that one's result."""
    torch.manual_seed(0)
    config = tiny_vit_config(hidden_dropout_prob=0.3, attention_probs_dropout_prob=0.3)
    return attnlens.as_model(ViTForImageClassification(config))


def _job(number: int) -> tuple[str, int, object]:
    """Call ``number``: a method of the registry, images and a target that vary with the number."""
    names = sorted(methods())
    method = names[number % len(names)]
    target = None if number % 3 else [number % 5, (number + 1) % 5]
    return method, number % 2, target


def _pixels(seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(2, 3, 32, 32, generator=generator)


def test_four_threads_times_25_calls_equal_the_sequential_results() -> None:
    model = _model()
    model.module.train()  # explanations switch to eval mode and back; concurrent calls must agree
    jobs = [_job(number) for number in range(THREADS * CALLS)]
    expected = [explain(model, _pixels(seed), method=method, target=target).relevance for method, seed, target in jobs]
    results: dict[int, torch.Tensor] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(THREADS)

    def worker(offset: int) -> None:
        try:
            start.wait()
            for number in range(offset, len(jobs), THREADS):
                method, seed, target = jobs[number]
                results[number] = explain(model, _pixels(seed), method=method, target=target).relevance
        except BaseException as error:  # reported below, with the thread's traceback
            errors.append(error)

    threads = [threading.Thread(target=worker, args=(offset,)) for offset in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors[0]
    assert sorted(results) == list(range(len(jobs)))
    for number, relevance in results.items():
        torch.testing.assert_close(relevance, expected[number], rtol=0, atol=0, msg=f"call {number}: {jobs[number][0]}")
    assert model.module.training, "the model's training mode must be restored"
    assert not patches_installed()
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.module.modules())
    assert all(p.grad is None for p in model.module.parameters())
