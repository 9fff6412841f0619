"""Requests as jobs: a time limit for each, and cancellation of long ones by their visitor.

A computation cannot be interrupted from outside its thread, so a job stops itself: while it runs,
a forward pre-hook on the networks it uses (a vision model's image tower, a pipeline's UNet) checks
before every forward pass whether the job was cancelled or ran past its time limit, and raises
:class:`JobStopped` if so. The hooks act only in the job's own thread
(:class:`attnlens.capture.scopes.ThreadHook`: other requests on the same model never see them) and
are removed when the job ends, also when it fails. A visitor cancels the jobs of their own
session only (:meth:`JobBoard.cancel`).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from torch import nn

from attnlens.capture.scopes import ThreadHook
from attnlens.errors import AttnLensError
from attnlens.adapters import get_submodule
from attnlens.model import AttnLensModel


class JobStopped(AttnLensError):
    """A request was cancelled by its visitor or ran past the server's time limit."""


@dataclass
class Job:
    """One running request.

    Attributes:
        key: the visitor's session and the tab (what :meth:`JobBoard.cancel` names).
        time_limit: seconds it may compute; deadline: when that ends (``time.monotonic``).
        cancelled: set by :meth:`JobBoard.cancel`.
        checks: how many times it checked (forward passes it started).
    """

    key: str
    time_limit: float
    deadline: float
    cancelled: threading.Event = field(default_factory=threading.Event)
    checks: int = 0

    def check(self) -> None:
        """Raise :class:`JobStopped` if the job was cancelled or its time is up."""
        self.checks += 1
        if self.cancelled.is_set():
            raise JobStopped("cancelled: you stopped this request before it finished")
        if time.monotonic() > self.deadline:
            raise JobStopped(
                f"stopped: this request ran longer than this server's limit of {self.time_limit:g} s; ask for less "
                "(fewer images, steps or methods), or ask the operator for a larger --time-limit"
            )


def image_tower(model: AttnLensModel) -> nn.Module:
    """The module a vision model's pixels go through on every forward pass (CLIP: the vision tower)."""
    path = model.family.image_module
    return get_submodule(model.module, path) if path else model.module


class JobBoard:
    """The running jobs of a server, by key, with one time limit for all."""

    def __init__(self, time_limit: float) -> None:
        self.time_limit = float(time_limit)
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def run(self, key: str, modules: Iterable[nn.Module]) -> Iterator[Job]:
        """Run a job under ``key`` inside the block: ``modules`` check it before every forward
        pass made in this thread; the hooks go and the job leaves the board on exit."""
        job = Job(key, self.time_limit, time.monotonic() + self.time_limit)
        with self._lock:
            self._jobs[key] = job
        hook = ThreadHook(lambda *_: job.check())
        handles = [module.register_forward_pre_hook(hook) for module in dict.fromkeys(modules)]
        try:
            yield job
        finally:
            for handle in handles:
                handle.remove()
            with self._lock:
                if self._jobs.get(key) is job:
                    del self._jobs[key]

    def cancel(self, key: str) -> bool:
        """Cancel the running job under ``key``; whether there was one."""
        with self._lock:
            job = self._jobs.get(key)
        if job is None:
            return False
        job.cancelled.set()
        return True

    def running(self) -> list[str]:
        """The keys of the running jobs."""
        with self._lock:
            return list(self._jobs)
