"""Measurement helpers shared by every benchmark in this folder.

    from _measure import guarded_run, power_law_exponent, write_json   # scripts in benchmarks/

(``python benchmarks/<name>.py`` puts this folder on ``sys.path``.) What is here:

* memory of this process (:func:`peak_rss_mb`, :func:`rss_gb`) and of the machine
  (:func:`mem_available_mb`); of a process tree (:func:`tree_usage`);
* :func:`guarded_run`: run a command in its own process group, poll its process tree, kill it
  above a memory, CPU-time or wall-time limit, and return its peak memory, times and output;
* :func:`worker_env` (one thread, the venv's ``bin`` first on ``PATH``), :func:`result_line` /
  :func:`parse_result` (how a worker hands its JSON back);
* timing (:func:`timed`, :func:`time_calls`), the power-law fit (:func:`power_law_exponent`),
  memory extrapolation (:func:`extrapolate`), :func:`linear_fit`;
* output: :func:`machine_info`, :func:`write_json` (atomic), :func:`format_table`.

Units: MB = 2^20 bytes, GB = 2^30 bytes (what ``ru_maxrss`` and ``/proc`` count in kB = 2^10
bytes gives without rounding); times in seconds.
"""

from __future__ import annotations

import json
import math
import os
import platform
import resource
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

MB = float(2 ** 20)
GB = float(2 ** 30)
VENV_BIN = Path(sys.executable).parent
RESULT_TAG = "RESULT "


# ============================================================================ this process, machine
def _proc_kb(path: str, *keys: str) -> Dict[str, int]:
    """Fields of a /proc status-like file (``Key:   123 kB``) in kB; missing ones are left out."""
    out: Dict[str, int] = {}
    try:
        with open(path) as fh:
            for line in fh:
                key = line.split(":", 1)[0]
                if key in keys:
                    out[key] = int(line.split()[1])
    except OSError:
        pass
    return out


def peak_rss_mb(children: bool = False) -> float:
    """Peak resident memory of this process (VmHWM of /proc/self/status), MB; ``children``: of its
    largest waited-for child (``ru_maxrss``).

    Not ``ru_maxrss`` for the process itself: Linux carries the pre-exec peak over an exec, so a
    worker started from a parent that had imported torch would report the parent's peak."""
    hwm = None if children else _proc_kb("/proc/self/status", "VmHWM").get("VmHWM")
    if hwm is not None:
        return hwm * 1024 / MB
    who = resource.RUSAGE_CHILDREN if children else resource.RUSAGE_SELF
    return resource.getrusage(who).ru_maxrss * 1024 / MB  # ru_maxrss: kB on Linux


def peak_rss_gb() -> float:
    return peak_rss_mb() * MB / GB


