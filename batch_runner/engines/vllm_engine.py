"""vLLM behind the engine protocol (``base.Engine``): submit, poll, abort, close.

``VllmEngine`` drives vLLM's offline engine (``vllm.LLM``) request by request, the way
``LLM.generate`` does inside, but lets the runner keep the queue topped up while it writes
finished batches, so the engine never drains between batches. vLLM's types (``SamplingParams``,
``LoRARequest``, ``RequestOutput``) stay in this module; the other stages see ``records``. vLLM is
imported lazily: the CLI's help, validation and the pure-logic tests start without it.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import logging
import os
import signal
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

import psutil

from ..config import EngineSpec, ModelSpec
from ..errors import EngineError, Interrupted, JobError, RowError
from ..records import Completion, EngineCounters, EngineSizing, LoraAdapter, Request, Sample, TokenLogprob
from .mainscript import children_skip_main
from .sizing import RowTokens, choose, device_bytes, kv_tokens_estimate, shape_of, weight_bytes
from .structured import check_schema

log = logging.getLogger("batch_runner")

# After the throughput-tuning table of vLLM's performance guide, in the options vLLM V1 has (the
# guide's scheduler_delay_factor and use_v2_block_manager are V0's: gone, and not passed).
# disable_log_stats=False keeps the engine's counters, which batch-run's timeline reads.
PROFILES: dict[str, dict[str, Any]] = {
    "throughput": dict(max_num_seqs=512, max_num_batched_tokens=32768, gpu_memory_utilization=0.95),
    "balanced": dict(max_num_seqs=256, max_num_batched_tokens=16384, gpu_memory_utilization=0.90),
    "latency": dict(max_num_seqs=32, max_num_batched_tokens=8192, gpu_memory_utilization=0.85),
}
STATS = dict(disable_log_stats=False)
VLLM_DEFAULT_MAX_NUM_SEQS = 256  # what vLLM schedules at once when the engine arguments do not say


def max_num_seqs(args: dict[str, Any]) -> int:
    """The sequences the engine schedules at once, for these engine arguments."""
    return int(args.get("max_num_seqs") or VLLM_DEFAULT_MAX_NUM_SEQS)


# On the CPU backend: gpu_memory_utilization is a share of RAM reserved for the KV cache, and
# torch.compile's warm-up takes minutes on a small machine for no gain (seen on 2 AVX2 cores:
# 257 s start and 16.8 output tok/s compiled, 29 s and 18.8 tok/s eager).
CPU_OVERRIDES: dict[str, Any] = dict(gpu_memory_utilization=0.25, enforce_eager=True, max_num_batched_tokens=4096)
# At most this many sequences at once on the CPU: with 512 the Quick start's 240 rows ran as one
# wave and every batch committed in the last second (47 s after the engine was ready); with 64 the
# first batch committed after 25 s, at 0.87-0.92x the throughput (bench/experiments/cpu_wave.py, 2 cores).
CPU_MAX_NUM_SEQS = 64


def cpu_has_bf16() -> bool:
    """Whether the CPU computes bf16 natively; without it bf16 is slower than float32 (seen: under
    half the speed on AVX2)."""
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        return True
    return "avx512_bf16" in flags or "amx_bf16" in flags


def vllm_version() -> str:
    try:
        from importlib.metadata import version

        import vllm
        return getattr(vllm, "__version__", None) or version("vllm")
    except Exception:  # version lookup is informational only
        return "unknown"


TESTED_VLLM = ((0, 26), (0, 32))  # oldest and newest minor versions batch-run is tested with
ANY_VLLM_ENV = "BATCH_RUNNER_ANY_VLLM"


def check_vllm_version() -> None:
    """Refuse a vLLM outside the tested range (its engine API moves between minor versions)."""
    version = vllm_version()
    try:
        minor = tuple(int(x) for x in version.split("+")[0].split(".")[:2])
    except ValueError:
        return  # a development build: let it try
    if not TESTED_VLLM[0] <= minor <= TESTED_VLLM[1] and os.environ.get(ANY_VLLM_ENV) != "1":
        lo, hi = (".".join(map(str, v)) for v in TESTED_VLLM)
        raise JobError(f"vLLM {version} is installed; batch-run is tested with vLLM {lo} to {hi}. Install one "
                       f"(./setup.sh does), or set {ANY_VLLM_ENV}=1 to try this one anyway.")


def is_cpu_platform() -> bool:
    from vllm.platforms import current_platform

    return current_platform.is_cpu()


def visible_gpus() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def engine_arguments(model_path: str, model: ModelSpec, engine: EngineSpec) -> tuple[dict[str, Any], list[str]]:
    """The keyword arguments for ``vllm.LLM``: profile, then the job's keys, then ``extra``.

    Returns the arguments and a list of those dropped because the installed vLLM lacks them.
    """
    from vllm.engine.arg_utils import EngineArgs

    cpu = is_cpu_platform()
    args: dict[str, Any] = dict(PROFILES[engine.profile]) | STATS
    if cpu:
        args.update(CPU_OVERRIDES)
        args["max_num_seqs"] = min(args["max_num_seqs"], CPU_MAX_NUM_SEQS)
    explicit = engine.model_dump(exclude=EngineSpec.RUNNER_KEYS, exclude_none=True)
    if explicit.get("max_num_seqs") == "auto":  # the profile's value until auto_size chooses (before the start)
        del explicit["max_num_seqs"]
    if explicit.get("tensor_parallel_size") == "auto":
        explicit["tensor_parallel_size"] = max(1, visible_gpus())
    args.update(explicit)
    args.update(model.model_dump(exclude={"name", "lora_adapters", "lora", "lora_column"}, exclude_none=True))
    if cpu and model.dtype == "auto" and not cpu_has_bf16():
        args["dtype"] = "float32"
    args.update(lora_arguments(model))
    args.update(engine.extra)
    args["model"] = model_path
    known = {f.name for f in dataclasses.fields(EngineArgs)}
    dropped = sorted(k for k in args if k not in known)
    for key in dropped:
        if key in engine.extra:
            raise JobError(f"engine.extra.{key}: not an engine argument of the installed vLLM {vllm_version()}")
        args.pop(key)
    return args, dropped


def auto_size(args: dict[str, Any], model: ModelSpec, engine: EngineSpec, rows: RowTokens | None,
              shard_rows: int) -> tuple[dict[str, Any], EngineSizing | None]:
    """``engine_arguments``' ``args`` with max_num_seqs (and the CUDA graphs and step budget it needs)
    chosen from the job (``sizing.choose``) where the job leaves it to batch-run
    (``engine.sized_from_job``) on a GPU; on the CPU the profile's capped value stays. ``rows``: the
    job's token counts (None: no row could be rendered, then the args are left as they are)."""
    if not engine.sized_from_job or rows is None or is_cpu_platform():
        return args, None
    tp = int(args.get("tensor_parallel_size") or 1)
    batched = int(args.get("max_num_batched_tokens") or 8192)
    compilation = args.get("compilation_config")
    # graphs sized here unless the job sizes them itself (or gives compilation_config in another form)
    graphs = not args.get("enforce_eager") and (compilation is None or isinstance(compilation, dict) and not (
        {"max_cudagraph_capture_size", "cudagraph_capture_sizes"} & set(compilation)))
    floor = int(PROFILES[engine.profile]["max_num_seqs"])
    sizing = choose(estimate_kv_tokens(args, model, tp, batched), rows, shard_rows, floor, batched, graphs)
    if "max_num_batched_tokens" in engine.extra or engine.max_num_batched_tokens is not None:
        sizing = dataclasses.replace(sizing, max_num_seqs=min(sizing.max_num_seqs, batched),
                                     max_num_batched_tokens=None)
    sized = dict(args, max_num_seqs=sizing.max_num_seqs)
    if sizing.max_num_batched_tokens is not None:
        sized["max_num_batched_tokens"] = sizing.max_num_batched_tokens
    if sizing.max_cudagraph_capture_size is not None:
        sized["compilation_config"] = {**(compilation if isinstance(compilation, dict) else {}),
                                       "max_cudagraph_capture_size": sizing.max_cudagraph_capture_size}
    return sized, sizing


