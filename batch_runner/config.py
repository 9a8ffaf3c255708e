"""The job file: a typed spec, validated once at load.

A job file has six sections (model, engine, input, prompt, sampling, output). Unknown keys fail
with the nearest valid name, bad values name the key and what is allowed, and ``${VAR}`` in a
value is expanded from the environment. vLLM's own options pass through ``extra`` mappings and are
left to vLLM to judge.
"""

from __future__ import annotations

import difflib
import logging
import os
import re
import reprlib
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import JobError

Auto = Literal["auto"]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


NAME_MAX, PATH_MAX = 255, 4096  # bytes: Linux's longest file name and path


def _fits_a_file_system(value: str | None) -> str | None:
    """A path (or a name used as one) that no file system call can refuse for its length (ENAMETOOLONG)."""
    if value is None:
        return value
    size = lambda text: len(text.encode("utf-8", "surrogatepass"))  # noqa: E731
    if size(value) > PATH_MAX or any(size(part) > NAME_MAX for part in value.split("/")):
        raise ValueError(f"too long for a path: at most {NAME_MAX} bytes a name, {PATH_MAX} in all")
    return value


REPLACED_SUFFIX = 32  # room for ".replaced-20261130T020641" (and a counter), which --fresh appends to a folder


def _fits_with_room_to_move_aside(value: str | None) -> str | None:
    """An output folder, and the name --fresh gives it when it moves it aside, both within the limits."""
    value = _fits_a_file_system(value)
    if value is not None and len(value.rstrip("/").rsplit("/", 1)[-1].encode("utf-8", "surrogatepass")) \
            > NAME_MAX - REPLACED_SUFFIX:
        raise ValueError(f"the folder's name is too long: at most {NAME_MAX - REPLACED_SUFFIX} bytes, so that "
                         "--fresh can move it aside as NAME.replaced-TIME")
    return value


def _positive_or_auto(v: int | str) -> int | str:
    if isinstance(v, int) and v < 1:
        raise ValueError("must be a positive integer or 'auto'")
    return v


class ModelSpec(_Section):
    name: str = Field(description="An embedded model alias (smollm2-135m-instruct), a Hugging Face id or a local folder.")
    tokenizer: str | None = Field(None, description="Tokenizer id or folder, if not the model's own.")
    paths_fit = field_validator("name", "tokenizer")(_fits_a_file_system)
    dtype: str = Field("auto", description="Weights and activations dtype: auto, bfloat16, float16, float32.")
    max_model_len: int | None = Field(None, gt=0, description="Context length; prompt plus output must fit.")
    quantization: str | None = Field(None, description="vLLM quantization method (awq, gptq, fp8, gguf...).")
    kv_cache_dtype: str = Field("auto", description="KV cache dtype: auto, fp8...")
    load_format: str = Field("auto", description="auto, safetensors, dummy (random weights, for benchmarks)...")
    trust_remote_code: bool = Field(False, description="Allow model code from the model folder.")
    revision: str | None = Field(None, description="Model revision (branch, tag or commit) for hub ids.")
    seed: int = Field(0, description="Engine seed, for reproducible sampling.")
    lora_adapters: dict[str, str] = Field(
        default_factory=dict, description="LoRA adapters by name: {name: local folder (PEFT format)}.")
    lora: str | None = Field(None, description="The adapter every row uses (a name from lora_adapters); default none.")
    lora_column: str | None = Field(None, description="Column naming each row's adapter (overrides lora; null = none).")
    reasoning_parser: str | None = Field(
        None, description="A reasoning model's vLLM reasoning parser (deepseek_r1, qwen3...): the reasoning goes "
                          "into the 'reasoning' column, the answer into 'output'; default none.")

    @model_validator(mode="after")
    def _known_lora(self) -> "ModelSpec":
        if self.lora is not None and self.lora not in self.lora_adapters:
            raise ValueError(f"lora: {excerpt(self.lora)} is not in lora_adapters "
                             f"({_cut(', '.join(self.lora_adapters)) or 'none'})")
        return self


