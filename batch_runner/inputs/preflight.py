"""Pre-flight: one streaming pass over the input before any engine starts.

It finds every problem it can (malformed lines, missing or duplicate ids, columns that no row
has) and reports them together, and it learns the types of the columns to keep, so that every
results part gets the same schema. Memory holds the set of ids and a few counters, nothing more.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

import pyarrow as pa

from ..config import InputSpec, JobSpec
from ..engines import engine_arguments
from ..engines.models import context_length, load_tokenizer, resolve_model
from ..engines.reasoning import ReasoningSplitter, load_reasoning_parser
from ..errors import JobError, RowError
from .assignment import Assignment, Membership, Shard, assign
from .digest import InputContent, dataset_content, files_content
from .openai_batch import TOOLS, check_request
from .prompts import PromptRenderer
from .readers import INVALID, describe_source, iter_rows, row_id
from .sampling import check_sampling

MAX_PROBLEMS = 20


@dataclass
class InputReport:
    rows: int = 0  # rows this run covers (the input up to its limit)
    shard_rows: int = 0  # of those, rows this shard owns
    shard_ids: set[str] = field(default_factory=set)  # their ids: the run is done when all are committed
    rows_beyond_limit: int = 0  # rows of this shard past the limit: a limited run never completes the shard
    ids_beyond_limit: set[str] = field(default_factory=set)  # their ids: an earlier run's parts may hold them
    kept_schema: pa.Schema = field(default_factory=lambda: pa.schema([]))
    notes: list[str] = field(default_factory=list)  # decisions the user should hear of (widened columns)
    assignment: str | None = None  # prefix affinity: the digest of the rows' assignment to shards
    content: InputContent = field(default_factory=lambda: InputContent([]))  # for the resume fingerprint


INT64 = (-2**63, 2**63 - 1)
EXACT_FLOAT_INT = 2**53  # past this an int loses digits as a float


class _TypeTracker:
    """The Arrow type of a kept column, decided from every value of the whole input.

    One kind of value keeps its type; ints and floats together are floats; anything else (mixed
    kinds, nested values, ints past 64 bits) is stored as text, and ``note`` says why.
    """

    def __init__(self) -> None:
        self.kinds: set[str] = set()
        self.big_int = False  # an int that int64 cannot hold
        self.wide_int = False  # an int that float64 cannot hold exactly

    def add(self, value: Any) -> None:
        if value is None:
            return
        if isinstance(value, bool):
            self.kinds.add("bool")
        elif isinstance(value, int):
            self.kinds.add("int")
            self.big_int |= not INT64[0] <= value <= INT64[1]
            self.wide_int |= abs(value) > EXACT_FLOAT_INT
        elif isinstance(value, float):
            self.kinds.add("float")
        elif isinstance(value, str):
            self.kinds.add("str")
        elif isinstance(value, (bytes, bytearray)):
            self.kinds.add("bytes")
        elif isinstance(value, (list, tuple, dict)):
            self.kinds.add("nested")
        else:
            self.kinds.add(type(value).__name__)

    def arrow_type(self) -> pa.DataType:
        k = self.kinds
        if k == {"bool"}:
            return pa.bool_()
        if k == {"int"} and not self.big_int:
            return pa.int64()
        if k in ({"float"}, {"int", "float"}) and not self.wide_int:
            return pa.float64()
        if k == {"bytes"}:
            return pa.binary()
        return pa.string()

    def note(self, column: str) -> str | None:
        """Why a column is stored as text when its values are not all text, else None."""
        if not pa.types.is_string(self.arrow_type()) or self.kinds <= {"str"}:
            return None
        if self.big_int and self.kinds == {"int"}:
            why = "integers past 64 bits"
        elif self.wide_int and self.kinds == {"int", "float"}:
            why = "floats and integers past 2**53"
        else:
            why = " and ".join(sorted(self.kinds)) + " values"
        return f"input.keep_columns: column '{column}' holds {why}; it is stored as text (JSON for non-text values)"


def check_input(spec: InputSpec, columns: dict[str, str], owns: Callable[[str, dict], bool]) -> InputReport:
    """Stream the input once; raise one ``JobError`` listing every problem found.

    ``columns`` maps each column the job reads to what reads it, for the messages; ``owns`` says
    whether a row (id, data) is this shard's.
    """
    problems: list[str] = []
    seen: dict[str, int] = {}  # id -> input row number (an int: 1M ids must fit in little memory)
    roles = {c: "input.keep_columns" for c in spec.keep_columns}
    roles.update(columns)
    if spec.id_column:
        roles[spec.id_column] = "input.id_column"
    present: dict[str, int] = {c: 0 for c in roles}
    trackers = {c: _TypeTracker() for c in spec.keep_columns}
    report = InputReport()

    def problem(text: str) -> None:
        if len(problems) < MAX_PROBLEMS:
            problems.append(text)

    try:
        # The whole input, past any limit: the output's schema and its ids must not depend on how
        # much of it one run covers (a limited run, then a full one, write parts of one dataset).
        for row in iter_rows(spec, limited=False):
            within = spec.limit is None or row.index < spec.limit
            report.rows += within
            if INVALID in row.data:
                problem(row.data[INVALID])
                continue
            for c in present:
                if c in row.data:
                    present[c] += 1
            for c, t in trackers.items():
                t.add(row.data.get(c))
            rid = _checked_id(spec, row, problem)
            if rid is None:
                continue
            if rid in seen:
                problem(f"{row.where}: duplicate id {rid!r} (first at input row {seen[rid] + 1})")
                continue
            seen[rid] = row.index
            if owns(rid, row.data):
                if within:
                    report.shard_ids.add(rid)
                else:
                    report.rows_beyond_limit += 1
                    report.ids_beyond_limit.add(rid)
    except JobError as e:
        problems.extend(e.problems)  # a reader error ends the pass; report it with the rest
    source = describe_source(spec)
    if report.rows == 0 and not problems:
        problems.append(f"{source}: the input is empty (no rows)")
    for c, n in sorted(present.items()):
        if report.rows and n == 0:
            problems.insert(0, f"{source}: column '{c}' (used by {roles[c]}) is in no row")
    if problems:
        truncated = ["... (more problems not shown)"] if len(problems) >= MAX_PROBLEMS else []
        raise JobError(problems + truncated)
    report.shard_rows = len(report.shard_ids)
    report.kept_schema = pa.schema([pa.field(c, trackers[c].arrow_type()) for c in spec.keep_columns])
    report.notes = [n for c in spec.keep_columns if (n := trackers[c].note(c))]
    return report


def _checked_id(spec: InputSpec, row, problem) -> str | None:
    """The row's id as text, or None after reporting why it cannot be one."""
    rid = row_id(spec, row.index, row.data)
    if rid is None:
        problem(f"{row.where}: id column '{spec.id_column}' is missing or null")
        return None
    if isinstance(rid, (list, tuple, dict, bytes, bytearray)) or (isinstance(rid, float) and not math.isfinite(rid)):
        problem(f"{row.where}: id column '{spec.id_column}' holds {rid!r:.60}; ids must be text or numbers")
        return None
    rid = str(rid)
    try:
        rid.encode("utf-8")
    except UnicodeEncodeError:
        problem(f"{row.where}: id {rid!r} is not valid text (a lone surrogate escape)")
        return None
    return rid


