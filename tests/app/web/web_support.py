"""Helpers of the web app tests (imported by each test module; not a conftest.py, so that the root
conftest stays importable as ``conftest``): a web context over tiny models, test images, and an
``attnlens serve`` process on a free localhost port."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[3]
CLIP_MODEL = ROOT / "tests" / "data" / "goldens" / "clip"
STARTUP_SECONDS = 240
T = TypeVar("T")
ADDRESS = re.compile(r"attnlens serve: (http://\S+)")


def save_image(path: Path, size: tuple[int, int], seed: int = 0, noise: bool = True) -> Path:
    """A PNG of ``size`` (H, W): random noise (large file) or smooth stripes (small file)."""
    rng = np.random.default_rng(seed)
    height, width = size
    if noise:
        pixels = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
    else:
        stripes = (np.arange(width) * 255 // max(width - 1, 1)).astype(np.uint8)
        pixels = np.broadcast_to(stripes[None, :, None], (height, width, 3)).copy()
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


def artifacts_folder() -> Path:
    """Where the tests keep screenshots and measured figures: ``$ATTNLENS_ARTIFACTS/web`` or
    ``tests/artifacts/web``."""
    folder = Path(os.environ.get("ATTNLENS_ARTIFACTS") or ROOT / "tests" / "artifacts") / "web"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def free_port() -> int:
    from attnlens.app.evaluate import free_port as loopback_port

    return loopback_port()


@dataclass
class Server:
    """A running ``attnlens serve`` process."""

    process: subprocess.Popen
    url: str
    log: Path

    def rss_kib(self) -> int:
        """The server's resident memory in KiB (``VmRSS``)."""
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1))

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def start_server(arguments: list[str], folder: Path, meanwhile: Callable[[], T]) -> tuple[Server, T]:
    """``python -m attnlens serve ARGUMENTS --port FREE``, one torch thread, uploads under
    ``folder``; runs ``meanwhile()`` while the server starts, and returns the server once it prints
    its address (the log is ``folder/serve.log``) with what ``meanwhile`` returned."""
    log = folder / "serve.log"
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", GRADIO_TEMP_DIR=str(folder / "uploads"))
    command = [sys.executable, "-m", "attnlens", "--threads", "1", "serve", "--port", str(free_port()), *arguments]
    with log.open("w") as handle:
        process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, env=env, cwd=folder)
    done = meanwhile()
    return wait_for_address(process, log), done


def wait_for_address(process: subprocess.Popen, log: Path) -> Server:
    """The server of ``process`` once it has printed its address and answers."""
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        found = ADDRESS.search(log.read_text())
        if found:
            server = Server(process, found.group(1), log)
            urllib.request.urlopen(server.url, timeout=30).read()
            return server
        if process.poll() is not None:
            break
        time.sleep(0.5)
    process.kill()
    raise RuntimeError(f"attnlens serve did not start:\n{log.read_text()[-3000:]}")