class EngineSpec(_Section):
    RUNNER_KEYS: ClassVar[set[str]] = {"backend", "profile", "extra", "stall_timeout_s", "max_restarts"}  # not vLLM's

    backend: Literal["vllm", "fake"] = Field(
        "vllm", description="The engine: vllm, or fake (no model: canned answers, for tests and examples; "
                            "its settings go in engine.extra).")
    profile: Literal["throughput", "balanced", "latency"] = Field(
        "throughput", description="Preset of scheduler settings; the keys below override it.")
    gpu_memory_utilization: float | None = Field(None, gt=0, le=1, description="Share of GPU memory vLLM may take.")
    max_num_seqs: int | Auto | None = Field(
        None, description="Most sequences scheduled at once; auto = sized from the job's token counts and the "
                          "device's KV capacity (the default with the throughput profile on a GPU; the other "
                          "profiles' default is their fixed value).")
    max_num_batched_tokens: int | None = Field(None, gt=0, description="Token budget of one scheduler step.")
    enable_prefix_caching: bool = Field(True, description="Reuse the KV cache of shared prompt prefixes.")
    tensor_parallel_size: int | Auto = Field(1, description="GPUs one model is split over; auto = all visible.")
    enforce_eager: bool | None = Field(None, description="Skip CUDA graphs (faster start, slower decode).")
    extra: dict[str, Any] = Field(default_factory=dict, description="Any other vllm.LLM engine argument (the fake backend's settings).")
    stall_timeout_s: float | None = Field(
        None, gt=0, le=86400, description="The engine is restarted when no step ends for this long with requests "
                                          "in flight (a hung engine); default 120 s, 900 s on vLLM's CPU build (its "
                                          "steps are long). Its process dying is seen within a second.")
    max_restarts: int = Field(
        2, ge=0, le=100, description="Engine restarts allowed in one run (after a death or a stall); past them the "
                                     "run ends with exit 1, finished rows saved.")

    @field_validator("tensor_parallel_size", "max_num_seqs")
    @classmethod
    def _positive(cls, v: int | str | None) -> int | str | None:
        return v if v is None else _positive_or_auto(v)

    @property
    def sized_from_job(self) -> bool:
        """Whether max_num_seqs is chosen from the job (engines.sizing): auto, or unset with the
        throughput profile, and not set in engine.extra either."""
        unset = self.max_num_seqs is None and self.profile == "throughput"
        return self.backend == "vllm" and (self.max_num_seqs == "auto" or unset) and "max_num_seqs" not in self.extra


class InputSpec(_Section):
    path: str | None = Field(None, description="A .jsonl/.json/.parquet file, a glob or a directory of them; "
                                 "or an object-store URL (s3://, gs://, hf://): an object, a prefix or a glob of keys.")
    paths_fit = field_validator("path")(_fits_a_file_system)
    format: Literal["auto", "jsonl", "parquet", "hf", "openai"] = Field(
        "auto", description="Input format; auto = by suffix; openai = an OpenAI batch input file (JSONL).")
    dataset: dict[str, Any] | None = Field(
        None, description="Hugging Face dataset: datasets.load_dataset arguments, or {path: saved_dir}.")
    id_column: str | None = Field(None, description="Column holding each row's id; default: the row index.")
    keep_columns: list[str] = Field(default_factory=list, description="Input columns copied into the results.")
    limit: int | None = Field(None, gt=0, description="Only the first N rows.")

    @field_validator("keep_columns")
    @classmethod
    def _no_clash(cls, v: list[str]) -> list[str]:
        from .records import RESULT_NAMES

        clash = [c for c in v if c in RESULT_NAMES - {"reasoning"}]  # (reasoning: only with a parser, below)
        if clash:  # a second column of the same name makes every reader fail on the output
            raise ValueError(f"{', '.join(map(repr, clash))} is the name of a result column "
                             f"({', '.join(sorted(RESULT_NAMES))}); the id is always in column 'id' "
                             "(input.id_column); to keep another such column, copy it under a new name in the input")
        repeated = sorted({c for c in v if v.count(c) > 1})
        if repeated:
            raise ValueError(f"{', '.join(map(repr, repeated))} is listed more than once")
        return v

    @model_validator(mode="after")
    def _one_source(self) -> "InputSpec":
        if (self.path is None) == (self.dataset is None):
            raise ValueError("give exactly one of input.path or input.dataset")
        if self.format == "openai":  # custom_id is the id; url says how to shape the OpenAI output
            if self.id_column is None:  # (each assignment validates again: assign only what changes)
                self.id_column = "custom_id"
            if "url" not in self.keep_columns:
                self.keep_columns = [*self.keep_columns, "url"]
        return self