def rss_gb() -> float:
    """Current resident memory of this process, GB."""
    with open("/proc/self/statm") as fh:
        pages = int(fh.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / GB


def mem_available_mb() -> float:
    """MemAvailable of /proc/meminfo, MB (inf when unknown)."""
    kb = _proc_kb("/proc/meminfo", "MemAvailable").get("MemAvailable")
    return float("inf") if kb is None else kb * 1024 / MB


def mem_available_gb() -> float:
    return mem_available_mb() * MB / GB


# ============================================================================ process trees
_TICK = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


def _processes() -> Dict[int, Tuple[int, float]]:
    """pid -> (parent pid, CPU seconds incl. waited-for children) of every process (Linux /proc)."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            cpu = sum(int(v) for v in fields[11:15]) / _TICK  # utime stime cutime cstime
            table[int(entry)] = (int(fields[1]), cpu)
        except (OSError, ValueError, IndexError):
            continue
    return table


def _memory(pid: int) -> Tuple[int, int]:
    """(VmRSS, VmHWM) of a process in bytes; (0, 0) when it is gone."""
    kb = _proc_kb(f"/proc/{pid}/status", "VmRSS", "VmHWM")
    return kb.get("VmRSS", 0) * 1024, kb.get("VmHWM", 0) * 1024


def tree_usage(pid: int) -> Dict[int, Tuple[int, int, float]]:
    """pid -> (VmRSS bytes, VmHWM bytes, CPU s) of ``pid`` and all its descendants."""
    table = _processes()
    children: Dict[int, List[int]] = {}
    for p, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(p)
    out, todo = {}, [pid]
    while todo:
        p = todo.pop()
        if p in table:
            rss, hwm = _memory(p)
            out[p] = (rss, hwm, table[p][1])
        todo.extend(children.get(p, []))
    return out


def worker_env(threads: int = 1, **extra: str) -> Dict[str, str]:
    """Environment of a measured process: ``threads`` OpenMP/MKL threads, the venv's bin first."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    env["PATH"] = f"{VENV_BIN}:{env.get('PATH', '')}"
    env.update(extra)
    return env


def guarded_run(cmd: Sequence[str], *, cwd=None, env: Optional[Dict[str, str]] = None,
                max_rss_gb: Optional[float] = None, timeout_s: Optional[float] = None,
                max_cpu_s: Optional[float] = None, log_path=None, poll_s: float = 0.2,
                on_poll: Optional[Callable[[Dict[str, float]], None]] = None) -> Dict[str, Any]:
    """Run ``cmd`` in its own process group; kill the group when its process tree's resident
    memory exceeds ``max_rss_gb``, its CPU time ``max_cpu_s`` or its wall time ``timeout_s``.

    stdout and stderr go to ``log_path`` (both, interleaved) or are captured. ``on_poll`` gets
    ``{"wall_s", "cpu_s", "rss_gb"}`` after every poll (progress bars). Returns

    ``returncode``, ``stdout``, ``stderr`` (empty with ``log_path``), ``wall_s``, ``cpu_s`` (the
    tree's CPU time), ``peak_rss_gb`` (the sum over the tree's processes of their own peak
    resident memory, VmHWM, as last polled), ``tree_rss_peak_gb`` (the largest simultaneous sum
    seen by polling), ``processes`` (how many the tree ever had) and ``killed`` (None,
    ``"memory"``, ``"cpu"`` or ``"timeout"``) with ``killed_reason``.

    VmHWM is a high-water mark, so a peak is missed only when it happens after the last poll
    (within ``poll_s`` of the exit): measure repeated work (warm-up calls peak like the timed
    ones), or let the process report its own VmHWM at the end (:func:`peak_rss_mb`). The
    ``ru_maxrss`` of ``wait4`` is not used: it includes the parent's memory before the exec.
    """
    with tempfile.TemporaryDirectory(prefix="guarded_") as tmp:
        out_path = Path(log_path) if log_path else Path(tmp) / "stdout"
        err_path = Path(tmp) / "stderr"
        with open(out_path, "w") as fout, open(err_path, "w") as ferr:
            t0 = time.perf_counter()
            proc = subprocess.Popen(list(map(str, cmd)), cwd=cwd, env=env, stdout=fout,
                                    stderr=fout if log_path else ferr, start_new_session=True)
            hwm: Dict[int, int] = {}
            cpu_seen: Dict[int, float] = {}
            peak_sum, killed, reason = 0, None, ""
            while True:
                pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
                if pid:
                    break
                tree = tree_usage(proc.pid)
                now_rss = sum(v[0] for v in tree.values())
                peak_sum = max(peak_sum, now_rss)
                for p, (_, h, c) in tree.items():
                    hwm[p] = max(hwm.get(p, 0), h)
                    cpu_seen[p] = c
                wall = time.perf_counter() - t0
                cpu = sum(cpu_seen.values())
                if killed is None:
                    if max_rss_gb is not None and now_rss > max_rss_gb * GB:
                        killed, reason = "memory", f"resident memory {now_rss / GB:.2f} GB > limit {max_rss_gb:g} GB"
                    elif max_cpu_s is not None and cpu > max_cpu_s:
                        killed, reason = "cpu", f"more than {max_cpu_s:.0f} s of CPU time"
                    elif timeout_s is not None and wall > timeout_s:
                        killed, reason = "timeout", f"more than {timeout_s:.0f} s of wall time"
                    if killed:
                        _kill_group(proc.pid)
                if on_poll is not None:
                    on_poll({"wall_s": wall, "cpu_s": cpu, "rss_gb": now_rss / GB})
                time.sleep(poll_s)
            wall = time.perf_counter() - t0
            proc.returncode = os.waitstatus_to_exitcode(status)
            _kill_group(proc.pid)  # stray descendants (none when the command exited normally)
        stdout = "" if log_path else out_path.read_text(errors="replace")
        stderr = "" if log_path else err_path.read_text(errors="replace")
    return {"returncode": proc.returncode, "stdout": stdout, "stderr": stderr, "wall_s": wall,
            "cpu_s": usage.ru_utime + usage.ru_stime, "peak_rss_gb": sum(hwm.values()) / GB,
            "tree_rss_peak_gb": peak_sum / GB, "processes": max(len(hwm), 1),
            "killed": killed, "killed_reason": reason}


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def failure_text(run: Dict[str, Any], tail: int = 400) -> str:
    """One line on why a guarded run gave no result."""
    if run.get("killed"):
        return f"killed: {run['killed_reason']}"
    text = (run.get("stdout", "") + run.get("stderr", "")).strip().splitlines() or ["?"]
    last = [line for line in text if "rror" in line][-1:] or text[-1:]
    return f"exit {run['returncode']}: {last[0][-tail:]}"


# ============================================================================ worker protocol
def result_line(doc: Dict[str, Any]) -> None:
    """Print a worker's result (the last ``RESULT {json}`` line of its stdout is read back)."""
    print(RESULT_TAG + json.dumps(doc), flush=True)


def parse_result(stdout: str) -> Optional[Dict[str, Any]]:
    lines = [line for line in stdout.splitlines() if line.startswith(RESULT_TAG)]
    return json.loads(lines[-1][len(RESULT_TAG):]) if lines else None


# ============================================================================ timing and fits
def timed(work: Callable[[], Any]) -> Tuple[float, float]:
    """(wall s, process CPU s) of one call of ``work``."""
    w0, c0 = time.perf_counter(), time.process_time()
    work()
    return time.perf_counter() - w0, time.process_time() - c0


def time_calls(work: Callable[[], Any], calls: int, warmup: int = 0) -> Dict[str, Any]:
    """``warmup`` untimed calls (the first one's time is kept), then ``calls`` timed ones."""
    first = None
    for k in range(warmup):
        w, _ = timed(work)
        first = w if k == 0 else first
    wall, cpu = [], []
    for _ in range(calls):
        w, c = timed(work)
        wall.append(w)
        cpu.append(c)
    s = sorted(wall)
    return {"wall_s": wall, "cpu_s": cpu, "mean_s": sum(wall) / len(wall), "min_s": s[0],
            "median_s": s[len(s) // 2], "cpu_mean_s": sum(cpu) / len(cpu), "first_call_s": first}


def linear_fit(xs: Sequence[float], ys: Sequence[float]) -> Tuple[float, float]:
    """Least-squares (slope, intercept) of y = slope·x + intercept; (nan, nan) for < 2 distinct x."""
    pts = [(float(x), float(y)) for x, y in zip(xs, ys)]
    if len({x for x, _ in pts}) < 2:
        return float("nan"), float("nan")
    mx = sum(x for x, _ in pts) / len(pts)
    my = sum(y for _, y in pts) / len(pts)
    sxx = sum((x - mx) ** 2 for x, _ in pts)
    slope = sum((x - mx) * (y - my) for x, y in pts) / sxx
    return slope, my - slope * mx


def power_law_exponent(ns: Sequence[float], ts: Sequence[float]) -> float:
    """x of t ∝ N^x: least-squares slope of log t vs log N (nan for fewer than 2 sizes)."""
    pts = [(n, t) for n, t in zip(ns, ts) if n and t and n > 0 and t > 0]
    return linear_fit([math.log(n) for n, _ in pts], [math.log(t) for _, t in pts])[0]


def extrapolate(points: Iterable[Tuple[float, float]], x: float) -> Optional[float]:
    """y at ``x`` from measured (x, y) points: linear through the two largest x (slope ≥ 0),
    proportional to x from a single point, None without points (memory guards)."""
    pts = sorted(points)
    if not pts:
        return None
    if len(pts) == 1 or pts[-1][0] == pts[-2][0]:
        return pts[-1][1] * x / pts[-1][0]
    (x1, y1), (x2, y2) = pts[-2:]
    return y2 + max((y2 - y1) / (x2 - x1), 0.0) * (x - x2)


# ============================================================================ output
def machine_info() -> Dict[str, Any]:
    info = {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
            "load_average": list(os.getloadavg()), "mem_available_gb": round(mem_available_gb(), 1),
            "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    torch = sys.modules.get("torch")
    if torch is not None:
        info["torch"] = torch.__version__
    return info


def write_json(path, doc: Dict[str, Any]) -> Path:
    """Write ``doc`` atomically (a partial file never replaces a good one)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=1))
    tmp.replace(path)
    return path


def format_table(header: Sequence[str], rows: Sequence[Sequence[Any]], markdown: bool = False) -> str:
    """Right-aligned plain-text table (or a Markdown table) of already formatted cells."""
    cells = [[str(c) for c in header]] + [[str(c) for c in r] for r in rows]
    if markdown:
        lines = ["| " + " | ".join(cells[0]) + " |", "|" + "---|" * len(header)]
        return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in cells[1:]])
    width = [max(len(r[k]) for r in cells if k < len(r)) for k in range(len(header))]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(r, width)) for r in cells)
