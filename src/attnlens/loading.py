"""``attnlens.load``: models from the Hugging Face hub, local folders, timm, open_clip, or the
embedded default.

Weights load from safetensors without unpickling. A checkpoint that exists only in a pickle
format (``pytorch_model.bin``, ``.pt``) is refused with an explanation unless the caller passes
``allow_pickle=True``, because unpickling an untrusted file can run arbitrary code.

Hub models (Hugging Face ids, timm pretrained weights, open_clip pretrained tags) are read from the
local Hugging Face cache first, so cached models load offline; offline or with the hub unreachable,
an uncached model fails at once with one line (see :mod:`attnlens.hub`). open_clip tags load only
from the local cache or a local file.
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

from attnlens import hub
from attnlens.errors import ModelLoadError, UnsafeCheckpointError
from attnlens.adapters.open_clip import OpenClipTokenizer
from attnlens.hub import PICKLE_SUFFIXES
from attnlens.model import AttnLensModel, as_model, family_of
from attnlens.processors import default_processor

DEFAULT_MODEL = "default"
TIMM_PREFIX = "timm:"
OPEN_CLIP_PREFIX = "open_clip:"


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
        "'google/vit-base-patch16-224', 'timm:NAME', 'open_clip:NAME[/TAG]' or 'default'"
    )


def _local_hub_access(source: str, hub_kwargs: dict[str, Any]) -> None:
    """Offline or with the hub unreachable: load ``source`` from the local cache
    (``local_files_only``), or fail at once if its config is not cached."""
    reason = hub.unavailable_reason(bool(hub_kwargs.get("local_files_only", False)))
    if reason is None:
        return
    cache_dir = hub_kwargs.get("cache_dir")
    if hub.cached_file(source, "config.json", hub_kwargs.get("revision"), cache_dir) is None:
        raise ModelLoadError(
            f"{source}: not in the local Hugging Face cache ({hub.cache_folder(cache_dir)}) and {reason}; pass a "
            "folder written by save_pretrained, set cache_dir= (or HF_HOME) to the cache that holds the model, or "
            f"download it once online (hf download {source})"
        )
    hub_kwargs["local_files_only"] = True


def _load_hf(source: str, allow_pickle: bool, options: dict[str, Any]) -> AttnLensModel:
    import transformers

    local = Path(source).expanduser()
    is_local = local.exists()
    if is_local:
        _check_folder(local, allow_pickle)
        source = str(local)
    hub_kwargs = {k: options.pop(k) for k in ("revision", "token", "cache_dir", "local_files_only") if k in options}
    if not is_local:
        _check_missing_folder(source)
        _local_hub_access(source, hub_kwargs)
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


def _import(module: str, source: str, extra: str):
    """Import the model library ``module`` or say which extra installs it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise ModelLoadError(
            f"{source}: {module} is not importable here ({error}); install the extra: pip install 'attnlens[{extra}]'"
        ) from None


def _timm_weights(name: str, allow_pickle: bool, options: dict[str, Any]) -> str:
    """The local path of the pretrained weights of timm model ``name`` (``arch`` or ``arch.tag``),
    from the Hugging Face cache (downloaded only if the hub answers), or a one-line error."""
    import timm

    source = f"{TIMM_PREFIX}{name}"
    fix = "pass pretrained=False for random weights"
    try:
        config = timm.models.get_pretrained_cfg(name)
    except RuntimeError as error:  # an unknown pretrained tag
        raise ModelLoadError(f"{source}: {error} Tags: {timm.list_pretrained(name.split('.')[0] + '.*')}") from None
    hub_id = getattr(config, "hf_hub_id", None)
    if not hub_id:
        raise ModelLoadError(f"{source}: timm names no Hugging Face hub weights for this model; {fix}, or pass "
                             "pretrained_cfg_overlay=dict(file=PATH) with a local weights file")
    repo_id, _, revision = hub_id.partition("@")
    return hub.weights_file(
        source, repo_id, getattr(config, "hf_hub_filename", None) or "pytorch_model.bin",
        revision=revision or None, cache_dir=options.get("cache_dir"), allow_pickle=allow_pickle, fix=fix,
    )


def _load_timm(name: str, allow_pickle: bool, options: dict[str, Any]) -> AttnLensModel:
    """``timm.create_model(name)``: pretrained weights (the default) from the local cache, or
    downloaded when the hub answers; ``pretrained=False`` for random weights."""
    timm = _import("timm", f"{TIMM_PREFIX}{name}", "timm")
    if not timm.is_model(name):
        raise ModelLoadError(f"{TIMM_PREFIX}{name}: unknown timm model; list them with timm.list_models('vit_*')")
    pretrained = bool(options.pop("pretrained", True))
    overlay = dict(options.pop("pretrained_cfg_overlay", None) or {})
    if pretrained and not overlay.get("file"):
        overlay["file"] = _timm_weights(name, allow_pickle, options)
    if pretrained and Path(overlay["file"]).suffix in PICKLE_SUFFIXES and not allow_pickle:
        raise UnsafeCheckpointError(f"{overlay['file']}: a pickle checkpoint; pass allow_pickle=True if you trust it")
    try:
        module = timm.create_model(name, pretrained=pretrained, pretrained_cfg_overlay=overlay or None, **options)
    except Exception as error:  # timm raises many types (RuntimeError, TypeError for unknown options, ...)
        raise ModelLoadError(f"{TIMM_PREFIX}{name}: cannot create model ({error})") from None
    model = as_model(module.eval())  # with the processor of the timm adapter (the model's mean and std)
    model.source = f"{TIMM_PREFIX}{name}"
    return model


