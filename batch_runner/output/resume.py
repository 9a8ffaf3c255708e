"""Resume: what is done, whether this output belongs to this job, and who is writing to it.

What is done is the set of ids in the committed result parts; nothing else is trusted. The
fingerprint records what determines the results, so that a resumed run cannot mix outputs of two
different jobs. A lock per shard keeps two runs from writing the same rows; the kernel releases it
when its process dies, so a crashed run never blocks the next one.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import re
import socket
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from .. import atomic
from ..atomic import write_json
from ..config import JobSpec, excerpt
from ..errors import RESUME_ADVICE, ExitStatus, JobError, ResumeConflict, writing
from ..inputs.assignment import Shard
from ..inputs.digest import InputContent, changed_files
from ..inputs.readers import resolve_files
from ..records import ShardTotals, Summary
from .job_record import JOB_FILE, JobRecord
from .ownership import MAX_NAMED, ForeignFiles, part_identity, refuse_foreign
from .parts import committed_parts, sweep_temporaries
from .schemas import schema_from_record

if TYPE_CHECKING:
    from ..inputs.preflight import InputReport

log = logging.getLogger("batch_runner")
OUTPUT_ADVICE = "free space there, or give the job a writable output folder (--output or output.dir); nothing was written"


def fingerprint_hash(fingerprint: dict[str, Any]) -> str:
    text = json.dumps(fingerprint, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def changed_keys(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    a, b = _flatten(old), _flatten(new)
    missing = "(absent)"
    return [_change(k, a.get(k, missing), b.get(k, missing)) for k in sorted(set(a) | set(b))
            if a.get(k, missing) != b.get(k, missing)]


def _change(key: str, old: Any, new: Any) -> str:
    """One changed value, in excerpts (a system prompt or template may be megabytes); where the two
    excerpts read the same, where the texts first differ."""
    line = f"{key}: {excerpt(old)} -> {excerpt(new)}"
    if isinstance(old, str) and isinstance(new, str) and excerpt(old) == excerpt(new):
        at = next((i for i, (x, y) in enumerate(zip(old, new)) if x != y), min(len(old), len(new)))
        around = slice(max(at - 30, 0), at + 30)
        line += f" (they differ from character {at + 1}: {excerpt(old[around])} -> {excerpt(new[around])})"
    return line


def read_job_record(out: Path) -> dict[str, Any] | None:
    """The output's job.json as its JSON object (JobRecord.load), or None for a new output."""
    record = JobRecord.load(out)
    return record.as_dict() if record is not None else None


def check_fingerprint(out: Path, fingerprint: dict[str, Any], job: dict[str, Any], kept: pa.Schema,
                      content: InputContent) -> pa.Schema:
    """Record the fingerprint, the input's block digests, the kept columns' types and a new output id
    in a new output; refuse an output written by a different job. Returns the kept schema every
    part of this output must have."""
    recorded = JobRecord.load(out)
    if recorded is None:
        record = JobRecord(fingerprint_hash=fingerprint_hash(fingerprint), fingerprint=fingerprint,
                           kept_schema=[[f.name, str(f.type)] for f in kept], job=job,
                           output_id=uuid.uuid4().hex, input_blocks=content.blocks())
        with _creating(out):  # shards starting together: one creates it, the others read it
            if (recorded := JobRecord.load(out)) is None:
                write_json(out / JOB_FILE, record.as_dict())
                return kept
    if recorded.fingerprint_hash != fingerprint_hash(fingerprint):
        raise ResumeConflict(fingerprint_conflict(out, recorded, fingerprint, content))
    return schema_from_record(recorded.kept_schema) if recorded.kept_schema is not None else kept


CREATE_WAIT_S = 30.0  # job.json is written in milliseconds; a holder past this is stuck