class PromptSpec(_Section):
    system: str | None = Field(None, description="Shared system prompt; identical bytes for every row.")
    system_column: str | None = Field(None, description="Column holding a per-row system prompt (overrides system).")
    template: str | None = Field(
        None, description="The user message, a Jinja template over the row's columns: '{{ text }}'.")
    messages_column: str | None = Field(
        None, description="Column holding a whole chat (a list of {role, content}), rendered as is.")
    prompt_column: str | None = Field(None, description="Column holding raw prompt text: no chat template.")
    chat_template: str | None = Field(None, description="Override the model's chat template (Jinja text).")
    on_too_long: Literal["error", "truncate", "shrink"] = Field(
        "error", description="A prompt that leaves no room for max_tokens: error row, cut the prompt, or lower max_tokens.")
    group_by_prefix: bool = Field(True, description="Submit rows sharing a system prompt together (prefix cache).")
    group_window: int = Field(8192, gt=0, description="Rows read ahead and grouped by prefix at a time.")
    prefix_affinity: bool = Field(True, description="Sharded, with group_by_prefix: the rows of one prefix go to one "
                                                    "shard (else a hash of the id spreads them).")
    expand_env: bool = Field(
        False, description="Expand ${VAR} in system, template and chat_template (default: prompt text is sent as written).")
    render_timeout_s: float = Field(
        10.0, gt=0, le=3600, description="Longest a row's templates may take to render; past it the row is a "
                                         "template_error row.")
    max_render_chars: int = Field(
        4_000_000, gt=0, le=1_000_000_000, description="Longest text (and largest value) a row's templates may "
                                                       "build; past it the row is a template_error row.")


class SamplingSpec(_Section):
    max_tokens: int = Field(256, gt=0, description="Most tokens generated per row.")
    n: int = Field(1, gt=0, description="Samples per row; with n > 1 all are stored in the list column 'samples'.")
    json_schema: dict[str, Any] | None = Field(
        None, description="Constrain output to this JSON schema; the parsed value is validated and stored.")
    columns: dict[str, str] = Field(
        default_factory=dict, description="Sampling fields taken per row from columns: {field: column}.")
    temperature: float = Field(0.0, ge=0, description="0 = greedy.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling mass.")
    top_k: int | None = Field(None, description="Sample from the k most likely tokens.")
    min_tokens: int = Field(0, ge=0, description="Fewest tokens generated before a stop may end the row.")
    seed: int | None = Field(None, description="Per-request seed.")
    stop: list[str] = Field(default_factory=list, description="Strings that end generation.")
    presence_penalty: float = Field(0.0, description="Penalty on tokens already present.")
    frequency_penalty: float = Field(0.0, description="Penalty growing with a token's count.")
    repetition_penalty: float = Field(1.0, gt=0, description="Multiplicative repetition penalty.")
    ignore_eos: bool = Field(False, description="Keep generating past end-of-sequence (benchmarks).")
    extra: dict[str, Any] = Field(default_factory=dict, description="Any other vllm.SamplingParams field.")


