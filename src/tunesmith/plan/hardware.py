"""What this machine offers: CPU RAM and cores, CUDA devices and their memory."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

GB = 1024**3


@dataclass(frozen=True)
class Hardware:
    device: str  # "cpu" or "cuda": where training runs
    memory: int  # bytes a training job may use there (RAM, or memory of one GPU)
    name: str
    gpus: int = 0
    cpu_cores: int = 1
    bf16: bool = False  # the GPU computes in bfloat16
    here: bool = True  # this machine (a probe can measure it), not one given by --hardware

    def describe(self) -> str:
        where = f"{self.gpus} x {self.name}" if self.gpus else f"CPU ({self.cpu_cores} cores)"
        return f"{where}, {self.memory / GB:.1f} GB"


def detect_hardware() -> Hardware:
    cores = os.cpu_count() or 1
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        return Hardware(
            "cuda",
            props.total_memory,
            props.name,
            torch.cuda.device_count(),
            cores,
            torch.cuda.is_bf16_supported(),
        )
    return Hardware("cpu", cpu_memory(), "CPU", 0, cores)


def cpu_memory() -> int:
    """Available RAM (MemAvailable: free plus reclaimable caches), else the total."""
    meminfo = Path("/proc/meminfo")
    if meminfo.is_file():
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def parse_hardware(spec: str) -> Hardware:
    """`cpu:32` (GB of RAM) or `cuda:24` / `cuda:80x8` (GB per GPU x GPUs): plan for a machine
    other than this one."""
    from tunesmith.utils.errors import ConfigError

    kind, _, size = spec.partition(":")
    try:
        gb, _, count = size.partition("x")
        memory, gpus = int(float(gb) * GB), int(count or 1)
    except ValueError:
        memory = gpus = -1
    if kind not in ("cpu", "cuda") or memory <= 0 or gpus <= 0:
        raise ConfigError(
            f"--hardware: expected cpu:<GB> or cuda:<GB>[x<GPUs>] (e.g. cuda:24), got '{spec}'"
        )
    if kind == "cpu":
        return Hardware("cpu", memory, "CPU", 0, os.cpu_count() or 1, here=False)
    return Hardware("cuda", memory, "GPU", gpus, os.cpu_count() or 1, bf16=True, here=False)
