"""``attnlens.load``: models from the Hugging Face hub, local folders, timm, or the embedded default.

Weights load from safetensors without unpickling. A checkpoint that exists only in a pickle
format (``pytorch_model.bin``, ``.pt``) is refused with an explanation unless the caller passes
``allow_pickle=True``, because unpickling an untrusted file can run arbitrary code.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from torch import nn

from attnlens.errors import ModelLoadError, UnsafeCheckpointError
from attnlens.model import AttnLensModel, as_model, family_of
from attnlens.processors import default_processor, resize_normalize_processor

DEFAULT_MODEL = "default"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def default_model_path() -> Path:
    """Folder of the embedded default model shipped inside the package."""
    return Path(str(resources.files("attnlens") / "assets" / "default_model"))


def sample_images_path() -> Path:
    """Folder of the bundled sample images."""
    return Path(str(resources.files("attnlens") / "assets" / "samples"))


def sample_images() -> list[Path]:
    return sorted(sample_images_path().glob("*.png"))


def _check_folder(folder: Path, allow_pickle: bool) -> None:
    """Refuse missing, partial or pickle-only model folders with a message naming the fix."""
    if not (folder / "config.json").is_file():
        raise ModelLoadError(f"{folder}: not a model folder (config.json is missing)")
    try:
        json.loads((folder / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ModelLoadError(f"{folder / 'config.json'}: unreadable or invalid JSON ({error})") from None
    safetensors = sorted(folder.glob("*.safetensors"))
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        shards = set(json.loads(index.read_text()).get("weight_map", {}).values())
        missing = sorted(shard for shard in shards if not (folder / shard).is_file())
        if missing:
            raise ModelLoadError(f"{folder}: partial model folder, missing weight shard(s) {missing}")
        return
    if safetensors:
        return
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles and not allow_pickle:
        raise UnsafeCheckpointError(
            f"{folder}: weights exist only as pickle file(s) {pickles}; loading them can execute arbitrary "
            "code. Convert them to safetensors, or pass allow_pickle=True (CLI: --allow-pickle) if you trust "
            "the file"
        )
    if not pickles:
        raise ModelLoadError(f"{folder}: partial model folder, no weight file (model.safetensors) found")


def _model_class(config) -> type:
    import transformers

    for name in getattr(config, "architectures", None) or []:
        cls = getattr(transformers, name, None)
        if cls is not None:
            return cls
    return transformers.AutoModel


_HUB_ID = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*(/[A-Za-z0-9_][A-Za-z0-9_.-]*)?$")


def _check_missing_folder(source: str) -> None:
    """A source that is no existing path and cannot be a hub id is a missing local folder: say so,
    instead of the hub client's repo-id rules."""
    if _HUB_ID.match(source) and not source.endswith((".", "-")):
        return
    raise ModelLoadError(
        f"{source}: no such folder; pass an existing folder written by save_pretrained, a hub id such as "
        "'google/vit-base-patch16-224', 'timm:NAME' or 'default'"
    )


def _load_hf(source: str, allow_pickle: bool, options: dict[str, Any]) -> AttnLensModel:
    import transformers

    local = Path(source).expanduser()
    is_local = local.exists()
    if is_local:
        _check_folder(local, allow_pickle)
        source = str(local)
    else:
        _check_missing_folder(source)
    hub_kwargs = {k: options.pop(k) for k in ("revision", "token", "cache_dir", "local_files_only") if k in options}
    try:
        config = transformers.AutoConfig.from_pretrained(source, **hub_kwargs)
        cls = _model_class(config)
        with _quiet_progress():
            module, info = cls.from_pretrained(
                source,
                config=config,
                use_safetensors=None if allow_pickle else True,
                output_loading_info=True,
                **hub_kwargs,
                **options,
            )
    except (OSError, ValueError, KeyError, EnvironmentError) as error:
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        if not is_local and not allow_pickle and "safetensors" in message.lower():
            raise UnsafeCheckpointError(
                f"{source}: no safetensors weights; pass allow_pickle=True only if you trust the checkpoint"
            ) from None
        raise ModelLoadError(f"{source}: cannot load model ({message})") from None
    missing = list(info.get("missing_keys", []))
    if missing:
        shown = ", ".join(sorted(missing)[:5])
        raise ModelLoadError(
            f"{source}: partial model, {len(missing)} weight(s) missing from the checkpoint (e.g. {shown})"
        )
    module.eval()
    processor = _load_processor(source, module, hub_kwargs)
    tokenizer = _load_tokenizer(source, config, hub_kwargs)
    return AttnLensModel(module, processor, tokenizer=tokenizer, source=source)