def _open_clip_weights(source: str, name: str, tag: str, allow_pickle: bool, options: dict[str, Any]) -> tuple[str, dict]:
    """``(local weights path, preprocessing config)`` of open_clip pretrained ``tag`` of ``name``,
    from the local Hugging Face cache only."""
    import open_clip

    config = open_clip.get_pretrained_cfg(name, tag)
    if not config:
        raise ModelLoadError(f"{source}: unknown pretrained tag {tag!r}; tags of {name}: {open_clip.list_pretrained_tags_by_model(name)}")
    hub_path = str(config.get("hf_hub") or "")  # "org/repo/" (default weights file) or "org/repo/FILE"
    if not hub_path:
        raise ModelLoadError(f"{source}: this tag has no Hugging Face hub weights; download {config.get('url')} and pass "
                             "pretrained=PATH (a .safetensors file)")
    repo_id, filename = os.path.split(hub_path)
    path = hub.weights_file(
        source, repo_id, filename or "open_clip_pytorch_model.bin", cache_dir=options.pop("cache_dir", None),
        allow_pickle=allow_pickle, local_only="attnlens loads open_clip tags from the local cache only",
        fix=f"load {OPEN_CLIP_PREFIX}{name} for random weights or pass pretrained=PATH",
    )
    preprocessing = {key: config[key] for key in ("mean", "std", "interpolation", "resize_mode") if key in config}
    return path, preprocessing


def _load_open_clip(spec: str, allow_pickle: bool, options: dict[str, Any]) -> AttnLensModel:
    """``open_clip:NAME`` (random weights), ``open_clip:NAME/TAG`` (pretrained tag, from the local
    cache) or ``open_clip:NAME`` with ``pretrained=PATH`` (a local weights file)."""
    source = f"{OPEN_CLIP_PREFIX}{spec}"
    open_clip = _import("open_clip", source, "clip")
    name, _, tag = spec.partition("/")
    if name not in open_clip.list_models():
        raise ModelLoadError(f"{source}: unknown open_clip model {name!r}; list them with open_clip.list_models()")
    weights, preprocessing = options.pop("pretrained", None), {}
    if tag:
        weights, preprocessing = _open_clip_weights(source, name, tag, allow_pickle, options)
    elif weights is not None:
        weights = str(weights)
        if not Path(weights).is_file():
            raise ModelLoadError(f"{source}: pretrained={weights!r} is no file; pass a local weights file or use {source}/TAG")
    if weights is not None and Path(weights).suffix in PICKLE_SUFFIXES and not allow_pickle:
        raise UnsafeCheckpointError(f"{weights}: a pickle checkpoint; pass allow_pickle=True if you trust it")
    try:
        module = open_clip.create_model(
            name, pretrained=weights, force_preprocess_cfg=preprocessing or None, weights_only=True, **options
        )
    except Exception as error:  # open_clip raises many types (RuntimeError, KeyError for mismatched weights, ...)
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ModelLoadError(f"{source}: cannot create model ({message})") from None
    model = as_model(module.eval())  # with the processor and tokenizer of the open_clip adapter
    native = open_clip.get_tokenizer(name)  # the model config's tokenizer settings
    if isinstance(native, open_clip.SimpleTokenizer):
        model.tokenizer = OpenClipTokenizer(native)
    model.source = source
    return model


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
            ``save_pretrained``; a Hugging Face hub id (``"google/vit-base-patch16-224"``, read from
            the local cache when it is there); a timm model name as ``"timm:vit_small_patch16_224"``
            (pretrained weights from the local cache or the hub; ``pretrained=False`` for random
            weights); an open_clip model as ``"open_clip:ViT-B-32"`` (random weights),
            ``"open_clip:ViT-B-32/laion2b_s34b_b79k"`` (a pretrained tag whose weights are in the
            local Hugging Face cache) or ``"open_clip:ViT-B-32"`` with ``pretrained=PATH``; or an
            ``nn.Module`` to wrap (timm and open_clip modules get their own preprocessing and
            tokenizer).
        device, dtype: where and in which precision to put the model.
        allow_pickle: allow pickle checkpoints (``pytorch_model.bin``). Off by default: unpickling
            an untrusted file can run arbitrary code.
        options: passed to ``from_pretrained`` (``revision``, ``local_files_only``, ``cache_dir``,
            ``attn_implementation``, ...), ``timm.create_model`` or ``open_clip.create_model``.

    Raises:
        ModelLoadError: one line naming the source and the fix; offline (``HF_HUB_OFFLINE=1``) or
            with the hub unreachable, within about 2 s for models that are not cached.

    Returns:
        An :class:`AttnLensModel` in eval mode.
    """
    if isinstance(source, nn.Module):
        model = as_model(source)
    elif source is None or str(source) == DEFAULT_MODEL:
        model = _load_hf(str(default_model_path()), False, options)
        model.source = DEFAULT_MODEL
    elif isinstance(source, str) and source.startswith(TIMM_PREFIX):
        model = _load_timm(source[len(TIMM_PREFIX):], allow_pickle, options)
    elif isinstance(source, str) and source.startswith(OPEN_CLIP_PREFIX):
        model = _load_open_clip(source[len(OPEN_CLIP_PREFIX):], allow_pickle, options)
    else:
        model = _load_hf(os.fspath(source), allow_pickle, options)
    if device is not None or dtype is not None:
        model.module.to(device=device, dtype=dtype)
    return model