class OutputSpec(_Section):
    dir: str | None = Field(None, description="Output directory; default outputs/<job name>. "
                                              "Or s3://bucket/folder (docs/operations.md, Object storage).")
    batch_size: int = Field(256, gt=0, description="Rows per batch: its rows land as one part when it completes.")
    compression: str = Field("zstd", description="Parquet compression codec.")
    flush_s: float = Field(5.0, gt=0, description="A finished row is committed at most this many seconds after it "
                                                  "finishes, even while the rest of its batch runs.")
    log_format: Literal["text", "json"] = Field("text", description="Per-batch log lines on stderr.")
    openai: bool = Field(False, description="Also write OpenAI batch output files (openai/results.jsonl, errors.jsonl).")
    gpu_hour_price: float | None = Field(
        None, ge=0, description="Price of one GPU-hour: cost figures in the summary, report and metrics.")
    metrics_dir: str | None = Field(
        None, description="node_exporter textfile directory: Prometheus metrics written there during and after the run.")
    paths_fit = field_validator("metrics_dir")(_fits_a_file_system)
    dir_fits = field_validator("dir")(_fits_with_room_to_move_aside)


# "auto" and the executors' names (executors.EXECUTORS; a test checks that the two agree: config
# must not import the executors, which sit above it). IndexedKind: the cloud schedulers whose array
# index is the shard (executors/indexed.py), as Slurm's is.
IndexedKind = Literal["aws_batch", "gcp_batch", "kubernetes"]
ExecutorKind = Literal["auto", "local", "node", "slurm", "ray", IndexedKind]


class ExecutorSpec(_Section):
    kind: ExecutorKind = Field(
        "auto", description="Where the shards run: local (this process; with executor.data_parallel, one process per "
                            "engine), node (several engines on this node), slurm (the array task's shard), ray (Ray "
                            "tasks), aws_batch, gcp_batch, kubernetes (the array task's shard: AWS Batch, Google Cloud "
                            "Batch, a Kubernetes Indexed Job); auto: the scheduler whose array variables are set "
                            "(refused when two are), else local.")
    data_parallel: int | Auto = Field(1, description="Engine processes on this node, one GPU each, each on its own "
                                                     "shard (formerly engine.data_parallel).")
    ray_address: str = Field("auto", description="Ray: the cluster to join, as ray.init(address=...) takes it.")
    shards: int | Auto = Field("auto", description="Ray: how many shards (one task each); auto: one per engine that "
                                                   "the cluster's GPUs hold. Kubernetes: the Indexed Job's completions "
                                                   "(auto: from the variable BATCH_RUN_SHARDS).")
    max_retries: int = Field(3, ge=0, description="Ray: how often a shard's task is retried after its worker is lost.")

    @field_validator("shards")
    @classmethod
    def _positive(cls, v):
        if v != "auto" and v < 1:
            raise ValueError("must be 'auto' or at least 1")
        return v

    data_parallel_positive = field_validator("data_parallel")(_positive_or_auto)


