"""CPU per thread of a running process, from ``/proc/<pid>/task/*`` (Linux).

``schedstat`` gives each thread's time on a CPU and time spent runnable but waiting for one (ns);
``status`` its context switches. Threads are grouped by their OS name, which
``bench.switches.name_os_threads`` sets from the Python thread's name in the bench apps.
"""

from __future__ import annotations

import os

#: OS thread name prefix (15 bytes at most) -> group; the process's first thread is "main".
THREAD_GROUPS = (("ThreadPoolExecu", "request"), ("log-stdout-flus", "flusher"), ("loki-sender", "sender"))
#: tid -> (group, on-CPU ns, runnable-waiting ns, context switches)
Threads = dict[int, tuple[str, int, int, int]]


def worker_pid(master: int, timeout: float = 20.0) -> int:
    """The pid of gunicorn's (single) worker under ``master``."""
    return worker_pids(master, 1, timeout)[0]


def worker_pids(master: int, count: int, timeout: float = 20.0) -> list[int]:
    """The pids of gunicorn's ``count`` workers under ``master``, once all are forked."""
    from fakes import wait_until

    def children() -> list[int] | None:
        with open(f"/proc/{master}/task/{master}/children") as f:
            pids = [int(pid) for pid in f.read().split()]
        return pids if len(pids) >= count else None

    return wait_until(children, timeout, f"{count} gunicorn worker(s)")


def memory_kib(pid: int) -> dict[str, int]:
    """``rss`` (resident, shared pages included) and ``pss`` (shared pages divided among the
    processes that map them) of ``pid``, in KiB, from ``/proc/<pid>/smaps_rollup``."""
    wanted = {"Rss:": "rss", "Pss:": "pss"}
    out = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            key, _, rest = line.partition(" ")
            if key in wanted:
                out[wanted[key]] = int(rest.split()[0])
    return out


def threads(pid: int) -> Threads:
    """Every thread of ``pid`` now: its group, CPU and wait time, context switches."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        base = f"/proc/{pid}/task/{tid}"
        try:
            with open(f"{base}/comm") as f:
                comm = f.read().strip()
            with open(f"{base}/schedstat") as f:
                run_ns, wait_ns, _ = (int(x) for x in f.read().split())
            with open(f"{base}/status") as f:
                switches = sum(int(line.split()[1]) for line in f if "ctxt_switches:" in line)
        except (OSError, ValueError):
            continue  # the thread ended meanwhile
        group = "main" if int(tid) == pid else next((g for p, g in THREAD_GROUPS if comm.startswith(p)), "other")
        out[int(tid)] = (group, run_ns, wait_ns, switches)
    return out


def per_request(before: Threads, after: Threads, requests: int) -> dict[str, float]:
    """us of CPU per request by group, plus "cpu" (all threads), "wait" (runnable, not running)
    and "ctx" (context switches per request)."""
    sums: dict[str, float] = {}
    for tid, (group, run_ns, wait_ns, ctx) in after.items():
        _, run0, wait0, ctx0 = before.get(tid, (group, 0, 0, 0))
        sums[group] = sums.get(group, 0.0) + (run_ns - run0)
        sums["cpu"] = sums.get("cpu", 0.0) + (run_ns - run0)
        sums["wait"] = sums.get("wait", 0.0) + (wait_ns - wait0)
        sums["ctx"] = sums.get("ctx", 0.0) + (ctx - ctx0)
    count = max(1, requests)
    return {key: value / count / (1 if key == "ctx" else 1e3) for key, value in sums.items()}