@contextmanager
def _quiet_progress() -> Iterator[None]:
    """Hide transformers' per-weight progress bar while loading (restored afterwards)."""
    from transformers.utils import logging as hf_logging

    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()


def _load_processor(source: str, module: nn.Module, hub_kwargs: dict[str, Any]):
    import transformers

    try:
        return transformers.AutoImageProcessor.from_pretrained(source, backend="pil", **hub_kwargs)
    except (OSError, ValueError, TypeError, KeyError):
        return default_processor(module, family_of(module))


def _load_tokenizer(source: str, config, hub_kwargs: dict[str, Any]):
    if getattr(config, "text_config", None) is None:
        return None
    import transformers

    try:
        return transformers.AutoTokenizer.from_pretrained(source, **hub_kwargs)
    except (OSError, ValueError, TypeError, KeyError, ImportError):  # ImportError: e.g. no sentencepiece
        return None


def _load_timm(name: str, allow_pickle: bool, options: dict[str, Any]) -> AttnLensModel:
    try:
        import timm
    except ImportError as error:
        raise ModelLoadError(
            f"timm:{name}: timm is not importable here ({error}); install the extra: pip install 'attnlens[timm]'"
        ) from None
    try:
        module = timm.create_model(name, pretrained=options.pop("pretrained", True), **options)
    except Exception as error:  # timm raises many types (RuntimeError, HF hub errors)
        raise ModelLoadError(f"timm:{name}: cannot create model ({error})") from None
    module.eval()
    data_config = timm.data.resolve_data_config({}, model=module)
    processor = resize_normalize_processor(
        tuple(data_config["input_size"][1:]),
        mean=data_config["mean"],
        std=data_config["std"],
        resample=3 if data_config.get("interpolation") == "bicubic" else 2,
    )
    return AttnLensModel(module, processor, source=f"timm:{name}")


def load(
    source: str | os.PathLike | nn.Module | None = None,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    allow_pickle: bool = False,
    **options: Any,
) -> AttnLensModel:
    """Load a model for interpretation.

    Args:
        source: ``None`` / ``"default"`` for the embedded default model; a local folder written by
            ``save_pretrained``; a Hugging Face hub id (``"google/vit-base-patch16-224"``); a timm
            model name as ``"timm:vit_small_patch16_224"`` (where timm imports); or an
            ``nn.Module`` to wrap.
        device, dtype: where and in which precision to put the model.
        allow_pickle: allow pickle checkpoints (``pytorch_model.bin``). Off by default: unpickling
            an untrusted file can run arbitrary code.
        options: passed to ``from_pretrained`` (``revision``, ``local_files_only``,
            ``attn_implementation``, ...) or ``timm.create_model``.

    Returns:
        An :class:`AttnLensModel` in eval mode.
    """
    if isinstance(source, nn.Module):
        model = as_model(source)
    elif source is None or str(source) == DEFAULT_MODEL:
        model = _load_hf(str(default_model_path()), False, options)
        model.source = DEFAULT_MODEL
    elif isinstance(source, str) and source.startswith("timm:"):
        model = _load_timm(source[len("timm:"):], allow_pickle, options)
    else:
        model = _load_hf(os.fspath(source), allow_pickle, options)
    if device is not None or dtype is not None:
        model.module.to(device=device, dtype=dtype)
    return model