def columns_read(job: JobSpec, renderer: PromptRenderer) -> dict[str, str]:
    """Columns the job reads (each must be in some row: a name in no row is a typo), and what reads them."""
    columns = {c: "the prompt" for c in renderer.columns}
    columns |= {c: f"sampling.columns.{field}" for field, c in job.sampling.columns.items()}
    if job.model.lora_column:
        columns[job.model.lora_column] = "model.lora_column"
    if job.input.format != "openai":  # there, a file of only chats has no 'prompt' column and vice versa
        for name in ("messages_column", "prompt_column"):
            if getattr(job.prompt, name):
                columns[getattr(job.prompt, name)] = f"prompt.{name}"
    return columns


def preview(spec: InputSpec, renderer: PromptRenderer, report: InputReport, n: int) -> dict[str, Any]:
    """--dry-run: the first ``n`` rows rendered, with their token counts (or their errors)."""
    shown = []
    for row in iter_rows(spec):
        if len(shown) >= n:
            break
        rid = str(row_id(spec, row.index, row.data))
        try:
            if spec.format == "openai":
                check_request(row.data)  # a line that cannot run as written: why, not a missing prompt
            r = renderer.render(row.data)
        except RowError as e:
            shown.append({"id": rid, "error": str(e)})
            continue
        shown.append({"id": rid, "prompt_tokens": len(r.token_ids), "max_tokens": r.max_tokens,
                      "prompt": renderer.tokenizer.decode(r.token_ids)})
    return {"rows": report.rows, "shard_rows": report.shard_rows, "prompts": shown, "report": report}


@dataclass
class Preflight:
    """What the pre-flight settled, before any output is touched or any engine starts."""

    model_path: str
    renderer: PromptRenderer
    report: InputReport
    membership: Membership  # which rows are this shard's (by id hash, or by prefix group)
    engine_args: dict[str, Any] = field(default_factory=dict)  # for vllm.LLM, checked against vLLM's EngineArgs
    dropped: list[str] = field(default_factory=list)  # engine options the installed vLLM lacks (not passed)
    reasoning: ReasoningSplitter | None = None  # model.reasoning_parser's parser, for the tokenizer


