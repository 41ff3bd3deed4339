"""What board is this? Measured from the OS, never taken from configuration.

The host compares this identity with the inventory entry and refuses to file results
under a chip the agent is not running on.
"""

from __future__ import annotations

import os
import platform
import re
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path

# ARM "CPU part" ids (implementer 0x41) of the cores found in the paper's chips and boards.
ARM_PARTS = {
    0xD03: "Cortex-A53",
    0xD04: "Cortex-A35",
    0xD05: "Cortex-A55",
    0xD07: "Cortex-A57",
    0xD08: "Cortex-A72",
    0xD09: "Cortex-A73",
    0xD0A: "Cortex-A75",
    0xD0B: "Cortex-A76",
    0xD0C: "Neoverse-N1",
    0xD0D: "Cortex-A77",
    0xD40: "Neoverse-V1",
    0xD41: "Cortex-A78",
    0xD44: "Cortex-X1",
    0xD46: "Cortex-A510",
    0xD47: "Cortex-A710",
    0xD48: "Cortex-X2",
    0xD4D: "Cortex-A715",
    0xD4E: "Cortex-X3",
}


@dataclass(frozen=True)
class CpuIdentity:
    model: str
    machine: str
    logical_cores: int
    features: tuple[str, ...] = ()
    max_freq_mhz: tuple[float, ...] = ()
    core_types: tuple[str, ...] = ()


@dataclass(frozen=True)
class BoardIdentity:
    hostname: str
    cpu: CpuIdentity
    os: str
    memory_bytes: int
    governor: str
    temperature_c: float | None
    python: str = field(default_factory=lambda: platform.python_version())


def _read(path: str | Path) -> str:
    try:
        return Path(path).read_text(errors="replace")
    except OSError:
        return ""


def _cpuinfo_blocks(text: str) -> list[dict[str, str]]:
    blocks = []
    for chunk in text.strip().split("\n\n"):
        block = {}
        for line in chunk.splitlines():
            key, sep, value = line.partition(":")
            if sep:
                block[key.strip()] = value.strip()
        if block:
            blocks.append(block)
    return blocks


def cpu_flags() -> tuple[str, ...]:
    """This machine's CPU feature flags (x86 "flags" / ARM "Features"); empty where unreadable."""
    return parse_cpuinfo(_read("/proc/cpuinfo"))[1]


def parse_cpuinfo(text: str) -> tuple[str, tuple[str, ...], tuple[str, ...]]:
    """(model, features, per-core types) from /proc/cpuinfo on x86 or ARM."""
    blocks = _cpuinfo_blocks(text)
    cores = [b for b in blocks if "processor" in b and b.get("processor", "").isdigit()]
    first = cores[0] if cores else (blocks[0] if blocks else {})
    features = tuple(sorted(set((first.get("flags") or first.get("Features") or "").split())))
    core_types: list[str] = []
    for b in cores:
        part = b.get("CPU part")
        if part and b.get("CPU implementer", "").lower() == "0x41":
            core_types.append(ARM_PARTS.get(int(part, 16), f"ARM part {part}"))
        elif part:
            core_types.append(f"implementer {b.get('CPU implementer')} part {part}")
    model = first.get("model name") or first.get("Processor") or ""
    if not model and core_types:  # ARM: describe the clusters, big cores first by part order
        counts: dict[str, int] = {}
        for t in core_types:
            counts[t] = counts.get(t, 0) + 1
        model = " + ".join(f"{n}x {t}" for t, n in counts.items())
    if not model:
        hw = next((b.get("Hardware") for b in blocks if "Hardware" in b), "")
        model = hw or platform.processor() or "unknown"
    return model, features, tuple(core_types)


def _max_freqs(cores: int) -> tuple[float, ...]:
    freqs = []
    for i in range(cores):
        khz = _read(f"/sys/devices/system/cpu/cpu{i}/cpufreq/cpuinfo_max_freq").strip()
        if not khz.isdigit():
            return ()
        freqs.append(int(khz) / 1000.0)
    return tuple(freqs)


def governor() -> str:
    return _read("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor").strip()


def temperature_c() -> float | None:
    """The hottest thermal zone, where the OS shows one."""
    temps = []
    for zone in Path("/sys/class/thermal").glob("thermal_zone*/temp"):
        value = _read(zone).strip()
        if re.fullmatch(r"-?\d+", value):
            temps.append(int(value) / 1000.0)
    return max(temps) if temps else None


def _memory_bytes() -> int:
    m = re.search(r"MemTotal:\s+(\d+) kB", _read("/proc/meminfo"))
    if m:
        return int(m.group(1)) * 1024
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


def _os_description() -> str:
    pretty = re.search(r'^PRETTY_NAME="?([^"\n]*)"?', _read("/etc/os-release"), re.M)
    base = f"{platform.system()} {platform.release()}"
    return f"{base} ({pretty.group(1)})" if pretty else base


def affinity() -> str:
    """CPUs this process may run on, as a compact range list: "0-3,6"."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return ""
    ranges, start = [], None
    for i, c in enumerate(cpus):
        if start is None:
            start = c
        if i + 1 == len(cpus) or cpus[i + 1] != c + 1:
            ranges.append(f"{start}" if start == c else f"{start}-{c}")
            start = None
    return ",".join(ranges)


def logical_cores() -> int:
    """The board's logical cores: what BoardInfo reports and what a benchmark's threads are bounded by."""
    return os.cpu_count() or 1


def measure() -> BoardIdentity:
    cores = logical_cores()
    model, features, core_types = parse_cpuinfo(_read("/proc/cpuinfo"))
    if sys.platform == "darwin" and not model:
        model = platform.processor()
    cpu = CpuIdentity(model, platform.machine(), cores, features, _max_freqs(cores), core_types)
    return BoardIdentity(
        socket.gethostname(), cpu, _os_description(), _memory_bytes(), governor(), temperature_c()
    )
