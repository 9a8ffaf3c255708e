"""GPU memory and utilisation through NVML; every value is None where no GPU is visible.

NVML sees the whole device, so it measures vLLM's engine process too (the engine runs outside
this process, where torch.cuda's counters would see nothing).
"""

from __future__ import annotations

import os


class GpuMonitor:
    def __init__(self) -> None:
        self.peak_gb: float | None = None
        self._handles = []
        try:
            import pynvml

            pynvml.nvmlInit()
            visible = os.environ.get("CUDA_VISIBLE_DEVICES")
            indices = [int(i) for i in visible.split(",") if i.strip().isdigit()] if visible else \
                range(pynvml.nvmlDeviceGetCount())
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
