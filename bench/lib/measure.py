#!/usr/bin/env python3
"""Run one command and measure it.

usage: measure.py RESULT_FILE COMMAND [ARGS...]

Runs COMMAND (stdin, stdout and stderr are inherited) and writes one line to RESULT_FILE:

    WALL_SECONDS TREE_PEAK_KIB MAX_PROCESS_RSS_KIB EXIT_CODE

- WALL_SECONDS: from the start of COMMAND to its exit (monotonic clock).
- TREE_PEAK_KIB: peak memory of the whole process tree, sampled every 20 ms: at each sample,
  the sum of the PSS (proportional set size, /proc/PID/smaps_rollup) of COMMAND and all its
  descendants; the peak is the largest sum seen. PSS counts pages that processes of the tree
  share (a forked helper shares its parent's pages; libraries) once in total, where a sum of
  RSS would count them once per process. Peaks shorter than the interval can be missed.
- MAX_PROCESS_RSS_KIB: the largest peak RSS of any single process of the tree
  (getrusage(RUSAGE_CHILDREN).ru_maxrss), which is what /usr/bin/time reports.
- EXIT_CODE: COMMAND's exit code (128 + N when killed by signal N).

Orphaned descendants stay in the tree: this process is made a child subreaper.
Exits with COMMAND's exit code.
"""

import ctypes
import os
import resource
import subprocess
import sys
import time

INTERVAL = 0.02
PR_SET_CHILD_SUBREAPER = 36


def parents():
    """Map of pid -> parent pid of every process on the machine."""
    out = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        # The command name may hold spaces and parentheses: the fields after it follow
        # the last ')'.
        fields = stat[stat.rfind(b")") + 2 :].split()
        out[int(name)] = int(fields[1])
    return out


def tree(root):
    children = {}
    for pid, ppid in parents().items():
        children.setdefault(ppid, []).append(pid)
    todo, seen = [root], []
    while todo:
        pid = todo.pop()
        seen.append(pid)
        todo.extend(children.get(pid, ()))
    return seen


def pss_kib(pid):
    try:
        with open(f"/proc/{pid}/smaps_rollup", "rb") as f:
            for line in f:
                if line.startswith(b"Pss:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    result_file, command = sys.argv[1], sys.argv[2:]
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)

    start = time.monotonic()
    child = subprocess.Popen(command)
    me = os.getpid()
    peak = 0
    while child.poll() is None:
        # Everything under this process: the command, its descendants and the orphans
        # reparented here.
        total = sum(pss_kib(pid) for pid in tree(me) if pid != me)
        peak = max(peak, total)
        time.sleep(INTERVAL)
    wall = time.monotonic() - start
    # Reap orphans that were reparented here and have exited, so their rusage is counted.
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if pid == 0:
            break
    code = child.returncode if child.returncode >= 0 else 128 - child.returncode
    max_rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    with open(result_file, "w") as f:
        f.write(f"{wall:.3f} {peak} {max_rss} {code}\n")
    sys.exit(code)


if __name__ == "__main__":
    main()
