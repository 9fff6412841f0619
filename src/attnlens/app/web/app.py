"""The web app: every tab in one gradio ``Blocks``, queued, served on the operator's address.

:func:`build_app` assembles the tabs (Explain, Compare, CLIP, Probe, Evaluate, and Diffusion where
a pipeline is available) over one :class:`~attnlens.app.web.context.WebContext`; :func:`launch`
serves it with the server's safety settings: loopback by default, no share link unless asked,
bounded concurrency and queue, the upload byte limit enforced by the upload route itself, no
monitoring or MCP endpoints, no analytics, no fonts or scripts from other hosts, and the server's
temporary files removed as they age.
"""

from __future__ import annotations

import gradio as gr

from attnlens.app.web.clip_tab import ClipTab
from attnlens.app.web.context import HEAVY, WebContext
from attnlens.app.web.diffusion_tab import DiffusionTab
from attnlens.app.web.evaluate_tab import EvaluateTab
from attnlens.app.web.explain_tab import CompareTab, ExplainTab
from attnlens.app.web.probe_tab import ProbeTab
from attnlens.app.web.settings import ServeSettings

TITLE = "attnlens"
SESSION_CAPACITY = 128
"""Visitor sessions whose page state the server framework keeps (the oldest are dropped first).
The app keeps no state of its own in them, but each costs about 0.4 MB (a copy of every widget's
settings), and the framework's default of 10,000 would let repeated requests grow the memory by
gigabytes."""
CACHE_CLEANUP = (300, 900)
"""The server framework's file cache: checked every 5 minutes, files older than 15 minutes removed."""
SYSTEM_FONTS = ["ui-sans-serif", "system-ui", "sans-serif"]
MONO_FONTS = ["ui-monospace", "monospace"]
INTRO = (
    "# attnlens\nExplain, probe and guide attention in vision transformers. Every tab runs the functions "
    "`attnlens` runs on the command line, on the models this server offers."
)


def theme() -> gr.themes.Theme:
    """The default theme with the visitor's own fonts (no font downloads from other hosts)."""
    return gr.themes.Default(font=SYSTEM_FONTS, font_mono=MONO_FONTS)


def build_app(context: WebContext) -> gr.Blocks:
    """Every tab over ``context``, queued with its concurrency and queue limits."""
    settings = context.settings
    with gr.Blocks(title=TITLE, analytics_enabled=False, delete_cache=CACHE_CLEANUP) as app:
        gr.Markdown(INTRO)
        explain = ExplainTab(context)
        tabs = [explain, CompareTab(context), ClipTab(context), ProbeTab(context), EvaluateTab(context)]
        if len(context.pipelines):
            tabs.append(DiffusionTab(context))
        for tab in tabs:
            with gr.Tab(tab.title):
                tab.build()
        gr.api(explain.explain_map, api_name="explain_map", concurrency_id=HEAVY, concurrency_limit=settings.concurrency)
    app.queue(max_size=settings.queue_size, default_concurrency_limit=settings.concurrency)
    return app


def launch(app: gr.Blocks, settings: ServeSettings, *, block: bool = True) -> str:
    """Serve ``app`` on ``settings.host:settings.port``; returns the local address (``block``:
    serve until interrupted, then close)."""
    _, url, share_url = app.launch(
        server_name=settings.host, server_port=settings.port, share=settings.share, prevent_thread_lock=True,
        quiet=True, show_error=False, max_file_size=settings.uploads.max_bytes, enable_monitoring=False,
        mcp_server=False, ssr_mode=False, run_history=False, footer_links=["api"], theme=theme(),
        state_session_capacity=SESSION_CAPACITY,
    )
    print(f"attnlens serve: {url}" + (f" (public link: {share_url})" if share_url else ""), flush=True)
    if block:
        try:
            app.block_thread()
        finally:
            app.close()
    return url