def estimate_kv_tokens(args: dict[str, Any], model: ModelSpec, tp: int, batched: int) -> int | None:
    """The KV capacity (tokens) vLLM is expected to find at its start; None where the model's config
    or the device's memory cannot be read."""
    total = device_bytes()
    try:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(args["model"], trust_remote_code=model.trust_remote_code,
                                            revision=model.revision)
    except Exception:  # an unreadable config: no estimate, the profile's value stays
        return None
    shape = shape_of(config, str(args.get("dtype") or "auto"))
    if total is None or shape is None:
        return None
    kv_dtype = str(args.get("kv_cache_dtype") or "auto")
    kv_bytes = 1 if kv_dtype.startswith("fp8") else shape.dtype_bytes
    weights = weight_bytes(args["model"], shape, str(args.get("load_format") or "auto"))
    return kv_tokens_estimate(shape, total, float(args.get("gpu_memory_utilization") or 0.9), weights, kv_bytes,
                              batched, tp)


def kv_capacity_tokens(engine: Any) -> int | None:
    """The KV cache a started ``VllmEngine`` has, in tokens (vLLM 0.26 and 0.32 keep the blocks
    the engine core found in the front end's cache_config; 0.32 also the tokens); None if unknown."""
    try:
        cache = engine.engine.vllm_config.cache_config
        tokens = getattr(cache, "kv_cache_size_tokens", None)
        return int(tokens) if tokens else int(cache.num_gpu_blocks * cache.block_size) or None
    except Exception:  # a fake engine, or a vLLM that keeps it elsewhere: not known
        return None


