"""The engine sized from the job (``engine.max_num_seqs: auto``): how many sequences at once.

vLLM needs ``max_num_seqs`` before it starts, and learns its KV capacity only after, so the
capacity is estimated first from the model's config and the device's memory: the share of the
device vLLM may take, less the weights and the activations of a full step, over the KV bytes one
token takes. The job's rows (a sample of their token counts) say how many tokens one sequence holds
at its longest; as many sequences as fit in that capacity, between a floor and a ceiling, is the
choice. Where the rows' outputs have a known length (``ignore_eos``), the choice may go below the
profile's value, so that a large model with long rows does not run out of KV cache and preempt;
otherwise ``max_tokens`` is only a bound, real outputs are mostly shorter, and the profile's value
is the floor: no job runs with fewer sequences than it did before.

The functions here are pure (plain numbers in, an ``EngineSizing`` out) but for the readers at the
end (the model's config, its files, the device's memory through NVML).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..records import EngineSizing

# The ceiling: on an H200, a 135M model with 256-1,024 new tokens a row ran at 1.7-1.9x the
# profile's 512 with 2,048 (issue 24); larger batches are not measured, and each captured CUDA graph
# size costs start time and memory.
AUTO_MAX_NUM_SEQS = 2048
MIN_NUM_SEQS = 16  # the least ever chosen (a model that barely fits still runs several rows at once)
KV_SHARE = 0.95  # of the estimated KV capacity planned for: the estimate is before the start, and may be high
BLOCK_TOKENS = 16  # vLLM's KV block: a sequence holds whole blocks
# The largest batch vLLM captures in a CUDA graph unless told (512 up to Hopper); beyond it decode
# steps run without graphs (a 135M model at 1,024 sequences ran at 0.56x the profile on an H200).
CUDA_GRAPH_DEFAULT_MAX = 512
SAMPLE_ROWS = 1000  # rows whose token counts size the engine: the input's first
OVERHEAD_BYTES = int(2.5 * 2**30)  # besides weights, KV cache and activations (CUDA context, workspaces, graphs)
ACTIVATION_COPIES = 2  # live copies of a step's largest activations at its peak (rough; see act_bytes)


@dataclass(frozen=True)
class RowTokens:
    """The job's rows as the sizing sees them: means over a sample of rendered rows."""

    rows: int  # rows sampled
    mean_prompt_tokens: float
    mean_max_tokens: float
    n: int = 1  # sequences per row (sampling.n): they share the prompt's blocks
    exact: bool = False  # every row generates exactly max_tokens (ignore_eos): the counts are not just bounds


@dataclass(frozen=True)
class ModelShape:
    """What of a model's config the estimate needs."""

    layers: int
    kv_heads: int
    head_dim: int
    hidden: int
    intermediate: int
    vocab: int
    params: float  # parameter count (from the config, for weights that are not on disk)
    dtype_bytes: int  # the weights' bytes per parameter
    kv_elems_per_layer: int | None = None  # MLA models (kv_lora_rank): the latent's size, K and V in one


def kv_bytes_per_token(shape: ModelShape, kv_bytes: float, tp: int = 1) -> float:
    """The KV cache one token takes on one device of a tensor-parallel group of ``tp``."""
    if shape.kv_elems_per_layer is not None:  # MLA: one latent per token and layer, on every device
        return shape.layers * shape.kv_elems_per_layer * kv_bytes
    return 2 * shape.layers * math.ceil(shape.kv_heads / tp) * shape.head_dim * kv_bytes


def activation_bytes(shape: ModelShape, batched_tokens: int) -> float:
    """The peak activations of one scheduler step of ``batched_tokens`` tokens (vLLM profiles a step
    of max_num_batched_tokens before it sizes the KV cache): the residual stream and the MLP's widest tensors."""
    return ACTIVATION_COPIES * batched_tokens * (2 * shape.hidden + 2 * shape.intermediate) * shape.dtype_bytes


