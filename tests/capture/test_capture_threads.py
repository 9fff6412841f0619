"""Four threads capturing (and editing) on the same model at once each get their own records,
through either backend, and leave nothing installed behind."""

from __future__ import annotations

import threading
from collections.abc import Callable

import torch

import attnlens
from attnlens.capture import is_captured

from capture_support import assert_clean, drop_key, hook_count, processors, tiny_unet, tiny_vit, unet_inputs

THREADS = 4


def _in_threads(work: Callable[[int, threading.Barrier], object]) -> list[object]:
    """Run ``work(index, barrier)`` in ``THREADS`` threads; their results in thread order (errors re-raised)."""
    barrier = threading.Barrier(THREADS)
    results: list[object] = [None] * THREADS

    def run(index: int) -> None:
        try:
            results[index] = work(index, barrier)
        except BaseException as error:  # noqa: BLE001 - handed to the main thread
            barrier.abort()
            results[index] = error

    threads = [threading.Thread(target=run, args=(index,)) for index in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return results


def test_four_threads_capture_the_same_vit() -> None:
    model = tiny_vit("sdpa")
    before = hook_count(model)
    inputs = [torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(index)) for index in range(THREADS)]
    expected = []
    for index, pixels in enumerate(inputs):
        with torch.no_grad(), attnlens.capture_attention(model, edit=drop_key(index) if index % 2 else None) as capture:
            logits = model(pixels).logits
        expected.append((logits, capture.attentions))

    def work(index: int, barrier: threading.Barrier):
        with torch.no_grad(), attnlens.capture_attention(model, edit=drop_key(index) if index % 2 else None) as capture:
            barrier.wait()
            outputs = [model(inputs[index]).logits for _ in range(3)]
            barrier.wait()
        return outputs, capture.records

    for (outputs, records), (logits, attentions) in zip(_in_threads(work), expected):
        assert len(records) == 3 * 3
        for output in outputs:
            torch.testing.assert_close(output, logits, atol=1e-6, rtol=0)
        for record in records:
            torch.testing.assert_close(record.probs, attentions[record.layer], atol=1e-6, rtol=0)
    assert_clean(model, before)


def test_four_threads_capture_the_same_unet() -> None:
    unet = tiny_unet()
    stock = processors(unet)
    before = hook_count(unet)
    inputs = [unet_inputs(seed=index) for index in range(THREADS)]
    with torch.no_grad():
        expected = [unet(sample, 3, encoder_hidden_states=context).sample for sample, context in inputs]

    def work(index: int, barrier: threading.Barrier):
        sample, context = inputs[index]
        layers = "*.attn2" if index % 2 else "*.attn1"
        with torch.no_grad(), attnlens.capture_attention(unet, layers) as capture:
            barrier.wait()
            output = unet(sample, 3, encoder_hidden_states=context).sample
            barrier.wait()
        return output, capture.records, layers

    for (output, records, layers), stock_output in zip(_in_threads(work), expected):
        torch.testing.assert_close(output, stock_output, atol=1e-5, rtol=0)
        assert len(records) == 4 and all(record.name.endswith(layers[-5:]) and record.step == 0 for record in records)
    assert processors(unet) == stock
    assert_clean(unet, before)


def test_a_thread_without_capture_is_untouched() -> None:
    model = tiny_vit("sdpa")
    pixels = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        plain = model(pixels).logits

    def work(index: int, barrier: threading.Barrier):
        if index == 0:
            with torch.no_grad(), attnlens.capture_attention(model, edit=drop_key(0)) as capture:
                barrier.wait()
                barrier.wait()
            return capture.records
        barrier.wait()
        with torch.no_grad():
            output = model(pixels).logits
        barrier.wait()
        return output

    results = _in_threads(work)
    assert results[0] == []
    for output in results[1:]:
        torch.testing.assert_close(output, plain, atol=1e-6, rtol=0)


def test_is_captured_speaks_for_the_calling_thread_only() -> None:
    model = tiny_vit("sdpa")
    attention = model.vit.layers[0].attention

    def work(index: int, barrier: threading.Barrier):
        if index == 0:
            with attnlens.capture_attention(model, layers=0):
                barrier.wait()
                seen = is_captured(attention)
                barrier.wait()
            return seen
        barrier.wait()
        seen = is_captured(attention)
        barrier.wait()
        return seen

    assert _in_threads(work) == [True, False, False, False]
    assert not is_captured(attention)
