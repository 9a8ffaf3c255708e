"""A script that calls ``batch_runner.run()`` runs once, whatever processes the run starts.

vLLM starts its engine core (and, on the CPU build, its workers) with multiprocessing's spawn method:
always on the CPU build (its platform sets VLLM_WORKER_MULTIPROC_METHOD=spawn), and on a GPU once
CUDA is initialised or inside Ray (vLLM 0.26 and 0.32 alike); batch-run's data-parallel workers and
tune trials are spawned too. A spawned child first imports the parent's main script (as
``__mp_main__``), so that it can unpickle what the script defined: the script's top level runs
again, so a ``run()`` there ran the job again in each child, and a ``sys.exit`` there ended the child,
and the engine with it.

Nothing these children run is defined in a user's script (their targets and arguments are vLLM's and
batch-run's), so ``children_skip_main()`` starts them without that import. ``refuse_in_child_import()``
covers children started by others (the user's own spawned pool): ``run()`` there is refused, with
what to write instead.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from multiprocessing import spawn

from ..errors import JobError

_MAIN_KEYS = ("init_main_from_path", "init_main_from_name")  # how spawn tells a child to import the main script


@contextmanager
def children_skip_main() -> Iterator[None]:
    """Processes spawned in this block (spawn or forkserver; fork copies memory and imports nothing)
    do not import the main script. Only what spawn sends the child changes: the parent's ``__main__``
    and forked children are untouched."""
    real = spawn.get_preparation_data

    def without_main(name: str) -> dict:
        data = real(name)
        for key in _MAIN_KEYS:
            data.pop(key, None)
        return data

    spawn.get_preparation_data = without_main
    try:
        yield
    finally:
        spawn.get_preparation_data = real


def refuse_in_child_import() -> None:
    """Refuse a run from the top level of a main script that a spawned child is importing (spawn runs
    it as ``__mp_main__``, before ``multiprocessing.parent_process()`` is set)."""
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code.co_name == "<module>" and frame.f_globals.get("__name__") == "__mp_main__":
            raise JobError(
                f"batch_runner.run() was called while a child process imported {frame.f_code.co_filename} "
                "(multiprocessing's spawn runs a script's top level again in every child it starts): put "
                'the call under `if __name__ == "__main__":`')
        frame = frame.f_back