def kv_tokens_estimate(shape: ModelShape, device_bytes: int, utilization: float, weight_bytes: float,
                       kv_bytes: float, batched_tokens: int, tp: int = 1) -> int:
    """The KV capacity in tokens vLLM will find on a device of ``device_bytes``, of which it takes
    ``utilization``: what is left after the weights (``weight_bytes`` over ``tp`` devices), a step's
    activations and a fixed overhead, over one token's KV bytes."""
    free = device_bytes * utilization - weight_bytes / tp - activation_bytes(shape, batched_tokens) - OVERHEAD_BYTES
    return max(0, int(free // kv_bytes_per_token(shape, kv_bytes, tp)))


def per_seq_tokens(rows: RowTokens) -> int:
    """KV tokens one sequence holds at its longest: its share of the prompt (the n samples of a row
    share its prompt's blocks) and all of its max_tokens, rounded up to whole blocks."""
    tokens = rows.mean_prompt_tokens / max(1, rows.n) + rows.mean_max_tokens
    return max(BLOCK_TOKENS, math.ceil(tokens / BLOCK_TOKENS) * BLOCK_TOKENS)


def _round16(n: int) -> int:
    return n if n < BLOCK_TOKENS else n // 16 * 16  # CUDA graph sizes step by 16 past 256


def choose(kv_tokens: int | None, rows: RowTokens, shard_rows: int, floor: int, batched_tokens: int,
           graphs: bool, ceiling: int = AUTO_MAX_NUM_SEQS) -> EngineSizing:
    """The sequences to schedule at once, and what goes with them.

    ``kv_tokens``: the estimated KV capacity (None: unknown, then ``floor``); ``shard_rows``: the rows
    this shard runs (more sequences than its rows' would only capture graphs never used); ``floor``:
    the profile's value; ``batched_tokens``: the step's token budget (vLLM needs it >= max_num_seqs);
    ``graphs``: whether CUDA graphs are captured (not with enforce_eager)."""
    per_seq = per_seq_tokens(rows)
    sequences = max(1, shard_rows * max(1, rows.n))
    lo = MIN_NUM_SEQS if rows.exact else floor
    if kv_tokens is None:
        seqs, why = floor, f"the KV capacity could not be estimated; the profile's {floor}"
    else:
        fit = int(kv_tokens * KV_SHARE // per_seq)
        seqs = _round16(max(lo, min(ceiling, fit)))
        bound = "each row's length is known (ignore_eos)" if rows.exact else \
            f"at least the profile's {floor}: max_tokens only bounds the outputs"
        why = (f"{fit:,} sequences of {per_seq:,} tokens (mean prompt {rows.mean_prompt_tokens:,.0f} + mean max_tokens "
               f"{rows.mean_max_tokens:,.0f}, over {rows.rows:,} rows) fit in {KV_SHARE:.0%} of an estimated "
               f"{kv_tokens:,}-token KV cache; chosen within {lo}-{ceiling} ({bound})")
    if seqs > sequences:
        seqs = max(1, math.ceil(sequences / 16) * 16 if sequences >= 16 else sequences)
        why += f"; no more than the shard's {sequences:,} sequences"
    capture = seqs if graphs and seqs > CUDA_GRAPH_DEFAULT_MAX else None
    batched = max(batched_tokens, seqs) if seqs > batched_tokens else None
    return EngineSizing(max_num_seqs=seqs, max_cudagraph_capture_size=capture, max_num_batched_tokens=batched,
                        per_seq_tokens=per_seq, sample_rows=rows.rows, kv_tokens_estimate=kv_tokens, reason=why)


# -- readers: the model's config and files, the device's memory ---------------------------------
_DTYPE_BYTES = {"float32": 4, "float": 4, "bfloat16": 2, "float16": 2, "half": 2}


def dtype_bytes(name: Any, default: int = 2) -> int:
    text = str(name or "").replace("torch.", "")
    return _DTYPE_BYTES.get(text, default)


def shape_of(config: Any, dtype: str = "auto") -> ModelShape | None:
    """A transformers config as a ``ModelShape`` (its text model's, for a multimodal one); None where
    it lacks the sizes a decoder has."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    get = lambda *names: next((getattr(text, n) for n in names if getattr(text, n, None)), None)  # noqa: E731
    layers, hidden, heads = get("num_hidden_layers", "n_layer"), get("hidden_size", "n_embd"), \
        get("num_attention_heads", "n_head")
    if not (layers and hidden and heads):
        return None
    kv_heads = get("num_key_value_heads") or heads
    head_dim = get("head_dim") or hidden // heads
    inter = get("intermediate_size", "n_inner") or 4 * hidden
    vocab = get("vocab_size") or 32000
    experts = get("num_local_experts", "n_routed_experts", "num_experts") or 1
    per_layer = hidden * heads * head_dim * 2 + hidden * kv_heads * head_dim * 2 + 3 * hidden * inter * experts
    tied = bool(getattr(text, "tie_word_embeddings", False))
    params = layers * per_layer + (1 if tied else 2) * vocab * hidden
    nbytes = dtype_bytes(dtype if dtype != "auto" else get("torch_dtype", "dtype"))
    mla = get("kv_lora_rank")
    latent = mla + (get("qk_rope_head_dim") or 0) if mla else None
    return ModelShape(int(layers), int(kv_heads), int(head_dim), int(hidden), int(inter), int(vocab), float(params),
                      nbytes, latent)


def weight_bytes(model_path: str, shape: ModelShape, load_format: str) -> float:
    """The weights' bytes: the checkpoint's files where they are on disk and loaded, else the
    parameter count at the weights' dtype."""
    folder = Path(model_path)
    if load_format != "dummy" and folder.is_dir():
        for pattern in ("*.safetensors", "*.bin", "*.pt"):  # one format: snapshots often hold two copies
            files = list(folder.glob(pattern))
            if files:
                return float(sum(f.stat().st_size for f in files))
    return shape.params * shape.dtype_bytes


def device_bytes() -> int | None:
    """The memory of the first GPU this process may use (NVML: no CUDA context is made here,
    which would keep vLLM from forking its workers); None without one."""
    from .gpu import visible_devices

    try:
        import pynvml

        pynvml.nvmlInit()
        devices = [d for d in visible_devices(os.environ) if d.isdigit()]
        if not devices:
            return None
        return int(pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(int(devices[0]))).total)
    except Exception:  # no NVML, no driver, a UUID-named device: no estimate
        return None
