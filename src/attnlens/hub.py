"""Local-first access to files on the Hugging Face hub, for :func:`attnlens.load`.

A hub file is taken from the local cache when it is there, so cached models load offline. Only
when it is not cached is the hub asked, and first only whether it answers at all
(:data:`HUB_TIMEOUT_S`): offline (``HF_HUB_OFFLINE=1``, ``local_files_only=True``) or with the hub
unreachable, loading fails at once with one line naming the id and the way to a local folder or
cache, instead of the download clients' timeouts and retries.

Weights are looked for as safetensors first; a pickle file (``pytorch_model.bin``) is used only
with ``allow_pickle=True``, because unpickling an untrusted file can run arbitrary code.
"""

from __future__ import annotations

import os
from pathlib import Path

from attnlens.errors import ModelLoadError, UnsafeCheckpointError

HUB_TIMEOUT_S = 1.5
"""How long loading waits for the hub to answer before it calls the hub unreachable."""

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")

# The weight files the model libraries publish and their safetensors versions (the convention of
# transformers, timm and open_clip: pytorch_model.bin <-> model.safetensors, NAME.bin <-> NAME.safetensors).
_SAFE_VERSION = {"pytorch_model.bin": "model.safetensors", "open_clip_pytorch_model.bin": "open_clip_model.safetensors"}


def cache_folder(cache_dir: str | os.PathLike | None = None) -> str:
    """The hub cache folder used: ``cache_dir``, else ``HF_HUB_CACHE`` / ``HF_HOME/hub``."""
    from huggingface_hub import constants

    return str(cache_dir) if cache_dir is not None else str(constants.HF_HUB_CACHE)


def unavailable_reason(local_files_only: bool = False) -> str | None:
    """Why the hub cannot be used now (offline mode, ``local_files_only``, no answer within
    :data:`HUB_TIMEOUT_S`), or ``None`` when it answers."""
    from huggingface_hub import constants
    from huggingface_hub.utils import get_session

    if local_files_only:
        return "local_files_only=True"
    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    try:
        get_session().head(constants.ENDPOINT, timeout=HUB_TIMEOUT_S)
    except Exception:  # the HTTP client's transport errors (DNS, refused, timeout, proxy) differ by version
        return f"the hub ({constants.ENDPOINT}) does not answer"
    return None


def cached_file(repo_id: str, filename: str, revision: str | None = None, cache_dir: str | os.PathLike | None = None) -> str | None:
    """The path of ``filename`` of hub repo ``repo_id`` in the local cache, or ``None``."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo_id, filename, cache_dir=cache_dir, revision=revision)
    return found if isinstance(found, str) else None


def safe_version(filename: str) -> str:
    """The safetensors file published beside a pickle weight file (itself if it is no pickle)."""
    if filename in _SAFE_VERSION:
        return _SAFE_VERSION[filename]
    path = Path(filename)
    return str(path.with_suffix(".safetensors")) if path.suffix in PICKLE_SUFFIXES else filename


def weights_file(
    source: str,
    repo_id: str,
    filename: str,
    *,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    allow_pickle: bool = False,
    local_only: str | None = None,
    fix: str,
) -> str:
    """The local path of the weights ``filename`` (or its safetensors version) of hub repo ``repo_id``.

    The cache is read first; the hub is asked only if the file is not cached and the hub answers.

    Args:
        source: what the user asked for (``"timm:NAME"``), named in errors.
        local_only: why the hub is never asked (open_clip tags load from the local cache only),
            named in the error; ``None``: ask the hub when the file is not cached.
        fix: the last resort named in the offline error (e.g. ``"pass pretrained=False"``).

    Raises:
        ModelLoadError: not cached and the hub is offline or unreachable, or the download failed.
        UnsafeCheckpointError: only a pickle file exists and ``allow_pickle`` is false.
    """
    safe = safe_version(filename)
    names = [safe] + ([filename] if filename != safe else [])
    cached = {name: cached_file(repo_id, name, revision, cache_dir) for name in names}
    if cached[safe] is not None:
        return cached[safe]
    if cached.get(filename) is not None and allow_pickle:
        return cached[filename]
    reason = local_only if local_only is not None else unavailable_reason()
    if reason is not None and cached.get(filename) is not None:
        raise UnsafeCheckpointError(
            f"{source}: the local cache holds only the pickle file {repo_id}/{filename}; loading it can execute "
            "arbitrary code: pass allow_pickle=True (CLI: --allow-pickle) if you trust it"
        )
    if reason is not None:
        raise ModelLoadError(
            f"{source}: weights {repo_id}/{safe} are not in the local Hugging Face cache ({cache_folder(cache_dir)}) and "
            f"{reason}; download them once online (hf download {repo_id} {safe}) into that cache (or set cache_dir= / "
            f"HF_HOME to the cache that holds them), or {fix}"
        )
    return _download(source, repo_id, names, revision, cache_dir, allow_pickle)


def _download(source: str, repo_id: str, names: list[str], revision: str | None, cache_dir, allow_pickle: bool) -> str:
    """Download the first of ``names`` the repo has (the pickle file, last, only with ``allow_pickle``)."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError

    for name in names:
        if Path(name).suffix in PICKLE_SUFFIXES and not allow_pickle:
            raise UnsafeCheckpointError(
                f"{source}: {repo_id} has its weights only as the pickle file {name}; loading it can execute "
                "arbitrary code: pass allow_pickle=True (CLI: --allow-pickle) if you trust it"
            )
        try:
            return hf_hub_download(repo_id, name, revision=revision, cache_dir=cache_dir)
        except EntryNotFoundError:
            continue
        except (HfHubHTTPError, OSError) as error:
            message = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise ModelLoadError(f"{source}: cannot download {repo_id}/{name} ({message})") from None
    raise ModelLoadError(f"{source}: {repo_id} has none of the weight files {names}")
