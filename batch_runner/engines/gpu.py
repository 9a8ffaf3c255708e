"""GPU memory and utilisation through NVML; every value is None where no GPU is visible.

NVML sees the whole device, so it measures vLLM's engine process too (the engine runs outside
this process, where torch.cuda's counters would see nothing).
"""

from __future__ import annotations

import os
from collections.abc import Mapping


def visible_devices(env: Mapping[str, str]) -> list[str]:
    """The GPUs this process may use: CUDA_VISIBLE_DEVICES if set, else every GPU NVML sees."""
    if "CUDA_VISIBLE_DEVICES" in env:
        return [d.strip() for d in env["CUDA_VISIBLE_DEVICES"].split(",") if d.strip()]
    try:
        import pynvml

        pynvml.nvmlInit()
        return [str(i) for i in range(pynvml.nvmlDeviceGetCount())]
    except Exception:  # no NVML library, no driver: no GPUs
        return []


class GpuMonitor:
    def __init__(self) -> None:
        self.peak_gb: float | None = None
        self._handles = []
        try:
            import pynvml

            pynvml.nvmlInit()
            indices = [int(d) for d in visible_devices(os.environ) if d.isdigit()]
            self._handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in indices]
            self._nvml = pynvml
        except Exception:  # no NVML library, no driver, no GPU: the columns stay null
            self._handles = []

    def sample(self) -> dict[str, float | None]:
        if not self._handles:
            return {"gpu_memory_used_gb": None, "gpu_memory_peak_gb": None, "gpu_utilization": None}
        nv = self._nvml
        used = sum(nv.nvmlDeviceGetMemoryInfo(h).used for h in self._handles) / 2**30
        util = sum(nv.nvmlDeviceGetUtilizationRates(h).gpu for h in self._handles) / len(self._handles)
        self.peak_gb = max(self.peak_gb or 0.0, used)
        return {"gpu_memory_used_gb": round(used, 3), "gpu_memory_peak_gb": round(self.peak_gb, 3),
                "gpu_utilization": float(util)}


def gpu_holders() -> list[str]:
    """The processes holding memory on the visible GPUs, as NVML lists them; [] without NVML."""
    try:
        import pynvml

        pynvml.nvmlInit()
        indices = [int(d) for d in visible_devices(os.environ) if d.isdigit()]
        found = []
        for i in indices:
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            for p in pynvml.nvmlDeviceGetComputeRunningProcesses(handle):
                used = f"{p.usedGpuMemory / 2**30:.1f} GiB" if p.usedGpuMemory else "memory unknown"
                found.append(f"pid {p.pid} ({_command(p.pid)}) holds {used} on GPU {i}")
        return found
    except Exception:  # no NVML, no driver, no permission: nothing to name
        return []


def _command(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()[:80] or "?"
    except OSError:
        return "not visible from here"