def _lora_rank(path: Path) -> int:
    try:
        return int(json.loads((path / "adapter_config.json").read_text()).get("r", 16))
    except (OSError, ValueError) as e:
        raise JobError(f"model.lora_adapters: {path} is not a PEFT LoRA adapter folder "
                       f"(adapter_config.json: {e})") from e


# The ranks vLLM accepts as max_lora_rank (0.26 and 0.32 alike); an adapter's rank rounds up.
_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


def lora_arguments(model: ModelSpec) -> dict[str, Any]:
    """Engine arguments for the job's LoRA adapters: room for all of them, at their largest rank."""
    if not model.lora_adapters:
        return {}
    rank = max(_lora_rank(Path(p)) for p in model.lora_adapters.values())
    allowed = [r for r in _LORA_RANKS if r >= rank]
    if not allowed:
        raise JobError(f"model.lora_adapters: rank {rank} is above vLLM's largest max_lora_rank {_LORA_RANKS[-1]}")
    return {"enable_lora": True, "max_loras": len(model.lora_adapters), "max_lora_rank": allowed[0]}


def rejections() -> tuple[type[Exception], ...]:
    """The exception types vLLM raises for invalid parameters (newer versions add their own)."""
    try:
        from vllm.exceptions import VLLMValidationError
    except ImportError:  # older vLLM: ValueError only
        return (ValueError, TypeError)
    return (ValueError, TypeError, VLLMValidationError)


def sampling_params(values: dict[str, Any]):
    """A ``vllm.SamplingParams`` from plain values; raises what vLLM (or the JSON schema check) raises."""
    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind, StructuredOutputsParams

    values = dict(values)
    schema = values.pop("json_schema", None)
    if schema is not None:
        check_schema(schema)
        values["structured_outputs"] = StructuredOutputsParams(json=schema)
    if isinstance(values.get("stop"), str):
        values["stop"] = [values["stop"]]
    params = SamplingParams(**values)
    params.output_kind = RequestOutputKind.FINAL_ONLY  # one output per request, no streaming
    return params



PARAMS_CACHE_SIZE = 4096  # distinct sampling values kept built (per-row values can all differ)


def cached_params(cache: OrderedDict[str, Any], values: dict[str, Any], size: int = PARAMS_CACHE_SIZE):
    """``sampling_params(values)`` through ``cache``, an LRU of at most ``size`` entries;
    ``RowError`` where vLLM refuses the values."""
    key = json.dumps(values, sort_keys=True, default=str)
    if key in cache:
        cache.move_to_end(key)
        return cache[key]
    try:
        params = sampling_params(values)
    except rejections() as e:
        raise RowError("invalid_sampling", str(e)) from e
    cache[key] = params
    if len(cache) > size:
        cache.popitem(last=False)
    return params


def _finite(logprob: float) -> float:
    return max(logprob, -9999.0)  # as vLLM's server: -inf is not JSON


def token_logprobs(output) -> tuple[TokenLogprob, ...] | None:
    """A sample's logprobs as plain values, where its request asked: vLLM gives one mapping per
    generated token (token id -> Logprob(logprob, rank, decoded_token)) holding the sampled token and
    the top candidates (a list, or vLLM's FlatLogprobs, which reads as one)."""
    if output.logprobs is None:
        return None
    out = []
    for token_id, step in zip(output.token_ids, output.logprobs):
        step = step or {}
        top = tuple(sorted(((lp.decoded_token or "", _finite(lp.logprob), lp.rank or 0) for lp in step.values()),
                           key=lambda t: t[2]))
        chosen = step.get(token_id)
        out.append(TokenLogprob(chosen.decoded_token or "" if chosen else "",
                                _finite(chosen.logprob) if chosen else -9999.0, top))
    return tuple(out)


