"""GPU-hours and money: one definition, used by the summary, the report, the metrics and ``estimate``.

A run's GPU-hours are its length times the GPUs its engine holds (tensor_parallel_size x
pipeline_parallel_size); "generating" counts only its generation time, "with start" its whole
length (pre-flight and engine start included). On the CPU build the engine counts as one device,
so the figures read as engine-hours there.
"""

from __future__ import annotations

from typing import Any

from ..records import Cost
from .stats import rate


def devices_of(engine_args: dict[str, Any]) -> int:
    """The devices one engine holds; 1 without an engine (nothing ran) and on the CPU build."""
    from ..engines.vllm_engine import is_cpu_platform

    if not engine_args or is_cpu_platform():
        return 1
    tp = engine_args.get("tensor_parallel_size") or 1
    pp = engine_args.get("pipeline_parallel_size") or 1
    return int(tp if isinstance(tp, int) else 1) * int(pp if isinstance(pp, int) else 1)


def cost_of(duration_s: float, generation_s: float, devices: int, output_tokens: int, total_tokens: int,
            price: float | None) -> Cost:
    hours, generating = duration_s * devices / 3600, generation_s * devices / 3600
    money = hours * price if price is not None else None
    per_m = (lambda tokens: rate(money, tokens / 1e6) if money is not None and tokens else None)
    return Cost(devices, _figures(hours), _figures(generating), price, None if money is None else _figures(money),
                per_m(output_tokens), per_m(total_tokens))


def _figures(x: float) -> float:
    """Six significant figures: a short run's cost is a few millionths, and must not round to zero."""
    return float(f"{x:.6g}")