class JobSpec(_Section):
    name: str = Field(description="Job name; default output directory is outputs/<name>.")
    description: str | None = Field(None, description="Free text.")
    model: ModelSpec
    engine: EngineSpec = Field(default_factory=EngineSpec)
    input: InputSpec
    prompt: PromptSpec = Field(default_factory=PromptSpec)
    sampling: SamplingSpec = Field(default_factory=SamplingSpec)
    output: OutputSpec = Field(default_factory=OutputSpec)
    executor: ExecutorSpec = Field(default_factory=ExecutorSpec)

    @model_validator(mode="before")
    @classmethod
    def _moved_keys(cls, data: Any) -> Any:
        """engine.data_parallel (before executor.data_parallel existed) reads as executor.data_parallel;
        the caller's mappings are copied, not changed."""
        engine = data.get("engine") if isinstance(data, dict) else None
        if not isinstance(engine, dict) or "data_parallel" not in engine:
            return data
        executor = data.get("executor") or {}
        if not isinstance(executor, dict):
            return data  # pydantic names the wrong type
        if "data_parallel" in executor:
            raise ValueError("give executor.data_parallel only (engine.data_parallel is its former name)")
        logging.getLogger("batch_runner").warning("engine.data_parallel is now executor.data_parallel; read as such")
        engine = dict(engine)
        return {**data, "engine": engine, "executor": {**executor, "data_parallel": engine.pop("data_parallel")}}

    @model_validator(mode="after")
    def _one_prompt_source(self) -> "JobSpec":
        p = self.prompt
        if self.input.format == "openai":  # rows carry 'messages' (chat) or 'prompt' (completions)
            # (the pair it fills in below is accepted back: a worker gets the job as its JSON dump)
            if p.template or (p.messages_column, p.prompt_column) not in ((None, None), ("messages", "prompt")):
                raise ValueError("prompt: an OpenAI batch file brings its own messages; "
                                 "leave out prompt.template, messages_column and prompt_column")
            if p.messages_column is None:
                p.messages_column, p.prompt_column = "messages", "prompt"
        elif sum(x is not None for x in (p.template, p.messages_column, p.prompt_column)) != 1:
            raise ValueError("prompt: give exactly one of template, messages_column or prompt_column")
        if self.model.reasoning_parser is not None and "reasoning" in self.input.keep_columns:
            raise ValueError("input.keep_columns: 'reasoning' is the name of a result column with "
                             "model.reasoning_parser; to keep it, copy it under a new name in the input")
        return self

    @field_validator("name")
    @classmethod
    def _safe_name(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", v):
            raise ValueError("use letters, digits, '.', '_' and '-' only, starting with a letter or digit")
        return _fits_with_room_to_move_aside(v)  # the default output folder is outputs/<name>

    @property
    def output_dir(self) -> Path:
        return Path(self.output.dir or f"outputs/{self.name}")


_ENV = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)")

# The only values in which ${VAR} and $VAR are expanded ("*": every value of that mapping); prompt
# text is data and is sent as written unless prompt.expand_env asks otherwise.
EXPANDED_KEYS = [("model", "name"), ("model", "tokenizer"), ("model", "lora_adapters", "*"),
                 ("input", "path"), ("input", "dataset", "*"), ("output", "dir"), ("output", "metrics_dir"),
                 ("executor", "ray_address")]
PROMPT_KEYS = [("prompt", "system"), ("prompt", "template"), ("prompt", "chat_template")]


def expand_env(value: str, where: str, problems: list[str]) -> str:
    """Expand ${VAR} and $VAR from the environment; $$ is a literal $; an unset variable is a problem."""
    def repl(m: re.Match) -> str:
        if m.group(0) == "$$":
            return "$"
        var = m.group(1) or m.group(2)
        if var not in os.environ:
            problems.append(f"{where}: environment variable ${_cut(var, 60)} is not set "
                            "(write $$ for a literal $)")
            return m.group(0)
        return os.environ[var]

    return _ENV.sub(repl, value)


def _expand_keys(data: dict, problems: list[str]) -> None:
    keys = EXPANDED_KEYS + (PROMPT_KEYS if (data.get("prompt") or {}).get("expand_env") is True else [])
    for path in keys:
        node = data
        for part in path[:-1]:
            node = node.get(part) if isinstance(node, dict) else None
        if not isinstance(node, dict):
            continue
        names = list(node) if path[-1] == "*" else [path[-1]]
        for name in names:
            if isinstance(node.get(name), str):
                node[name] = expand_env(node[name], ".".join([*path[:-1], str(name)]), problems)


MAX_JOB_FILE_BYTES = 1 << 20  # a job file is settings and prompts; past this it is a mistake or an attack
MAX_ALIAS_EXPANSION = 100_000  # values plus characters that YAML aliases may add to a job file


