"""What the machine is doing while something is measured: this process's peak memory, and whether other
processes are using the CPU (so that timings are not someone else's). Used by `vitkit bench`, the
quantization report and the benchmark scripts.

Try it:  python -c "from vitkit.runtime.measure import wait_quiet, peak_rss_mb; print(wait_quiet(max_wait_s=2), peak_rss_mb())"
"""

from __future__ import annotations

import os
import resource
import time


# -- memory ------------------------------------------------------------------------------------------
def reset_peak_rss() -> bool:
    """Reset this process's peak-RSS mark (Linux: /proc/self/clear_refs "5"), so that the next
    `peak_rss_mb()` covers only what follows. False where the OS does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float:
    """Peak resident memory of this process in MB: VmHWM (honours `reset_peak_rss`), else ru_maxrss."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KB on Linux


# -- a quiet machine ---------------------------------------------------------------------------------
def _cpu_ticks() -> tuple[int, int]:
    """(busy ticks of the whole machine incl. steal, ticks of this process and its reaped children)."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    busy = sum(fields[:8]) - fields[3] - fields[4]  # user nice system [idle iowait] irq softirq steal
    with open("/proc/self/stat") as f:
        own = f.read().rsplit(")", 1)[1].split()
    return busy, sum(int(v) for v in own[11:15])  # utime stime cutime cstime


def other_load(interval_s: float = 0.5) -> float | None:
    """CPU cores kept busy by other processes (and the hypervisor's steal) over `interval_s`; None
    where /proc is not readable."""
    try:
        busy0, own0 = _cpu_ticks()
        time.sleep(interval_s)
        busy1, own1 = _cpu_ticks()
    except (OSError, ValueError, IndexError):
        return None
    hz = os.sysconf("SC_CLK_TCK")
    return max(0.0, ((busy1 - busy0) - (own1 - own0)) / hz / interval_s)


def wait_quiet(threshold_cores: float = 0.25, max_wait_s: float = 120.0, interval_s: float = 0.5) -> dict:
    """Wait until other processes use less than `threshold_cores` (at most `max_wait_s`), so that timings are
    not someone else's. -> {"waited_s", "other_load", "quiet"}; quiet False when it gave up waiting."""
    start = time.perf_counter()
    load = other_load(interval_s)
    while load is not None and load > threshold_cores and time.perf_counter() - start < max_wait_s:
        load = other_load(interval_s)
    quiet = load is None or load <= threshold_cores
    return {"waited_s": round(time.perf_counter() - start, 1), "other_load": load, "quiet": quiet}
