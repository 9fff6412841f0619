"""``attnlens serve``: the web app, every capability of attnlens on one page, safe to expose.

Tabs: Explain (one method's map with a colour bar, the top-5, the raw map and JSON to download),
Compare (every method side by side), CLIP (image-text pairs), Probe (attention distance, DINO
heads, entropy, token norms, CKA), Evaluate (the synthetic benchmark or an uploaded labelled set)
and Diffusion (Stable Diffusion next to Attend-and-Excite, per-word maps, telemetry). Every tab
calls the application layer the command line calls (:mod:`attnlens.app`), so the page's maps are
the CLI's maps.

Safe to expose: loopback by default; visitors pick models only from the operator's allow-list
(:mod:`.registry`), loaded at start without unpickling; uploads are checked against
:class:`UploadLimits` and read with the CLI's validation, and no request can name a server path
(:mod:`.uploads`); a queue with bounded concurrency, a time limit per request and cancellable
jobs (:mod:`.jobs`); request files removed as they age (:mod:`.scratch`).

Importing this package does not import gradio; :func:`build_app`, :func:`launch` and
:class:`WebContext` load it on first use.
"""

from attnlens.app.web.settings import DiffusionLimits, ServeSettings, UploadLimits

__all__ = ["DiffusionLimits", "ServeSettings", "UploadLimits", "WebContext", "build_app", "launch"]

_LAZY = {"build_app": "attnlens.app.web.app", "launch": "attnlens.app.web.app", "WebContext": "attnlens.app.web.context"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'attnlens.app.web' has no attribute {name!r}")