@contextmanager
def _creating(out: Path) -> Iterator[None]:
    """An exclusive flock on the output folder itself while job.json is read and, if absent, created
    (no file of its own: a refusal creates nothing). Bounded: it waits at most CREATE_WAIT_S."""
    fd = os.open(out, os.O_RDONLY)
    try:
        deadline = time.monotonic() + CREATE_WAIT_S
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise ResumeConflict(f"{out}: another run has been creating job.json for over "
                                         f"{CREATE_WAIT_S:.0f} s; run again when it is done") from None
                time.sleep(0.05)
        yield
    finally:
        os.close(fd)  # drops the flock


def output_identity(out: Path) -> dict[str, str]:
    """What every part written into this output carries in its footer (ownership.part_identity)."""
    return part_identity(read_job_record(out) or {})


_AGAIN = ("Rerun with --fresh to move the old results aside and start over, or write elsewhere with "
          "--output DIR.")


def fingerprint_conflict(out: Path, recorded: JobRecord, fingerprint: dict[str, Any],
                         content: InputContent) -> list[str]:
    old = recorded.fingerprint or {}
    old_input = old.get("input", {})
    if isinstance(old_input.get("files"), list):  # job.json of a batch-run that recorded sizes only
        return [f"{out}: its job.json records the input's file sizes, not its content (written by an older "
                "batch-run), so a resumed run cannot tell whether the input changed. " + _AGAIN]
    files = changed_files(recorded.input_blocks, old_input, content) if "files" in old_input else []
    changes = files + [c for c in changed_keys(old, fingerprint) if not c.startswith("input.files.")]
    text = (f"{out} holds results of a different job; resuming would mix them. What changed:\n"
            + "\n".join(f"  {c}" for c in changes[:20]) + "\n" + _AGAIN)
    return [text]  # one problem, however many lines




# What batch-runner writes into an output folder: per shard, and for the whole output.
def _shard_files(out: Path, label: str) -> list[Path]:
    files = [p for folder in ("results", "stats", "timeline") for p in committed_parts(out / folder)
             if p.name.startswith(f"part-{label}-")]
    files += [out / name for name in (f"summary-{label}.json", f"shards/{label}.done") if (out / name).exists()]
    if label == "0000-of-0001" and (out / "summary.json").exists():
        files.append(out / "summary.json")
    return files


_OUTPUT_WIDE = ("job.json", "merged", "openai", "report")
_LABEL = re.compile(r"part-(\d{4}-of-\d{4})-")


def shard_labels(out: Path) -> set[str]:
    """The shards that have committed anything here, or a lock file."""
    labels = {m.group(1) for folder in ("results", "stats", "timeline") for p in committed_parts(out / folder)
              if (m := _LABEL.match(p.name))}
    labels |= {p.stem for p in (out / "shards").glob("*.done")} if (out / "shards").is_dir() else set()
    labels |= {p.name.removeprefix(".lock-") for p in out.glob(".lock-*")} if out.is_dir() else set()
    return labels


def move_aside(out: Path, held: set[str], fingerprint: dict[str, Any]) -> Path | None:
    """--fresh: move this shard's results (and, where no other shard has any, the whole output's
    files) to a sibling folder; nothing is deleted, nothing batch-runner did not write is moved.

    Other shards' files move only when this run holds their locks too (no run is writing them).
    A changed job while other shards hold results of the old one is refused: nothing is moved.
    """
    locks = []
    try:
        mine, others = set(held), set()  # held: the shards whose locks the caller holds
        for label in sorted(shard_labels(out) - held):
            lock = OutputLock(out, label)
            try:
                lock.acquire()
                locks.append(lock)
                mine.add(label)
            except ResumeConflict:  # a run is writing that shard now
                others.add(label)
        _refuse_changed_job(out, others, fingerprint)
        files = [f for label in sorted(mine) for f in _shard_files(out, label)]
        if not others:
            files += [out / name for name in _OUTPUT_WIDE if (out / name).exists()]
        return _move(out, files)
    finally:
        for lock in locks:
            lock.release()