@dataclass
class ShardInput:
    """One shard's share of a pre-flight that its parent ran once for all its shards (executors):
    the shard's input report and the rows' assignment to shards. Picklable, for worker processes."""

    report: InputReport
    assignment: Assignment | None = None


def _setup(job: JobSpec) -> tuple[str, PromptRenderer, dict[str, Any], list[str], ReasoningSplitter | None]:
    """The model (converted once), its tokenizer and renderer, the job's sampling values, engine
    arguments and reasoning parser."""
    model_path = resolve_model(job.model.name)
    tokenizer = load_tokenizer(model_path, job)
    reasoning = load_reasoning_parser(job.model.reasoning_parser, tokenizer)  # an unknown name fails here
    renderer = PromptRenderer(job.prompt, tokenizer, context_length(model_path, job), job.sampling.max_tokens,
                              tools_column=TOOLS if job.input.format == "openai" else None)
    check_sampling(job.sampling)  # bad sampling values fail here, before anything starts
    # engine.extra keys vLLM does not know fail here too: a refusal must come before --fresh moves anything
    engine_args, dropped = engine_arguments(model_path, job.model, job.engine)
    return model_path, renderer, engine_args, dropped, reasoning


def preflight(job: JobSpec, shard: Shard, given: ShardInput | None = None) -> Preflight:
    """The model (converted once), its tokenizer and the prompt renderer, the job's own sampling
    values and engine arguments, the rows' assignment to shards, one pass over the whole input, and
    the input's content digest (hashed in a thread meanwhile: hashlib lets go of the GIL).

    ``given``: the shard's input report and assignment from its parent's pre-flight (``preflight_shards``);
    then the input is not read here at all."""
    if given is not None:
        model_path, renderer, engine_args, dropped, reasoning = _setup(job)
        return Preflight(model_path, renderer, given.report, Membership(shard, given.assignment, renderer.prefix_key),
                         engine_args, dropped, reasoning)
    return _preflight(job, shard)[0]


def preflight_shards(job: JobSpec, shards: list[Shard]) -> tuple[Preflight, list[ShardInput]]:
    """One pre-flight for shards that run side by side (of one count): one pass over the input that
    notes each row's shard, then each shard's share of the report. The Preflight's own report
    covers the rows of all of them."""
    owner: dict[str, int] = {}

    wanted = {s.index for s in shards}

    def recorder(membership: Membership) -> Callable[[str, dict], bool]:
        def owns(rid: str, data: dict) -> bool:  # one owner lookup per row, whatever the number of shards
            index = membership.owner(rid, data)
            owner[rid] = index if index in wanted else -1
            return owner[rid] >= 0
        return owns

    pre, assignment = _preflight(job, shards[0], recorder)
    return pre, [ShardInput(_share(pre.report, owner, s.index), assignment) for s in shards]


def _share(report: InputReport, owner: dict[str, int], index: int) -> InputReport:
    ids = {i for i in report.shard_ids if owner[i] == index}
    beyond = {i for i in report.ids_beyond_limit if owner[i] == index}
    return replace(report, shard_ids=ids, shard_rows=len(ids), ids_beyond_limit=beyond,
                   rows_beyond_limit=len(beyond), notes=list(report.notes))


def _preflight(job: JobSpec, shard: Shard, recorder: Callable[[Membership], Callable[[str, dict], bool]] | None = None
               ) -> tuple[Preflight, Assignment | None]:
    pool = ThreadPoolExecutor(1, thread_name_prefix="batch-run-digest")
    try:
        hashing = pool.submit(files_content, job.input)
        model_path, renderer, engine_args, dropped, reasoning = _setup(job)
        p = job.prompt
        assignment = assign(job, renderer.prefix_key, shard.count) \
            if p.group_by_prefix and p.prefix_affinity and shard.count > 1 else None
        membership = Membership(shard, assignment, renderer.prefix_key)
        owns = recorder(membership) if recorder else membership.owns
        report = check_input(job.input, columns_read(job, renderer), owns)
        report.assignment = assignment.digest if assignment else None
        report.content = hashing.result()  # bounded: one read of files the pass above has just read
    except BaseException:  # a refusal or a stop must not wait for the hash of a large input to end
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown()
    if job.input.dataset is not None or job.input.format == "hf":
        report.content = dataset_content(job.input)
    return Preflight(model_path, renderer, report, membership, engine_args, dropped, reasoning), assignment