class _JobLoader(yaml.SafeLoader):
    """PyYAML's safe loader, noting where each alias is used: an alias shares its anchor's node, so
    nested anchors (an "alias bomb") compose small and expand exponentially in whatever walks them."""

    def __init__(self, stream) -> None:
        super().__init__(stream)
        self.aliases: list[tuple[yaml.Node, yaml.Mark]] = []

    def compose_node(self, parent, index):
        mark = self.peek_event().start_mark if self.check_event(yaml.AliasEvent) else None
        node = super().compose_node(parent, index)
        if mark is not None:
            self.aliases.append((node, mark))
        return node


def _expanded_size(node: yaml.Node, memo: dict[int, int], path: set[int]) -> int:
    """Values and scalar characters of ``node`` with every alias written out (memoized by node);
    ValueError if it holds itself."""
    if id(node) in memo:
        return memo[id(node)]
    if id(node) in path:
        raise ValueError("a recursive value")
    path.add(id(node))
    if isinstance(node, yaml.ScalarNode):
        size = 1 + len(node.value)
    elif isinstance(node, yaml.MappingNode):
        size = 1 + sum(_expanded_size(k, memo, path) + _expanded_size(v, memo, path) for k, v in node.value)
    else:
        size = 1 + sum(_expanded_size(item, memo, path) for item in node.value)
    path.discard(id(node))
    memo[id(node)] = size
    return size


def _check_aliases(aliases: list[tuple[yaml.Node, yaml.Mark]], where: str) -> None:
    """Refuse a document that its aliases expand by more than MAX_ALIAS_EXPANSION, before anything
    (validation, messages, job.json) walks the expanded values."""
    if not aliases:
        return
    memo: dict[int, int] = {}
    try:
        added = sum(_expanded_size(node, memo, set()) for node, _ in aliases)
    except ValueError:
        raise JobError(f"{where}: a YAML alias refers to a value that holds it; a job file needs no "
                       "recursive values") from None
    if added > MAX_ALIAS_EXPANSION:
        node, mark = max(aliases, key=lambda a: memo[id(a[0])])
        raise JobError(f"{where}, line {mark.line + 1}: YAML aliases expand the job file by {added:,} values and "
                       f"characters, more than the {MAX_ALIAS_EXPANSION:,} allowed (the alias here adds "
                       f"{memo[id(node)]:,}); write the values out, or use fewer nested aliases")


def _load_yaml(text: str, where: str) -> tuple[Any, yaml.Node | None]:
    """The document and its node graph (for line numbers), its alias expansion bounded."""
    loader = _JobLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None, None
        _check_aliases(loader.aliases, where)
        return loader.construct_document(node), node
    except RecursionError:
        raise JobError(f"{where}: values nested too deeply") from None
    finally:
        loader.dispose()


_EXCERPT = reprlib.Repr()  # stops at its limits: it never walks the whole of a large value
_EXCERPT.maxlevel, _EXCERPT.maxdict, _EXCERPT.maxlist, _EXCERPT.maxstring, _EXCERPT.maxother = 2, 4, 4, 60, 60


def _cut(text: str, limit: int = 300) -> str:
    """Text that may quote a user's value (a key, a name, a list of names), cut short."""
    return text if len(text) <= limit else f"{text[:limit - 3]}..."


def excerpt(value: Any, limit: int = 80) -> str:
    """A short, printable excerpt of a user's value for a message: never the whole of a large one."""
    return _cut(_EXCERPT.repr(value), limit)


def _key_lines(node: yaml.Node, prefix: tuple = (), out: dict | None = None,
               repeated: list[str] | None = None) -> dict[tuple, int]:
    """Map each mapping key's path to its 1-based line in the YAML file, for error messages.

    A key given twice in one mapping goes into ``repeated`` (YAML loaders silently keep the last).
    """
    out = {} if out is None else out
    if isinstance(node, yaml.MappingNode):
        for key, val in node.value:
            path = prefix + (key.value,)
            line = key.start_mark.line + 1
            if path in out and repeated is not None:
                name = _cut(".".join(map(str, path)), 100)
                repeated.append(f"line {line}: key '{name}' is given twice "
                                f"(first at line {out[path]}); merge the two into one")
            else:
                out[path] = line
            _key_lines(val, path, out, repeated)
    return out


