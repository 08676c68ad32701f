"""Small helpers shared by the benchmarks: timing, memory, machine description, results."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# SEGTUNE_BENCH_RESULTS moves the results elsewhere (python -m benchmarks --quick does, to leave results/ alone)
RESULTS_DIR = Path(os.environ.get("SEGTUNE_BENCH_RESULTS") or Path(__file__).resolve().parent / "results").resolve()


# ---------------------------------------------------------------- timing


def spread(values) -> dict:
    """min / median / max of a list of numbers (plus how many there were)."""
    values = list(values)
    return {"min": min(values), "median": statistics.median(values), "max": max(values), "n": len(values)}


def quiet(values, shares, max_share: float) -> tuple[list, int]:
    """The values measured while other processes used at most `max_share` of the CPUs (see
    OtherLoad), and how many that is; all of them when none was that quiet (count 0)."""
    values, shares = list(values), list(shares)
    kept = [v for v, s in zip(values, shares) if s is None or s <= max_share]
    return (kept, len(kept)) if kept else (values, 0)


def time_repeats(fn, repeats: int = 5, warmup: int = 1) -> list[float]:
    """Seconds per call of `fn()` for `repeats` calls after `warmup` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def alternate(sides: dict, repeats: int, warmup: int = 0) -> tuple[dict, dict]:
    """Calls each side's function `warmup` + `repeats` times, the order of the sides reversed every
    other round so drift of the machine's speed hits them alike. Returns {side: [(seconds, share
    of the CPUs other processes took meanwhile), ...]} for the timed rounds, and {side: its last
    result}."""
    runs, results = {name: [] for name in sides}, {}
    for r in range(warmup + repeats):
        for name in sides if r % 2 == 0 else reversed(list(sides)):
            with OtherLoad() as others:
                start = time.perf_counter()
                results[name] = sides[name]()
                seconds = time.perf_counter() - start
            if r >= warmup:
                runs[name].append((seconds, others.share))
    return runs, results


# ---------------------------------------------------------------- memory


def peak_rss_mb() -> dict:
    """Peak resident memory in MiB of this process and of its largest finished child (workers).

    resource.getrusage where it exists (ru_maxrss is KiB on Linux, bytes on macOS); psutil
    (peak working set on Windows, else current RSS) if installed; otherwise None.
    """
    try:
        import resource

        unit = 1 if sys.platform == "darwin" else 1024
        own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * unit
        children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * unit
        return {"self": round(own / 2**20, 1), "children": round(children / 2**20, 1)}
    except ImportError:
        pass
    try:
        import psutil

        info = psutil.Process().memory_info()
        own = getattr(info, "peak_wset", info.rss)
        return {"self": round(own / 2**20, 1), "children": None}
    except ImportError:
        return {"self": None, "children": None}


# ---------------------------------------------------------------- other work on the machine


def _cpu_ticks():
    """(busy, total, steal) clock ticks of the whole machine since boot, from /proc/stat (Linux)."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    user, nice, system, idle, iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    total = user + nice + system + idle + iowait + irq + softirq + steal
    return total - idle - iowait - steal, total, steal


def _live_children_seconds() -> float:
    """CPU seconds of this process's children still running (DataLoader workers), from /proc."""
    me, ticks = os.getpid(), 0
    try:
        entries = os.listdir("/proc")
    except OSError:
        return 0.0
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                text = f.read()
        except OSError:
            continue
        fields = text[text.rindex(")") + 2 :].split()  # after "pid (comm) ": state, ppid, ..., utime, stime
        if int(fields[1]) == me:
            ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def _own_cpu_seconds() -> float:
    """CPU seconds of this process and its children, finished (reaped) or still running."""
    try:
        import resource
    except ImportError:
        return 0.0
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime + _live_children_seconds()


class OtherLoad:
    """Share of the machine's CPU time that other processes used during a `with` block.

    Benchmarks on a shared machine are skewed by whatever else runs; this says by how much.
    `share` (0..1, None where /proc/stat is absent) counts CPU time busy outside this process
    and its children (DataLoader workers); `steal` is time the hypervisor gave to other machines.
    Resolution is a clock tick (10 ms) per CPU, so blocks under a second or so are rough.
    """

    share: float | None = None
    steal: float | None = None

    def __enter__(self):
        self._start, self._own = _cpu_ticks(), _own_cpu_seconds()
        return self

    def __exit__(self, *exc):
        end = _cpu_ticks()
        if self._start is None or end is None:
            return False
        busy, total, steal = (b - a for a, b in zip(self._start, end))
        if total <= 0:
            return False
        own = (_own_cpu_seconds() - self._own) * os.sysconf("SC_CLK_TCK")
        self.share = min(1.0, max(0.0, (busy - own) / total))
        self.steal = steal / total
        return False