_COUNTERS = {"vllm:generation_tokens": "generation_tokens", "vllm:prompt_tokens": "prompt_tokens",
             "vllm:prefix_cache_queries": "prefix_cache_queries", "vllm:prefix_cache_hits": "prefix_cache_hits",
             "vllm:num_requests_running": "requests_running", "vllm:num_requests_waiting": "requests_waiting",
             "vllm:kv_cache_usage_perc": "kv_cache_usage", "vllm:gpu_cache_usage_perc": "kv_cache_usage"}


class VllmEngine:
    """One ``vllm.LLM``; requests go in one at a time, finished ones come out of ``poll``."""

    stop_grace_s: float | None = None  # the runner's default

    def __init__(self, args: dict[str, Any]):
        from vllm import LLM

        self.args = args
        try:
            with children_skip_main():  # the engine's processes must not run the user's script again
                self.llm = LLM(**args)
        except Interrupted:  # a stop signal during the start: not the engine's failure
            raise
        except Exception as e:  # vLLM raises many types here; all are fatal for the run
            raise start_failure(args, e) from e
        self.engine = self.llm.llm_engine
        self.max_model_len: int = self.engine.model_config.max_model_len
        # Its stats feed batch-run's timeline; vLLM's own log line of them every 10 s is not wanted.
        # (Set after LLM(): its logging setup resets the levels of vLLM's loggers.)
        logging.getLogger("vllm.v1.metrics.loggers").setLevel(logging.WARNING)
        self._params_cache: OrderedDict[str, Any] = OrderedDict()  # least recently used first
        self._loras: dict[LoraAdapter, Any] = {}

    def submit(self, request: Request) -> None:
        try:
            params = self._params(request.sampling)
            self.engine.add_request(request.key, {"prompt_token_ids": request.token_ids}, params,
                                    lora_request=self._lora(request.lora))
        except rejections() as e:  # vLLM rejects one request, not the run
            raise RowError("engine_rejected", str(e)) from e

    def _params(self, values: dict[str, Any]):
        """vLLM's parameters for these values, built once per distinct set of values (of the last
        ``PARAMS_CACHE_SIZE``: a job with per-row sampling values would otherwise grow it by a row each)."""
        return cached_params(self._params_cache, values)

    def _lora(self, adapter: LoraAdapter | None):
        """vLLM's request for an adapter (ids from 1, in order of first use: vLLM reserves 0 for none)."""
        if adapter is None:
            return None
        if adapter not in self._loras:  # by name and path: vLLM caches an adapter's weights by its id
            from vllm.lora.request import LoRARequest

            self._loras[adapter] = LoRARequest(adapter.name, len(self._loras) + 1, adapter.path)
        return self._loras[adapter]

    def unfinished(self) -> int:
        return self.engine.get_num_unfinished_requests()

    def poll(self) -> list[Completion]:
        """Run one engine step; the requests that finished in it."""
        done = []
        outputs = self.engine.step()
        now = time.perf_counter()
        to_perf = now - time.monotonic()  # the engine core stamps with the monotonic clock
        for out in outputs:
            if not out.finished:
                continue
            scheduled = getattr(getattr(out, "metrics", None), "scheduled_ts", 0.0) or 0.0  # with stats on
            done.append(Completion(
                key=out.request_id,
                samples=[Sample(o.text, o.finish_reason, len(o.token_ids), logprobs=token_logprobs(o))
                         for o in out.outputs],
                prompt_tokens=len(out.prompt_token_ids or ()), cached_prompt_tokens=out.num_cached_tokens or 0,
                started_s=scheduled + to_perf if scheduled else None, finished_s=now))
        return done

    def counters(self) -> EngineCounters | None:
        """The engine's counters, where this vLLM keeps them (``LLM.get_metrics``), else None."""
        try:
            metrics = self.llm.get_metrics()
        except Exception:  # older vLLM, or stats disabled in engine.extra
            return None
        found: dict[str, float] = {}
        for m in metrics:
            name = _COUNTERS.get(m.name)
            if name is not None and isinstance(getattr(m, "value", None), (int, float)):
                found[name] = found.get(name, 0.0) + float(m.value)  # summed over engines (data parallel)
        if "generation_tokens" not in found:
            return None
        fields = {f.name: found.get(f.name, 0.0) for f in dataclasses.fields(EngineCounters)}
        fields["kv_cache_usage"] = found.get("kv_cache_usage")
        return EngineCounters(**fields)

    def abort(self, keys: list[str]) -> None:
        if keys:
            self.engine.abort_request(keys)

    def reset_prefix_cache(self) -> None:
        if hasattr(self.llm, "reset_prefix_cache"):  # older vLLM lacks it
            self.llm.reset_prefix_cache()

    def _processes(self) -> list:
        """The engine core processes (multiprocessing's), where vLLM runs them apart from ours (its
        default); none when it runs the core in this process (VLLM_ENABLE_V1_MULTIPROCESSING=0)."""
        resources = getattr(getattr(self.engine, "engine_core", None), "resources", None)
        return list(getattr(getattr(resources, "engine_manager", None), "processes", None) or ())

    def failure(self) -> str | None:
        """An engine core process that ended: vLLM 0.26 to 0.32 mark their client dead then, but a step
        waiting for its output waits on (the run would hang)."""
        for proc in self._processes():
            if proc.exitcode is not None:
                return f"engine process {proc.pid} ({proc.name}) ended: {exit_reason(proc.exitcode)}"
        return None

    def kill(self) -> None:
        """SIGKILL the engine core processes and theirs (the workers): a wedged core would not shut down."""
        for proc in self._processes():
            kill_tree(proc.pid)

    def close(self) -> None:
        core = getattr(self.engine, "engine_core", None)
        if core is not None and hasattr(core, "shutdown"):
            core.shutdown()
        del self.llm, self.engine
        gc.collect()