def _model_for(loc: tuple) -> type[BaseModel] | None:
    model: type[BaseModel] = JobSpec
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        ann = getattr(field, "annotation", None) if field else None
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return None
        model = ann
    return model


def _describe(err: dict, source: str, lines: dict[tuple, int]) -> str:
    loc = tuple(str(p) for p in err["loc"])
    key = ".".join(loc) or "(top level)"
    line = next((lines[loc[:i]] for i in range(len(loc), 0, -1) if loc[:i] in lines), None)
    where = f"{source}, line {line}" if line else source
    if err["type"] == "extra_forbidden":
        model = _model_for(loc)
        valid = sorted(model.model_fields) if model else []
        close = difflib.get_close_matches(loc[-1][:100], valid, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else f"; valid keys: {', '.join(valid)}"
        return f"{where}: unknown key '{_cut(key, 100)}'{hint}"
    if err["type"] == "missing":
        return f"{where}: missing required key '{_cut(key, 100)}'"
    msg = err["msg"].removeprefix("Value error, ")
    return f"{where}: {_cut(key, 100)}: {_cut(msg)} (got {excerpt(err.get('input'))})"



def parse_override(text: str) -> tuple[list[str], Any]:
    """Parse ``--set section.key=value``; the value is read as YAML (numbers, booleans, lists)."""
    if "=" not in text or not text.split("=", 1)[0].strip():
        raise JobError(f"--set {excerpt(text)}: expected section.key=value")
    key, raw = text.split("=", 1)
    try:
        value = _load_yaml(raw, f"--set {_cut(key, 100)}")[0] if raw.strip() else ""
    except yaml.YAMLError as e:
        raise JobError(f"--set {_cut(key, 100)}: value {excerpt(raw)} is not valid YAML: "
                       f"{_cut(str(getattr(e, 'problem', None) or e))}") from e
    return key.strip().split("."), value


def _apply_overrides(data: dict, overrides: list[str]) -> None:
    for text in overrides:
        path, value = parse_override(text)
        node = data
        for part in path[:-1]:
            nxt = node.setdefault(part, {})
            if not isinstance(nxt, dict):
                raise JobError(f"--set {_cut('.'.join(path), 100)}: '{_cut(part, 60)}' is not a section")
            node = nxt
        node[path[-1]] = value


def load_job(path: str | Path, overrides: list[str] = ()) -> JobSpec:
    """Read, expand and validate a job file; every problem found goes into one ``JobError``."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_JOB_FILE_BYTES + 1)
    except OSError as e:
        raise JobError(f"{path}: cannot read job file: {e.strerror}") from e
    if len(raw) > MAX_JOB_FILE_BYTES:
        raise JobError(f"{path}: the job file is larger than {MAX_JOB_FILE_BYTES >> 20} MiB; a job file holds "
                       "settings and prompts (the rows go in the input)")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise JobError(f"{path}: byte {e.start} is not UTF-8; save the job file as UTF-8") from e
    try:
        data, node = _load_yaml(text, str(path))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f", line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise JobError(f"{path}{line}: YAML syntax error: {_cut(str(getattr(e, 'problem', None) or e))}") from e
    if not isinstance(data, dict):
        raise JobError(f"{path}: expected a mapping of sections (model, input, prompt...), got {type(data).__name__}")
    repeated: list[str] = []
    lines = _key_lines(node, repeated=repeated) if node else {}
    if repeated:
        raise JobError([f"{path}, {r}" for r in repeated])
    data = {k: (v if v is not None else {}) for k, v in data.items()}
    _apply_overrides(data, list(overrides))
    problems: list[str] = []
    _expand_keys(data, problems)
    try:
        job = JobSpec.model_validate(data)
    except ValidationError as e:
        problems += [_describe(err, str(path), lines) for err in e.errors()]
        raise JobError(problems) from e
    if problems:
        raise JobError([f"{path}: {p}" for p in problems])
    return job
