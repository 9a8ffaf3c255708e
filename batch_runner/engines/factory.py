"""The engine for a job's ``engine.backend``, kept per process, and what planning and the bench
harness need of the running ones (their prefix caches, their shutdown)."""

from __future__ import annotations

import logging
from typing import Any

from ..config import EngineSpec, ModelSpec
from . import fake, reaper, vllm_engine
from .base import Engine
from .vllm_engine import max_num_seqs

__all__ = ["check_backend", "engine_arguments", "get_engine", "max_num_seqs", "reset_prefix_caches",
           "restart_engine", "running_engines", "shutdown_engines"]

log = logging.getLogger("batch_runner")

# backend -> (its arguments, its engine): one engine per backend, so a fake run in a test session
# leaves the shared vLLM engine running
_running: dict[str, tuple[str, Engine]] = {}


def check_backend(backend: str) -> None:
    """Refuse an installed engine batch-run is not tested with (vLLM's API moves between versions)."""
    if backend == "vllm":
        vllm_engine.check_vllm_version()


def engine_arguments(model_path: str, model: ModelSpec, engine: EngineSpec) -> tuple[dict[str, Any], list[str]]:
    """The backend's arguments for this job, and those dropped (keys the installed vLLM lacks)."""
    if engine.backend == "fake":
        return fake.engine_arguments(model_path, model, engine)
    return vllm_engine.engine_arguments(model_path, model, engine)


def get_engine(args: dict[str, Any], backend: str = "vllm") -> Engine:
    """An engine for these arguments, reused within one process (tests, the bench harness).

    One vLLM engine is kept: a request for different arguments shuts the old one down first. The
    fake starts afresh each time (it costs nothing), unless a test installed one.
    """
    key = repr(sorted(args.items()))
    held = _running.get(backend)
    if held is not None and held[0] == key and backend == "vllm":
        return held[1]
    if backend == "fake":
        engine: Engine = fake.start(args)
        if held is not None and held[1] is not engine:
            held[1].close()
    else:
        if held is not None:
            held[1].close()
            del _running[backend]
        reaper.guard()  # engine processes must not outlive this one, however it ends
        engine = vllm_engine.VllmEngine(args)
    _running[backend] = (key, engine)
    return engine


def restart_engine(args: dict[str, Any], backend: str = "vllm") -> Engine:
    """A new engine in place of one that failed: the failed one's processes are killed first (an
    orderly shutdown may wait on a dead peer for ever), then the same arguments start another."""
    held = _running.pop(backend, None)
    if held is not None:
        try:
            held[1].kill()
        except Exception:  # its processes may be gone already
            log.debug("killing the failed engine failed", exc_info=True)
    engine: Engine = fake.start(args, restart=True) if backend == "fake" else vllm_engine.VllmEngine(args)
    _running[backend] = (repr(sorted(args.items())), engine)
    return engine


def running_engines() -> list[Engine]:
    """The engines this process has started and not shut down."""
    return [engine for _, engine in _running.values()]


def reset_prefix_caches() -> None:
    """Empty the running engines' prefix caches (a measurement must not profit from the one before)."""
    for engine in running_engines():
        engine.reset_prefix_cache()


def shutdown_engines(backend: str | None = None) -> None:
    """Shut down the process's engines (only ``backend``'s, where given), if any was started."""
    for name in [b for b in _running if backend in (None, b)]:
        try:
            _running.pop(name)[1].close()
        except Exception:  # best effort at exit; the engine's processes end with ours anyway
            log.debug("engine shutdown failed", exc_info=True)