def exit_reason(code: int) -> str:
    """A process's exit code in words (multiprocessing gives -N for signal N)."""
    if code >= 0:
        return f"exit status {code}"
    try:
        return f"killed by signal {-code} ({signal.Signals(-code).name})"
    except ValueError:
        return f"killed by signal {-code}"


def kill_tree(pid: int) -> None:
    """SIGKILL a process and its descendants, the children first found (best effort: they may be gone)."""
    try:
        root = psutil.Process(pid)
        procs = root.children(recursive=True) + [root]
    except psutil.Error:
        return
    for proc in procs:
        try:
            proc.kill()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(procs, timeout=KILL_WAIT_S)  # a new engine needs the memory they hold
    if alive:
        log.warning("engine processes %s did not end within %d s of SIGKILL (stuck in the driver?); "
                    "the new engine may not find the memory it needs", ", ".join(str(p.pid) for p in alive),
                    KILL_WAIT_S)


KILL_WAIT_S = 30


def start_failure(args: dict[str, Any], error: BaseException) -> EngineError:
    """A start that failed, in a few lines: vLLM's own words (an excerpt of its message: a pydantic
    error's field and reason, never a traceback), the settings to check, and the memory advice."""
    lines = [line.strip() for line in str(error).splitlines()
             if line.strip() and not line.strip().startswith("For further information")]
    text = " ".join(lines) or "(no message)"
    if len(text) > START_ERROR_CHARS:
        text = text[:START_ERROR_CHARS - 3].rstrip() + "..."
    return EngineError(f"the engine could not start: vLLM could not start the engine with these settings "
                       f"(model {args.get('model')}): {type(error).__name__}: {text}; check engine.* "
                       "(engine.extra too) and model.*\n" + _memory_advice(args))


START_ERROR_CHARS = 300  # of vLLM's message in a start failure's (a config error is a line or three)


def _memory_advice(args: dict[str, Any]) -> str:
    from .gpu import gpu_holders

    holders = gpu_holders()
    held = ("Processes holding GPU memory now:\n" + "\n".join(f"  {h}" for h in holders) + "\n"
            "If one is an engine left by an earlier run (a batch-run killed before this version guarded "
            "against that), end it (kill PID) and rerun; the rerun resumes.\n") if holders else ""
    return (held + "If it ran out of memory (no room for the KV cache, CUDA out of memory): lower "
            "model.max_model_len, engine.max_num_seqs or engine.max_num_batched_tokens, or let vLLM take more "
            f"of the device with engine.gpu_memory_utilization (now {args.get('gpu_memory_utilization')}).")

