"""batch-runner's own messages: the ``batch_runner`` logger on stderr, set up once per process (the
command line, each node worker). A module of its own so that executors need not import the CLI."""

from __future__ import annotations

import logging
import sys


class StderrHandler(logging.StreamHandler):
    """Writes to sys.stderr as it is when a message comes (not as it was when the handler was made:
    an embedding program, or a test runner, may replace it between runs)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def setup_logging(verbose: bool, prefix: str = "") -> None:
    """batch-runner's own messages on stderr, prefixed; vLLM's logging is left as vLLM sets it."""
    logger = logging.getLogger("batch_runner")
    handler = next((h for h in logger.handlers if isinstance(h, StderrHandler)), None)
    if handler is None:
        handler = StderrHandler()
        logger.addHandler(handler)
        logger.propagate = False
    # set again each time: a Ray worker process runs one shard after another
    handler.setFormatter(logging.Formatter(f"batch-run: {prefix}%(message)s"))
    logger.setLevel(logging.INFO if verbose else logging.WARNING)
