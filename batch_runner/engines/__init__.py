"""Engines: the narrow interface the runner drives (submit requests, take completions), the backends
behind it (vLLM; a fake one for tests and examples, chosen by ``engine.backend``), the model files
they load, the GPUs they see, and the engine processes that must not outlive batch-run.

Only this package imports vLLM, and only inside functions, so the CLI and the pure-logic tests start fast.
"""

from .base import Engine
from .factory import (
    check_backend,
    engine_arguments,
    get_engine,
    max_num_seqs,
    reset_prefix_caches,
    restart_engine,
    running_engines,
    shutdown_engines,
)

__all__ = ["Engine", "check_backend", "engine_arguments", "get_engine", "max_num_seqs", "reset_prefix_caches",
           "restart_engine", "running_engines", "shutdown_engines"]
