"""A script that calls ``batch_runner.run()`` at its top level runs once: the processes that the run
spawns (vLLM's engine core and workers, data-parallel workers, tune trials) do not import it again,
and a ``run()`` from a script that someone else's spawned child imports is refused with what to write.

Each script runs as a real process of its own, with this checkout first on its path.
"""

import os
import subprocess
import sys
import textwrap

import pandas as pd
import pytest
from conftest import ROOT, news_rows, write_job, write_jsonl


def run_script(tmp_path, body: str, timeout: float) -> tuple[subprocess.CompletedProcess, list[str]]:
    """Run ``body`` as a script in tmp_path; returns the process and the lines its runs logged."""
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(body))
    log = tmp_path / "log.txt"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "LOG": str(log), "PYTHONUNBUFFERED": "1"}
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=timeout)
    return done, log.read_text().splitlines() if log.exists() else []


def test_processes_spawned_by_batch_run_do_not_import_the_main_script(tmp_path):
    done, lines = run_script(tmp_path, """
        import multiprocessing, os
        from batch_runner.engines.mainscript import children_skip_main

        with open(os.environ["LOG"], "a") as f:
            f.write(__name__ + "\\n")
        if __name__ == "__main__":
            spawn = multiprocessing.get_context("spawn")
            with children_skip_main():
                child = spawn.Process(target=os.getpid)
                child.start()
                child.join()
            child = spawn.Process(target=os.getpid)  # a spawn of the script's own, for contrast
            child.start()
            child.join()
    """, timeout=120)
    assert done.returncode == 0, done.stderr
    assert lines == ["__main__", "__mp_main__"]  # imported again by the script's own child only


def test_run_from_a_script_that_a_spawned_child_imports_is_refused_with_the_guard_to_write(tmp_path):
    done, lines = run_script(tmp_path, """
        import multiprocessing, os
        import batch_runner

        try:
            batch_runner.run("no-such-job.yaml")
        except batch_runner.BatchRunnerError as e:
            with open(os.environ["LOG"], "a") as f:
                f.write(f"{__name__}: {e}\\n")
        if __name__ == "__main__":
            child = multiprocessing.get_context("spawn").Process(target=os.getpid)
            child.start()
            child.join()
    """, timeout=120)
    assert done.returncode == 0, done.stderr
    assert len(lines) == 2 and lines[0].startswith("__main__: ") and "no-such-job.yaml" in lines[0]
    assert lines[1].startswith("__mp_main__: batch_runner.run() was called while a child process imported")
    assert 'if __name__ == "__main__":' in lines[1]


@pytest.mark.engine
def test_a_top_level_run_runs_once_with_the_real_engine_and_its_sys_exit_ends_only_the_script(tmp_path):
    rows = news_rows(3)
    data = write_jsonl(tmp_path / "in.jsonl", rows)
    job = write_job(tmp_path, input={"path": str(data)}, sampling={"max_tokens": 4})
    done, lines = run_script(tmp_path, f"""
        import os, sys
        import batch_runner

        def log(text):
            with open(os.environ["LOG"], "a") as f:
                f.write(f"{{text}} in {{__name__}}\\n")

        log("started")
        try:
            answers = batch_runner.run({str(job)!r}, progress=False)
        except Exception as e:
            log(f"failed: {{e}}")
            sys.exit(9)
        log(f"ran {{len(answers)}} rows")
        sys.exit(7)
    """, timeout=500)
    assert lines == ["started in __main__", "ran 3 rows in __main__"], done.stderr[-3000:]
    assert done.returncode == 7  # the script's own exit, after the engine did its work
    assert sorted(pd.read_parquet(tmp_path / "out" / "results")["id"]) == sorted(r["id"] for r in rows)