# ---------------------------------------------------------------- machine


def _cpu_model() -> str:
    from segtune.training.precision import cpu_name

    return cpu_name()


def _memory_gb() -> float | None:
    try:
        import psutil

        return round(psutil.virtual_memory().total / 2**30, 1)
    except ImportError:
        pass
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        return None


def _git() -> dict:
    def run(*args):
        out = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10)
        return out.stdout.strip() if out.returncode == 0 else None

    try:
        commit = run("rev-parse", "HEAD")
        # dirty: the code differs from the commit; results/ is left out, as a run writes it
        changed = run("status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)benchmarks/results")
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    return {"commit": commit, "dirty": bool(changed) if changed is not None else None}


def device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def machine() -> dict:
    """What the figures were measured on."""
    import numpy
    import PIL
    import torch
    import transformers

    cuda = torch.cuda.is_available()
    try:
        cpus_usable = len(os.sched_getaffinity(0))
    except AttributeError:
        cpus_usable = os.cpu_count()
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        load = None
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": cpus_usable,
        "memory_gb": _memory_gb(),
        "load_average": load,  # 1/5/15 min: other work on the machine skews figures
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "transformers": transformers.__version__,
        "numpy": numpy.__version__,
        "pillow": PIL.__version__,
        "device": "cuda" if cuda else "cpu",
        "device_name": torch.cuda.get_device_name(0) if cuda else _cpu_model(),
        "git": _git(),
    }


def describe(info: dict) -> str:
    """One line naming the machine, for tables and logs."""
    name = info["device_name"] if info["device"] == "cuda" else f"{info['cpu']}"
    return (f"{name}, {info['cpus_usable']} CPU cores, torch {info['torch']} ({info['device']}, "
            f"{info['torch_threads']} threads), transformers {info['transformers']}, Python {info['python']}")


def command() -> str:
    """The command line that ran this process, as typed (near enough)."""
    argv = getattr(sys, "orig_argv", None) or [sys.executable, *sys.argv]
    return " ".join(argv)


# ---------------------------------------------------------------- results


def write_result(name: str, result: dict) -> Path:
    """Writes benchmarks/results/<name>.json (with the time it was written) and returns its path."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    payload = {"benchmark": name, "written": datetime.now(timezone.utc).isoformat(timespec="seconds"), **result}
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    return path


def save_result(name: str, result: dict, write: bool = True) -> None:
    """write_result, unless a module's --no-write, and says where on stderr (with `wall_s`)."""
    if not write:
        return
    path = write_result(name, result)
    shown = path.relative_to(REPO) if path.is_relative_to(REPO) else path
    print(f"\nwrote {shown} ({result.get('wall_s')} s)", file=sys.stderr)


def print_report(lines: list[str], others_share: float | None) -> str:
    """Joins a benchmark's report lines (with how much CPU other processes took, when known),
    prints them and returns the text for the JSON's `table_md`."""
    if others_share is not None:
        lines = [*lines, f"Other processes used {100 * others_share:.0f}% of the CPUs during the runs."]
    text = "\n".join(lines)
    print(text)
    return text


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    return str(value).replace("|", "\\|")


def markdown_table(rows: list[dict], columns: list[str] | None = None, align: dict | None = None) -> str:
    """A GitHub markdown table of `rows` (dicts); columns default to the first row's keys.

    Numbers are right-aligned unless `align` ({column: "left"|"right"|"center"}) says otherwise.
    """
    if not rows:
        return ""
    columns = columns or list(rows[0])
    align = align or {}
    cells = [[_cell(row.get(c)) for c in columns] for row in rows]
    widths = [max(3, len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]

    def rule(i, c):
        side = align.get(c) or ("right" if all(isinstance(r.get(c), (int, float)) for r in rows) else "left")
        w = widths[i]
        return {"left": "-" * w, "right": "-" * (w - 1) + ":", "center": ":" + "-" * (w - 2) + ":"}[side]

    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(columns, widths)) + " |",
             "|" + "|".join(f" {rule(i, c)} " for i, c in enumerate(columns)) + "|"]
    lines += ["| " + " | ".join(v.ljust(w) for v, w in zip(r, widths)) + " |" for r in cells]
    return "\n".join(lines)
