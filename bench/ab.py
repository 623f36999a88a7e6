#!/usr/bin/env python3
"""Binaries against each other, interleaved, on the CPU per byte of a push over loopback.

    python3 bench/ab.py --work /dev/shm/ab --runs 8 old=/tmp/old/pareco new=target/release/pareco

Each run pushes one random file (1 GiB by default) to a local `pareco serve`, once per binary
and mode (encrypted, --insecure-no-encryption), and with --rsync once into an rsync daemon,
in turn. Printed per binary and mode: CPU seconds per GiB of client + server (user + system),
median and minimum (this machine's noise only ever adds: see BENCHMARKS.md, "Noise on this
machine"), the client's share (median), the server's system seconds, and the page faults and
context switches of each side.
"""

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import time
from pathlib import Path

from bench import TOKEN, RsyncDaemon, free_port, random_file

GiB = 1 << 30


def proc_cost(pid: int) -> tuple[float, float, int, int]:
    """User and system seconds, minor faults and context switches (of its threads alive now:
    tokio keeps idle ones for ten seconds) of a live process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    switches = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            status = (task / "status").read_text().splitlines()
        except OSError:
            continue
        switches += sum(int(line.split()[1]) for line in status if "ctxt_switches" in line)
    return int(fields[11]) / tick, int(fields[12]) / tick, int(fields[7]), switches


def push(binary: str | None, plaintext: bool, src: Path, dst: Path, work: Path) -> dict:
    shutil.rmtree(dst, ignore_errors=True)
    dst.mkdir(parents=True)
    env = dict(os.environ, PARECO_TOKEN=TOKEN, PARECO_LOG="warn")
    insecure = ["--insecure-no-encryption"] if plaintext else []
    if binary is None:
        server = RsyncDaemon(dst, work)
        cmd = ["rsync", "-a", f"{src}/", f"rsync://127.0.0.1:{server.port}/data/copy/"]
    else:
        port = free_port()
        server = subprocess.Popen([binary, "serve", "--root", str(dst), "--listen", f"127.0.0.1:{port}", *insecure],
                                  stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, text=True)
        server.stdout.readline()
        cmd = [binary, "sync", "-q", "-j", "16", *insecure, str(src), f"pareco://127.0.0.1:{port}/copy"]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.time()
    subprocess.run(cmd, check=True, env=env)
    seconds = time.time() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if binary is None:
        _, cpu = server.stop()
        s_user, s_sys, s_faults, s_switches = cpu, None, None, None
    else:
        s_user, s_sys, s_faults, s_switches = proc_cost(server.pid)
        server.terminate()
        server.wait()
    shutil.rmtree(dst, ignore_errors=True)
    client = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    return {"seconds": seconds, "cpu": client + s_user + (s_sys or 0.0), "client": client,
            "server_sys": s_sys, "client_faults": after.ru_minflt - before.ru_minflt, "server_faults": s_faults,
            "client_switches": after.ru_nvcsw + after.ru_nivcsw - before.ru_nvcsw - before.ru_nivcsw,
            "server_switches": s_switches}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("binaries", nargs="+", metavar="NAME=PATH", help="pareco binaries to compare")
    p.add_argument("--work", type=Path, default=Path("/dev/shm/ab"), help="scratch directory (a tmpfs)")
    p.add_argument("--runs", type=int, default=8)
    p.add_argument("--gib", type=int, default=1, help="size of the file pushed")
    p.add_argument("--rsync", action="store_true", help="the rsync daemon as a row too")
    args = p.parse_args()
    binaries = dict(b.split("=", 1) for b in args.binaries)
    src, dst = args.work / "src", args.work / "dst"
    if not (src / "big").exists() or (src / "big").stat().st_size != args.gib * GiB:
        random_file(src / "big", args.gib * GiB)
    rows = [(f"{name} {mode}", path, mode == "plaintext") for name, path in binaries.items()
            for mode in ("encrypted", "plaintext")]
    if args.rsync:
        rows.append(("rsync daemon", None, True))
    results: dict[str, list[dict]] = {label: [] for label, _, _ in rows}
    for _ in range(args.runs):
        for label, binary, plaintext in rows:
            results[label].append(push(binary, plaintext, src, dst, args.work))

    def med(runs, key):
        values = [r[key] for r in runs if r[key] is not None]
        return statistics.median(values) if values else float("nan")

    print(f"{'':24} {'CPU s/GiB med':>13} {'min':>6} {'client':>6} {'server sys':>10} {'faults c/s':>15} {'switches c/s':>13} {'wall':>6}")
    for label, runs in results.items():
        cpu = [r["cpu"] / args.gib for r in runs]
        print(f"{label:24} {statistics.median(cpu):13.2f} {min(cpu):6.2f} {med(runs, 'client') / args.gib:6.2f} {med(runs, 'server_sys') / args.gib:10.2f} "
              f"{med(runs, 'client_faults'):7.0f}/{med(runs, 'server_faults'):<7.0f} "
              f"{med(runs, 'client_switches'):6.0f}/{med(runs, 'server_switches'):<6.0f} {med(runs, 'seconds'):6.2f}")


if __name__ == "__main__":
    main()