def _refuse_changed_job(out: Path, others: set[str], fingerprint: dict[str, Any]) -> None:
    recorded = JobRecord.load(out)
    if others and recorded is not None and recorded.fingerprint_hash != fingerprint_hash(fingerprint):
        raise ResumeConflict(
            f"{out}: --fresh cannot change the job of this output while shards {', '.join(sorted(others))} "
            "are running on it; wait for them, or write elsewhere with --output DIR")


def check_fresh(job: JobSpec, shard: Shard, report: InputReport) -> None:
    """--fresh, before the engine starts: every refusal of ``open_shard`` that needs no engine (foreign
    files; a changed job while other shards run), as a probe that moves and writes nothing. The
    move itself waits for the engine, so that a start that fails leaves the output as it was;
    ``move_aside`` checks the other shards again then, under their locks."""
    out = job.output_dir
    refuse_foreign(out, read_job_record(out))
    others = {label for label in shard_labels(out) - {shard.label} if output_locked(out, label)}
    _refuse_changed_job(out, others, fingerprint(job, shard, report.assignment, report.content))


def _move(out: Path, files: list[Path]) -> Path | None:
    if not files:
        return None
    target = out.with_name(f"{out.name}.replaced-{time.strftime('%Y%m%dT%H%M%S')}")
    for f in files:
        dest = target / f.relative_to(out)
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(f, dest)
    return target


def check_output_dir(out: Path, inputs: list[Path], job_file: Path | None, input_folder: Path | None = None) -> None:
    """Refuse an output folder whose --fresh or writes would touch what is not batch-runner's:
    the current folder or one above it, the home folder, a folder holding the input or the job file,
    or a folder inside an input folder (a rerun would read the results as input)."""
    o = out.resolve()
    cwd = Path.cwd().resolve()
    why = None
    if o == cwd or o in cwd.parents:
        why = "is the current folder" if o == cwd else "holds the current folder"
    elif o == Path.home().resolve():
        why = "is the home folder"
    elif any(o in f.resolve().parents for f in inputs):
        why = "holds the input"
    elif job_file is not None and o in job_file.resolve().parents:
        why = "holds the job file"
    elif input_folder is not None and input_folder.resolve() in o.parents:
        why = f"is inside the input folder {input_folder}"
    if why:
        raise JobError(f"output.dir: {out} {why}; give the job its own folder (e.g. outputs/<name>) with "
                       "output.dir or --output")


class OutputLock:
    """An exclusive, non-blocking lock on one shard of an output directory."""

    def __init__(self, out: Path, shard: str):
        self.path = out / f".lock-{shard}"
        self._fd: int | None = None

    def acquire(self) -> None:
        existed = self.path.exists()
        with writing(self.path, OUTPUT_ADVICE, ExitStatus.USAGE):  # the first write of a run: nothing changed yet
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise ResumeConflict(self.busy(lock_holder(self.path))) from None
        self._fd = fd
        with writing(self.path, OUTPUT_ADVICE, ExitStatus.USAGE):
            try:
                os.ftruncate(fd, 0)
                os.write(fd, f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}".encode())
            except OSError:  # a full disk: no room for the holder's note
                self.release()
                if not existed:  # "nothing was written": not even an empty lock file
                    self.path.unlink(missing_ok=True)
                raise

    def busy(self, holder: str) -> str:
        return (f"{self.path.parent}: another run is writing to this output ({holder}); wait for it to "
                "finish, or use another --output")

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock
            self._fd = None

    def __enter__(self) -> "OutputLock":
        if self._fd is None:  # taken already where the caller had to know first (runner._first_write)
            self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def lock_holder(path: Path) -> str:
    try:
        return path.read_text(errors="replace").strip()[:200] or "unknown process"
    except OSError:
        return "unknown process"


def check_not_locked(out: Path, shard: str) -> None:
    """Fail at once, naming the holder, when a run holds this shard's lock, or the lock of any shard
    of another split of this output (a run over other shards than ours would be refused later
    anyway, as a different job). A probe: it creates and writes nothing (a refusal leaves the output
    as it was); the run takes its lock for real after the pre-flight."""
    split = shard.partition("-of-")[2]
    labels = [p.name.removeprefix(".lock-") for p in out.glob(".lock-*")] if out.is_dir() else []
    for label in [shard] + sorted(x for x in labels if x.partition("-of-")[2] != split):
        if output_locked(out, label):
            lock = OutputLock(out, label)
            raise ResumeConflict(lock.busy(lock_holder(lock.path)))


def output_locked(out: Path, shard: str) -> bool:
    """Whether a run holds this shard's lock right now (for status and report; takes no lock)."""
    try:
        fd = os.open(out / f".lock-{shard}", os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # also drops the lock if we got it
    return False


def shard_parts(results: Path, shard: str) -> list[Path]:
    return [p for p in committed_parts(results) if p.name.startswith(f"part-{shard}-")]


def shard_totals(results: Path, shard: str) -> ShardTotals:
    """Committed rows and errors (by code) of one shard."""
    parts = shard_parts(results, shard)
    if not parts:
        return ShardTotals()
    table = ds.dataset([str(p) for p in parts], format="parquet").to_table(columns=["error_code"])
    by_code: dict[str, int] = {}
    for code in table.column("error_code").to_pylist():
        if code:
            by_code[code] = by_code.get(code, 0) + 1
    return ShardTotals(rows=table.num_rows, errors=sum(by_code.values()), errors_by_code=by_code)


def done_ids(results: Path, shard: str) -> set[str]:
    """Ids of this shard whose result is committed."""
    parts = shard_parts(results, shard)
    if not parts:
        return set()
    table = ds.dataset([str(p) for p in parts], format="parquet").to_table(columns=["id"])
    ids = set(table.column("id").to_pylist())
    if len(ids) != table.num_rows:  # a part rewritten by hand: resuming would count a row twice
        raise JobError(repeated_ids(parts))
    return ids


def repeated_ids(parts: list[Path], most: int = 5) -> str:
    """Which ids appear in more than one committed row, and the parts holding them (the first few)."""
    seen: dict[str, Path] = {}
    repeats: list[str] = []
    for part in parts:
        for id_ in pq.read_table(part, columns=["id"]).column("id").to_pylist():
            if id_ in seen and len(repeats) < most:
                repeats.append(f"id {id_!r} in {seen[id_].name} and {part.name}")
            seen.setdefault(id_, part)
    return (f"{parts[0].parent}: some ids appear in more than one committed row ({'; '.join(repeats)}); batch-run "
            "never writes an id twice, so a part was changed by hand: move the output aside (--fresh) and rerun")


def drop_error_rows(results: Path, shard: str, compression: str) -> int:
    """--retry-errors: rewrite each part of this shard without its error rows, so those ids run again.

    Each part is replaced atomically; at every moment every id is in at most one committed part.
    """
    import pyarrow.compute as pc

    from ..atomic import atomic_write

    dropped = 0
    for part in shard_parts(results, shard):
        table = pq.read_table(part)
        failed = pc.is_valid(table.column("error_code"))
        n = pc.sum(failed).as_py() or 0
        if not n:
            continue
        kept = table.filter(pc.invert(failed))
        if kept.num_rows == 0:
            atomic.remove(part)
        else:
            atomic_write(part, lambda tmp, kept=kept: pq.write_table(kept, tmp, compression=compression))
        dropped += n
    return dropped


def clear_shard_marker(out: Path, shard: str) -> None:
    atomic.remove(out / "shards" / f"{shard}.done")


def mark_shard_done(out: Path, shard: str, summary: Summary) -> None:
    write_json(out / "shards" / f"{shard}.done", summary.as_dict())


__all__ = ["OutputLock", "check_fingerprint", "check_output_dir", "done_ids", "drop_error_rows", "move_aside",
           "fingerprint_hash", "mark_shard_done", "clear_shard_marker"]


def fingerprint(job: JobSpec, shard: Shard, assignment: str | None, content: InputContent) -> dict[str, Any]:
    """What determines the results: model, rendering, sampling, the input's content, shard count, the
    prefix-affinity assignment of rows to shards where there is one (its digest), and the engine
    backend where it is not vLLM (so that outputs written before the setting existed still resume)."""
    source = {"dataset": job.input.dataset} if job.input.dataset is not None or job.input.format == "hf" else {}
    backend = {"engine_backend": job.engine.backend} if job.engine.backend != "vllm" else {}
    # an OpenAI batch file's results have a logprobs column (results_schema); outputs written before
    # it existed have other parts, so they do not resume (the conflict names this key)
    openai = {"logprobs_column": True} if job.input.format == "openai" else {}
    return {**({"assignment": assignment} if assignment else {}), **backend, **openai,
        # (reasoning_parser only when set: outputs of batch-runs before it keep their fingerprint)
        "model": job.model.model_dump(exclude={"reasoning_parser"} if job.model.reasoning_parser is None else None),
        # the render bounds decide only which rows fail (--retry-errors runs them again), not a result
        "prompt": job.prompt.model_dump(exclude={"group_by_prefix", "group_window", "prefix_affinity",
                                                 "render_timeout_s", "max_render_chars"}),
        "sampling": job.sampling.model_dump(),
        "input": {**source, **content.identity(), "id_column": job.input.id_column,
                  "keep_columns": job.input.keep_columns},
        "shards": shard.count,
    }


def check_output_writable(out: Path) -> None:
    probe = out
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise JobError(f"output.dir: cannot write to {out} ({probe} is not a writable folder)")


def check_output_folder(job: JobSpec, shard: Shard, job_file: Path | None) -> None:
    """Before the long pre-flight: the output folder is safe and writable, and no run holds this shard."""
    out = job.output_dir
    # (an input in object storage cannot be inside a local output folder)
    inputs = [f for f in resolve_files(job.input) if isinstance(f, Path)] if job.input.path is not None else []
    folder = Path(job.input.path) if job.input.path is not None and Path(job.input.path).is_dir() else None
    check_output_dir(out, inputs, job_file, folder)
    check_output_writable(out)
    check_not_locked(out, shard.label)


def open_shard(job: JobSpec, shard: Shard, report: InputReport, fresh: bool,
               retry_errors: bool) -> tuple[pa.Schema, set[str]]:
    """Under the shard's lock: foreign files, the fingerprint (and --fresh), the resume state. Every
    refusal comes before anything is moved or written. Returns the output's kept-column schema and
    the ids committed before."""
    out, label = job.output_dir, shard.label
    refuse_foreign(out, read_job_record(out))  # --fresh too: it moves only our files, these would stay
    wanted = fingerprint(job, shard, report.assignment, report.content)
    with writing(out, RESUME_ADVICE):
        if fresh and (moved := move_aside(out, {label}, wanted)):
            log.warning("moved the old results to %s", moved)
        kept = check_fingerprint(out, wanted, json.loads(job.model_dump_json()), report.kept_schema,
                                 report.content)
        done = done_ids(out / "results", label)
        if strays := done - report.shard_ids - report.ids_beyond_limit:
            raise ForeignFiles(stray_parts(out / "results", label, strays))
        sweep_temporaries(out, label)
        clear_shard_marker(out, label)
        if retry_errors and drop_error_rows(out / "results", label, job.output.compression):
            done = done_ids(out / "results", label)
    return kept, done


def stray_parts(results: Path, shard: str, strays: set[str]) -> list[str]:
    """The parts of this shard holding ids that are not this shard's rows of the input (whatever
    wrote them, they are not this job's answers), one line each, and what to do."""
    bad = []
    for part in shard_parts(results, shard):
        if found := strays & set(pq.read_table(part, columns=["id"]).column("id").to_pylist()):
            bad.append(f"{part}: ids that are not this shard's rows of the input ({', '.join(sorted(found)[:3])})")
    return bad[:MAX_NAMED] + [f"{results.parent} holds parts batch-run did not write for this job (above); "
                              "move them out of the folder, then run again."]
