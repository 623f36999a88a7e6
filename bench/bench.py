#!/usr/bin/env python3
"""pareco benchmarks: pareco beside the tools users would otherwise pick,
on the same data, through the same emulated links, in the same run.

Run through bench/run.sh. Every scenario prepares its data once, then runs
each tool `--repeat` times, interleaved (tool A, tool B, A, B, ...), so that
the machine's noise hits every tool alike; the table reports medians and
ratios to pareco measured in this run.

Wire bytes come from the WAN emulator's own counters (both directions,
everything counted). Peak RSS of clients comes from /usr/bin/time; of
servers from /proc/PID/status (VmHWM) just before they are stopped.
"""
from __future__ import annotations

import argparse
import filecmp
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# The release build, or the one bench/run.sh --quick makes (PARECO_PROFILE=debug).
PARECO = (Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")).resolve()
          / os.environ.get("PARECO_PROFILE", "release") / "pareco")
WANEM = ROOT / "tools" / "wanem.py"
TOKEN = "bench-token-0123456789abcdef"
MiB = 1 << 20


@dataclass
class Row:
    scenario: str
    tool: str
    seconds: float
    payload_bytes: int
    wire_bytes: int | None = None
    link_rate: float | None = None
    rss_client_kb: int | None = None
    rss_server_kb: int | None = None
    cpu_client_s: float | None = None
    cpu_server_s: float | None = None
    runs: list[float] = field(default_factory=list)
    note: str = ""

    @property
    def mib_s(self) -> float:
        return self.payload_bytes / MiB / self.seconds if self.seconds else 0.0

    @property
    def cpu_per_gib(self) -> float | None:
        """CPU seconds (client + server processes, user + system: kernel work in their system calls
        included, other processes' not) per GiB moved; for loopback rows only, where the CPU and
        not a link is the limit."""
        if "loopback" not in self.scenario or self.payload_bytes < 32 * MiB or self.cpu_client_s is None:
            return None
        return (self.cpu_client_s + (self.cpu_server_s or 0.0)) / (self.payload_bytes / (1 << 30))

    @property
    def link_fraction(self) -> float | None:
        return self.payload_bytes / self.seconds / self.link_rate if self.link_rate and self.seconds else None


# ---------------------------------------------------------------- processes

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def peak_rss_kb(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def cpu_seconds(pid: int) -> float | None:
    """User + system time of a process and of its children it has waited for."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    ticks = sum(int(fields[i]) for i in (11, 12, 13, 14))  # utime stime cutime cstime
    return ticks / os.sysconf("SC_CLK_TCK")


class Measured:
    """What one run of a tool cost: seconds, peak RSS and CPU of both sides, wire bytes."""

    def __init__(self, seconds, rss, cpu, server_rss=None, server_cpu=None, wire=0):
        self.seconds, self.rss, self.cpu = seconds, rss, cpu
        self.server_rss, self.server_cpu, self.wire = server_rss, server_cpu, wire


class ParecoServer:
    def __init__(self, root: Path, extra: list[str] = ()):
        env = dict(os.environ, PARECO_TOKEN=TOKEN, PARECO_LOG="warn")
        self.proc = subprocess.Popen([str(PARECO), "serve", "--root", str(root), "--listen", "127.0.0.1:0", *extra],
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, text=True)
        line = self.proc.stdout.readline()
        self.port = int(line.rsplit(":", 1)[1])

    def stop(self) -> tuple[int | None, float | None]:
        rss, cpu = peak_rss_kb(self.proc.pid), cpu_seconds(self.proc.pid)
        self.proc.terminate()
        self.proc.wait()
        return rss, cpu


class RsyncDaemon:
    """rsync in daemon mode, under /usr/bin/time so that the CPU of the
    per-connection children it forks is counted when it exits."""

    def __init__(self, root: Path, work: Path):
        self.port = free_port()
        conf = work / f"rsyncd-{self.port}.conf"
        conf.write_text(f"use chroot = no\n[data]\npath = {root}\nread only = no\nuid = root\ngid = root\n")
        self.usage = work / f"rsyncd-{self.port}.time"
        self.proc = subprocess.Popen(["/usr/bin/time", "-f", "%M %U %S", "-o", str(self.usage), "rsync", "--daemon",
                                      "--no-detach", f"--config={conf}", f"--port={self.port}", "--address=127.0.0.1"],
                                     stderr=subprocess.DEVNULL)
        wait_port(self.port)

    def stop(self) -> tuple[int | None, float | None]:
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
        for child in children:
            os.kill(int(child), 15)
        self.proc.wait()
        rss, user, system = self.usage.read_text().strip().splitlines()[-1].split()
        return int(rss), float(user) + float(system)


def wait_port(port: int, limit: float = 10.0) -> None:
    deadline = time.time() + limit
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port}")


class Wan:
    """wanem.py in front of a target port; counts every byte."""

    def __init__(self, target: int, link: list[str], work: Path):
        self.stats = work / f"wan-{target}-{time.monotonic_ns()}.json"
        self.proc = subprocess.Popen([sys.executable, str(WANEM), "--listen", "127.0.0.1:0", "--target",
                                      f"127.0.0.1:{target}", "--stats", str(self.stats), *link],
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self.port = int(self.proc.stdout.readline().split()[1])

    def stop(self) -> int:
        self.proc.terminate()
        self.proc.wait()
        s = json.loads(self.stats.read_text())
        return s["up_bytes"] + s["down_bytes"]


def timed(cmd: list[str] | str, env: dict | None = None, shell: bool = False) -> Measured:
    """Runs a command; returns its time, peak RSS and CPU. Fails loudly."""
    with tempfile.NamedTemporaryFile("r") as out:
        full = ["/usr/bin/time", "-f", "%M %U %S", "-o", out.name]
        full += ["sh", "-c", cmd] if shell else cmd
        start = time.perf_counter()
        r = subprocess.run(full, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        seconds = time.perf_counter() - start
        if r.returncode != 0:
            raise RuntimeError(f"{cmd} failed ({r.returncode}): {r.stderr[-2000:]}")
        rss, user, system = out.read().strip().splitlines()[-1].split()
        return Measured(seconds, int(rss), float(user) + float(system))


def pareco_env() -> dict:
    return dict(os.environ, PARECO_TOKEN=TOKEN)


def clear(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)


def flush() -> None:
    """Writes back dirty pages so that one run's writeback does not land in the next run's time."""
    subprocess.run(["sync"], check=True)


# ---------------------------------------------------------------- data

def random_file(path: Path, size: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, 8 * MiB)
            f.write(os.urandom(n))
            left -= n


def text_bytes(size: int, seed: int = 0) -> bytes:
    words = [b"migration", b"database", b"replica", b"checkpoint", b"segment", b"index", b"page", b"wal",
             b"tenant", b"shard", b"snapshot", b"cluster", b"bucket", b"object", b"stream", b"commit"]
    out = bytearray()
    i = seed
    while len(out) < size:
        out += words[(i * 7919) % len(words)] + (b"\n" if i % 11 == 0 else b" ")
        i += 1
    return bytes(out[:size])


def many_files(root: Path, count: int, size: int, per_dir: int = 1000) -> None:
    for i in range(count):
        d = root / f"d{i // per_dir:04d}"
        if i % per_dir == 0:
            d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i:07d}").write_bytes(os.urandom(size))


def age(root: Path) -> None:
    """Moves mtimes an hour back, so that no tool waits for timestamps to settle."""
    subprocess.run(["find", str(root), "-exec", "touch", "-h", "-d", "1 hour ago", "{}", "+"], check=True)


def tree_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file() and not p.is_symlink())


def same_tree(a: Path, b: Path) -> None:
    r = subprocess.run(["diff", "-r", "-q", str(a), str(b)], capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"copies differ: {r.stdout[:500]}")


# ---------------------------------------------------------------- tools

def run_pareco(src: Path, dst_root: Path, link: list[str] | None, work: Path, jobs: int | str,
               extra: list[str] = (), sync_only: list[str] = ()) -> tuple[float, int, int | None, int]:
    """One pareco sync into a fresh server (`extra` for both ends, `sync_only` for the client);
    `jobs` is a number or "auto". Returns (s, client RSS, server RSS, wire bytes)."""
    server = ParecoServer(dst_root, extra)
    wan = Wan(server.port, link, work) if link is not None else None
    port = wan.port if wan else server.port
    url = f"pareco://127.0.0.1:{port}/copy"
    try:
        m = timed([str(PARECO), "sync", "-q", "-j", str(jobs), *extra, *sync_only, str(src), url], env=pareco_env())
    finally:
        m_wire = wan.stop() if wan else 0
        m_server = server.stop()
    m.wire, (m.server_rss, m.server_cpu) = m_wire, m_server
    return m


def run_rsync(src: Path, dst_root: Path, link: list[str] | None, work: Path,
              extra: list[str] = ()) -> tuple[float, int, int | None, int]:
    daemon = RsyncDaemon(dst_root, work)
    wan = Wan(daemon.port, link, work) if link is not None else None
    port = wan.port if wan else daemon.port
    try:
        m = timed(["rsync", "-a", *extra, f"{src}/", f"rsync://127.0.0.1:{port}/data/copy/"])
    finally:
        m_wire = wan.stop() if wan else 0
        m_server = daemon.stop()
    m.wire, (m.server_rss, m.server_cpu) = m_wire, m_server
    return m


def have(tool: str) -> bool:
    """Whether a baseline's program is installed (bench/run.sh installs Debian's packages); a
    missing one is skipped with a note on stderr."""
    if shutil.which(tool):
        return True
    print(f"note: {tool} is not installed: its rows are skipped", file=sys.stderr)
    return False


def run_fpsync(src: Path, dst_root: Path, link: list[str] | None, work: Path, files: int) -> Measured:
    """fpsync -n 32 (fpart's partitions, 32 rsyncs at once) into an rsync daemon: partitions of
    at most files/32 files, so that all 32 run."""
    daemon = RsyncDaemon(dst_root, work)
    (dst_root / "copy").mkdir(parents=True, exist_ok=True)
    wan = Wan(daemon.port, link, work) if link is not None else None
    port = wan.port if wan else daemon.port
    tmp = work / f"fpsync-{time.monotonic_ns()}"
    tmp.mkdir()
    try:
        m = timed(["fpsync", "-n", "32", "-f", str(max(1, -(-files // 32))), "-t", str(tmp),
                   f"{src.resolve()}/", f"rsync://127.0.0.1:{port}/data/copy/"])
    finally:
        m_wire = wan.stop() if wan else 0
        m_server = daemon.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    m.wire, (m.server_rss, m.server_cpu) = m_wire, m_server
    return m


class RcloneSftp:
    """rclone serve sftp on a directory, under /usr/bin/time (its CPU and peak RSS counted when it exits)."""

    PASSWORD = "bench"

    def __init__(self, root: Path, work: Path):
        self.port = free_port()
        self.usage = work / f"rclone-{self.port}.time"
        self.conf = work / "rclone.conf"
        self.conf.touch()
        self.proc = subprocess.Popen(["/usr/bin/time", "-f", "%M %U %S", "-o", str(self.usage), "rclone", "serve",
                                      "sftp", "--config", str(self.conf), "--addr", f"127.0.0.1:{self.port}",
                                      "--user", "bench", "--pass", self.PASSWORD, str(root)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port, 30)

    def remote(self, port: int, path: str) -> str:
        obscured = subprocess.run(["rclone", "obscure", self.PASSWORD], capture_output=True, text=True,
                                  check=True).stdout.strip()
        return f":sftp,host=127.0.0.1,port={port},user=bench,pass={obscured}:{path}"

    def stop(self) -> tuple[int | None, float | None]:
        for child in Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split():
            os.kill(int(child), 15)
        self.proc.wait()
        rss, user, system = self.usage.read_text().strip().splitlines()[-1].split()
        return int(rss), float(user) + float(system)


RCLONE_PARALLEL = ["--transfers", "32", "--checkers", "32", "--sftp-shell-type", "none", "--sftp-disable-hashcheck"]


def run_rclone(src: Path, dst_root: Path, link: list[str] | None, work: Path, pull: bool = False,
               extra: list[str] = (), limit: float | None = None) -> Measured:
    """rclone copy over SFTP (rclone serve sftp at the far end, through the emulator): a push of
    `src` into `dst_root`/copy, or (`pull`) the far end serving `src` and the copy made locally in
    `dst_root`/copy. Stopped after `limit` seconds, if given (then `m.stopped` is set)."""
    server = RcloneSftp(src if pull else dst_root, work)
    wan = Wan(server.port, link, work) if link is not None else None
    port = wan.port if wan else server.port
    remote = server.remote(port, "" if pull else "copy")
    local = dst_root / "copy" if pull else src
    args = [remote, str(local)] if pull else [str(local), remote]
    cmd = ["rclone", "copy", "-q", "--config", str(server.conf), *RCLONE_PARALLEL, *extra, *args]
    try:
        if limit is None:
            m = timed(cmd)
        else:
            start = time.perf_counter()
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
            try:
                proc.wait(timeout=limit)
                m = Measured(time.perf_counter() - start, None, None)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)
                proc.wait()
                m = Measured(limit, None, None)
                m.stopped = True
                m.note = f"stopped after {limit:.0f} s, unfinished"
    finally:
        m_wire = wan.stop() if wan else 0
        m_server = server.stop()
    m.wire, (m.server_rss, m.server_cpu) = m_wire, m_server
    return m


def run_tar_nc(src: Path, dst: Path, link: list[str] | None, work: Path) -> tuple[float, int, int | None, int]:
    port = free_port()
    dst.mkdir(parents=True, exist_ok=True)
    receiver = subprocess.Popen(["/usr/bin/time", "-f", "%M %U %S", "-o", str(work / "receiver.time"), "sh", "-c",
                                 f"nc -l 127.0.0.1 {port} | tar -x -C {dst}"])
    wait_listen(port)
    wan = Wan(port, link, work) if link is not None else None
    target = wan.port if wan else port
    try:
        m = timed(f"tar -c -C {src} . | nc -N 127.0.0.1 {target}", shell=True)
        receiver.wait(timeout=600)
    finally:
        m.wire = wan.stop() if wan else 0
    rss, user, system = (work / "receiver.time").read_text().strip().splitlines()[-1].split()
    m.server_rss, m.server_cpu = int(rss), float(user) + float(system)
    return m


def wait_listen(port: int) -> None:
    deadline = time.time() + 5
    while time.time() < deadline:
        r = subprocess.run(["ss", "-ltn", f"sport = :{port}"], capture_output=True, text=True)
        if str(port) in r.stdout:
            return
        time.sleep(0.02)


# ---------------------------------------------------------------- scenarios

def interleave(tools: dict, repeat: int) -> dict[str, list]:
    results = {name: [] for name in tools}
    for _ in range(repeat):
        for name, fn in tools.items():
            results[name].append(fn())
    return results


def summarize(scenario: str, results: dict[str, list], payload: int, link_rate: float | None,
              notes: dict[str, str] | None = None) -> list[Row]:
    rows = []
    for tool, runs in results.items():
        secs = [r.seconds for r in runs]
        med = statistics.median(secs)
        pick = min(runs, key=lambda r: abs(r.seconds - med))
        server_cpu = [r.server_cpu for r in runs if r.server_cpu is not None]
        rows.append(Row(scenario, tool, med, payload, wire_bytes=pick.wire or None, link_rate=link_rate,
                        rss_client_kb=max((r.rss for r in runs if r.rss), default=None),
                        rss_server_kb=max((r.server_rss for r in runs if r.server_rss), default=None),
                        cpu_client_s=statistics.median(r.cpu for r in runs) if all(r.cpu is not None for r in runs) else None,
                        cpu_server_s=statistics.median(server_cpu) if server_cpu else None,
                        runs=[round(s, 3) for s in secs], note=(notes or {}).get(tool, getattr(pick, "note", ""))))
    return rows


def checked(src: Path, dst: Path, run):
    """A run that copies `src` into an emptied `dst`, then checks the copy
    (unless the tool was stopped before it finished)."""
    def go():
        clear(dst)
        m = run()
        if not getattr(m, "stopped", False):
            same_tree(src, dst / "copy")
        return m
    return go


def tree_copiers(src: Path, dst: Path, link: list[str], work: Path):
    """Makers of runs that copy `src` into an emptied `dst` and check the copy."""
    def pareco(jobs: int):
        return checked(src, dst, lambda: run_pareco(src, dst, link, work, jobs))

    def rsync():
        return checked(src, dst, lambda: run_rsync(src, dst, link, work))

    return pareco, rsync


def parallel_peers(src: Path, dst: Path, link: list[str], work: Path, rclone: bool = True,
                   rclone_limit: float | None = None) -> dict:
    """The strongest peers for a tree, where installed: fpsync -n 32 into an rsync daemon, and
    rclone with 32 transfers over SFTP (stopped after `rclone_limit` seconds if given); each
    finished copy checked."""
    files = sum(1 for p in src.rglob("*") if p.is_file())
    peers = {}
    if have("fpsync"):
        peers["fpsync -n 32 (rsync daemon)"] = checked(src, dst, lambda: run_fpsync(src, dst, link, work, files))
    if rclone and have("rclone"):
        peers["rclone sftp, --transfers 32 --checkers 32"] = checked(
            src, dst, lambda: run_rclone(src, dst, link, work, limit=rclone_limit))
    return peers


def seed_link(args, work: Path) -> list[Row]:
    """Scenario 1: initial copy of a 64 MiB tree over a trans-ocean link."""
    link = ["--delay-ms", "50", "--conn-rate", "512K", "--link-rate", "8M"]
    src = work / "s1-src"
    big, n_small = (32 * MiB, 4000) if not args.quick else (2 * MiB, 200)
    random_file(src / "big.bin", big)
    many_files(src / "small", n_small, 8192, per_dir=500)
    age(src)
    payload = tree_bytes(src)
    dst = work / "s1-dst"

    pareco, rsync = tree_copiers(src, dst, link, work)

    def tar_nc():
        clear(dst)
        return run_tar_nc(src, dst / "copy", link, work)

    tools = {"pareco -j 32": pareco(32), "pareco (-j auto)": pareco("auto")}
    if args.baselines:
        tools |= {"pareco -j 1": pareco(1), "rsync (daemon)": rsync(), "tar \\| nc": tar_nc}
        tools |= parallel_peers(src, dst, link, work)
    return summarize("1. seed link: 64 MiB tree, 8 MiB/s link, 0.5 MiB/s per conn, 100 ms RTT",
                     interleave(tools, args.repeat if not args.baselines else 1), payload, 8 * MiB)


def small_files(args, work: Path) -> list[Row]:
    """Scenario 2: 20,000 small files."""
    link = ["--delay-ms", "50", "--conn-rate", "1M", "--link-rate", "16M"]
    src = work / "s2-src"
    many_files(src, 20000 if not args.quick else 500, 4096)
    age(src)
    payload = tree_bytes(src)
    dst = work / "s2-dst"

    pareco, rsync = tree_copiers(src, dst, link, work)
    tools = {"pareco -j 32": pareco(32)}
    if args.baselines:
        # rclone over SFTP takes seconds per file here (500 files: 58 s): 20,000 would take most of
        # an hour, so it is stopped after 120 s.
        tools |= {"rsync (daemon)": rsync()} | parallel_peers(src, dst, link, work, rclone_limit=120)
    return summarize("2. small files: 20,000 x 4 KiB, 16 MiB/s link, 1 MiB/s per conn, 100 ms RTT",
                     interleave(tools, args.repeat if not args.baselines else 1), payload, 16 * MiB)


def big_file(args, work: Path) -> list[Row]:
    """Scenario 15: one 128 MiB file over the seed link: pareco spreads its pieces over its
    connections; rclone's multi-thread download pulls ranges of it over 32 SFTP streams. A
    one-connection tool (rsync, fpsync with one file) is held to 0.5 MiB/s: 256 s."""
    link = ["--delay-ms", "50", "--conn-rate", "512K", "--link-rate", "8M"]
    size = 128 * MiB if not args.quick else 4 * MiB
    src, dst = work / "s15-src", work / "s15-dst"
    random_file(src / "big.bin", size)
    age(src)
    pareco, _ = tree_copiers(src, dst, link, work)
    tools = {"pareco -j 32": pareco(32)}
    if args.baselines and have("rclone"):
        def rclone_pull():
            clear(dst)
            m = run_rclone(src, dst, link, work, pull=True,
                           extra=["--multi-thread-streams", "32", "--multi-thread-cutoff", "1M"])
            same_tree(src, dst / "copy")
            return m
        tools["rclone sftp pull, --multi-thread-streams 32"] = rclone_pull
    return summarize("15. one big file: 128 MiB, 8 MiB/s link, 0.5 MiB/s per conn, 100 ms RTT",
                     interleave(tools, args.repeat if not args.baselines else 1), size, 8 * MiB)


def delta(args, work: Path) -> list[Row]:
    """Scenario 3: two 4 KiB pages changed in a 256 MiB file; bytes on the wire for the resync."""
    size = 256 * MiB if not args.quick else 16 * MiB
    src = work / "s3-src"
    random_file(src / "db.bin", size)
    age(src)
    dst = work / "s3-dst"
    rows = []

    def edit():
        with open(src / "db.bin", "r+b") as f:
            for page in (1234, size // 4096 - 777):
                f.seek(page * 4096)
                f.write(os.urandom(4096))
        subprocess.run(["touch", "-d", "30 minutes ago", str(src / "db.bin")], check=True)

    def measure(tool, resync):
        clear(dst)
        shutil.copytree(src, dst / "copy")  # same content and mtimes: the seeded copy
        edit()
        m = resync()
        same_tree(src, dst / "copy")
        rows.append(Row("3. delta: 256 MiB file, two 4 KiB pages changed (wire bytes of the resync)", tool, m.seconds,
                        size, wire_bytes=m.wire, rss_client_kb=m.rss, rss_server_kb=m.server_rss,
                        cpu_client_s=m.cpu, cpu_server_s=m.server_cpu,
                        note=f"{100 * m.wire / size:.3f} % of the file on the wire"))

    link = ["--delay-ms", "50", "--conn-rate", "1M", "--link-rate", "16M"]
    measure("pareco", lambda: run_pareco(src, dst, link, work, 16))
    if args.baselines:
        measure("rsync (daemon)", lambda: run_rsync(src, dst, link, work, ["--no-whole-file"]))
    return rows


def resync_rows(scenario: str, src: Path, dst: Path, seed, edit, tools: dict, size: int, check=None) -> list[Row]:
    """For each tool: a fresh copy of the old version at the destination (seed), the source
    edited (edit), one resync measured (wire bytes above all); the copy must equal the source."""
    rows = []
    for tool, resync in tools.items():
        clear(dst)
        seed()
        edit()
        m = resync()
        (check or same_tree)(src, dst / "copy")
        rows.append(Row(scenario, tool, m.seconds, size, wire_bytes=m.wire, rss_client_kb=m.rss,
                        rss_server_kb=m.server_rss, cpu_client_s=m.cpu, cpu_server_s=m.server_cpu,
                        note=f"{100 * m.wire / size:.3f} % of the data on the wire"))
    return rows


def shifted(args, work: Path) -> list[Row]:
    """Scenario 9: one byte inserted 1 MiB into a 256 MiB file: content shifted (wire bytes of the resync)."""
    size = 256 * MiB if not args.quick else 16 * MiB
    old, src, dst = work / "s9-old", work / "s9-src", work / "s9-dst"
    random_file(old / "dump.bin", size)
    age(old)
    link = ["--delay-ms", "50", "--conn-rate", "1M", "--link-rate", "16M"]

    def edit():
        clear(src)
        data = (old / "dump.bin").read_bytes()
        (src / "dump.bin").write_bytes(data[:MiB] + b"!" + data[MiB:])
        subprocess.run(["touch", "-d", "30 minutes ago", str(src / "dump.bin")], check=True)

    tools = {"pareco": lambda: run_pareco(src, dst, link, work, 16)}
    if args.baselines:
        tools["rsync (daemon)"] = lambda: run_rsync(src, dst, link, work, ["--no-whole-file"])
    return resync_rows("12. shifted: 1 byte inserted 1 MiB into a 256 MiB file (wire bytes of the resync)", src, dst,
                       lambda: shutil.copytree(old, dst / "copy"), edit, tools, size)


def dump_records(n: int, changed) -> bytes:
    """A text dump of `n` records (tab-separated, 80-200 bytes each); `changed(i)` records rewritten
    with other lengths."""
    import random
    out = []
    for i in range(n):
        rng = random.Random(i)
        words = " ".join(rng.choice(["alpha", "replica", "tenant", "order", "invoice", "shipped", "pending", "refund",
                                     "customer", "warehouse", "priority", "archived"]) for _ in range(rng.randint(8, 24)))
        if changed(i):
            words = f"UPDATED {random.Random(-i).randint(0, 10**9)} " + words[: rng.randint(10, len(words))]
        out.append(f"{i:09d}\t{rng.randint(0, 10**9)}\t{words}\n")
    return "".join(out).encode()


def dump(args, work: Path) -> list[Row]:
    """Scenario 10: a dump of 300,000 records rewritten whole after 1 % of them changed (with other
    lengths, so content shifts): pareco beside rsync -z in delta mode."""
    n = 300_000 if not args.quick else 20_000
    old, src, dst = work / "s10-old", work / "s10-src", work / "s10-dst"
    old.mkdir(parents=True)
    (old / "table.dump").write_bytes(dump_records(n, lambda i: False))
    age(old)
    new = dump_records(n, lambda i: i % 100 == 42)
    link = ["--delay-ms", "50", "--conn-rate", "1M", "--link-rate", "16M"]

    def edit():
        clear(src)
        (src / "table.dump").write_bytes(new)
        subprocess.run(["touch", "-d", "30 minutes ago", str(src / "table.dump")], check=True)

    tools = {"pareco": lambda: run_pareco(src, dst, link, work, 16)}
    if args.baselines:
        tools["rsync -z (daemon)"] = lambda: run_rsync(src, dst, link, work, ["--no-whole-file", "-z"])
    return resync_rows(f"13. dump: {n:,} records rewritten, 1 % changed in length (wire bytes of the resync)", src, dst,
                       lambda: shutil.copytree(old, dst / "copy"), edit, tools, len(new))


def moves(args, work: Path) -> list[Row]:
    """Scenario 11: a renamed 1 GiB directory and rotated logs (a.log -> a.log.1 -> ... and a new
    a.log), resynced with --delete: what is on the wire beside what was renamed."""
    size, files = (1024 * MiB, 512) if not args.quick else (32 * MiB, 64)
    old, src, dst = work / "s11-old", work / "s11-src", work / "s11-dst"
    for i in range(files):
        random_file(old / "index" / f"segment-{i:04d}", size // files)
    for i, name in enumerate(["app.log", "app.log.1", "app.log.2", "app.log.3"]):
        (old / "log").mkdir(parents=True, exist_ok=True)
        (old / "log" / name).write_bytes(log_text(4 * MiB + i, 77 + i))
    age(old)
    renamed = tree_bytes(old)
    new_log = log_text(MiB, 999)
    # No per-connection cap: what counts is what crosses, and rsync's one
    # connection would take 17 minutes at 1 MiB/s.
    link = ["--delay-ms", "50", "--link-rate", "64M"]

    def edit():
        clear(src)
        shutil.rmtree(src)
        shutil.copytree(old, src)
        (src / "index").rename(src / "index.old")
        logs = src / "log"
        for a, b in [("app.log.3", "app.log.4"), ("app.log.2", "app.log.3"), ("app.log.1", "app.log.2"),
                     ("app.log", "app.log.1")]:
            (logs / a).rename(logs / b)
        (logs / "app.log").write_bytes(new_log)
        subprocess.run(["touch", "-d", "30 minutes ago", str(logs / "app.log"), str(logs), str(src)], check=True)

    tools = {"pareco --delete": lambda: run_pareco(src, dst, link, work, 16, sync_only=["--delete"])}
    if args.baselines:
        tools["rsync --delete (daemon)"] = lambda: run_rsync(src, dst, link, work, ["--delete", "--no-whole-file"])
    rows = resync_rows("14. moves: a 1 GiB directory renamed, 4 logs rotated, 1 MiB new, 64 MiB/s link (wire bytes)",
                       src, dst, lambda: shutil.copytree(old, dst / "copy"), edit, tools, renamed + len(new_log))
    for r in rows:
        r.note = f"{100 * r.wire_bytes / renamed:.2f} % of what was renamed; new data {fmt_bytes(len(new_log))}"
    return rows


def loopback(args, work: Path) -> list[Row]:
    """Scenario 5: a 1 GiB file over loopback, no proxy; cp is the local floor."""
    size = 1024 * MiB if not args.quick else 64 * MiB
    src = work / "s5-src"
    random_file(src / "big.bin", size)
    age(src)
    dst = work / "s5-dst"
    flush()

    def pareco():
        clear(dst)
        flush()
        return run_pareco(src, dst, None, work, 16)

    def cp():
        clear(dst)
        flush()
        return timed(["cp", str(src / "big.bin"), str(dst / "big.bin")])

    def nc():
        clear(dst)
        flush()
        return run_tar_nc(src, dst / "copy", None, work)

    def rsync():
        clear(dst)
        flush()
        return run_rsync(src, dst, None, work)

    tools = {"pareco": pareco, "cp": cp}
    if args.baselines:
        tools |= {"tar \\| nc": nc, "rsync (daemon)": rsync}
    return summarize("5. loopback: 1 GiB file, no proxy", interleave(tools, args.repeat), size, None)


def connections(args, work: Path) -> list[Row]:
    """-j auto: a link that needs 64 connections, loopback (where few do), and two syncs sharing one link."""
    size = 256 * MiB if not args.quick else 8 * MiB
    src = work / "sj-src"
    random_file(src / "big.bin", size)
    age(src)
    dst = work / "sj-dst"
    rows = []

    def sync(jobs, link, stats: Path) -> Measured:
        clear(dst)
        m = run_pareco(src, dst, link, work, jobs, sync_only=["--stats-json", str(stats)])
        same_tree(src, dst / "copy")
        m.note = f"{json.loads(stats.read_text())['connections']} connections"
        return m

    wide = ["--delay-ms", "50", "--conn-rate", "256K", "--link-rate", "16M"]
    tools = {"pareco (-j auto)": lambda: sync("auto", wide, work / "sj-auto.json")}
    if args.baselines:
        tools |= {"pareco -j 16": lambda: sync(16, wide, work / "sj-16.json"),
                  "pareco -j 64": lambda: sync(64, wide, work / "sj-64.json")}
    rows += summarize(f"15a. {size // MiB} MiB file, 16 MiB/s link, 256 KiB/s per conn (needs 64), 100 ms RTT",
                      interleave(tools, 1), size, 16 * MiB)

    flush()
    tools = {"pareco (-j auto)": lambda: sync("auto", None, work / "sj-auto.json"),
             "pareco -j 16": lambda: sync(16, None, work / "sj-16.json")}
    rows += summarize(f"15b. loopback: {size // MiB} MiB file", interleave(tools, args.repeat), size, None)

    # Two syncs started together through one emulated link (one server, two
    # destinations): each one's rate over its own run, and the pair's.
    shared = ["--delay-ms", "50", "--conn-rate", "256K", "--link-rate", "16M"]
    half = work / "sj-half"
    random_file(half / "a" / "big.bin", size // 2)
    random_file(half / "b" / "big.bin", size // 2)
    age(half)
    clear(dst)
    server = ParecoServer(dst)
    wan = Wan(server.port, shared, work)
    try:
        started = time.perf_counter()
        procs = {name: subprocess.Popen([str(PARECO), "sync", "-q", "--stats-json", str(work / f"sj-{name}.json"),
                                         str(half / name), f"pareco://127.0.0.1:{wan.port}/{name}"],
                                        env=pareco_env(), stderr=subprocess.PIPE, text=True)
                 for name in ("a", "b")}
        ended = {}
        while len(ended) < len(procs):
            for name, proc in procs.items():
                if name not in ended and proc.poll() is not None:
                    ended[name] = time.perf_counter() - started
                    if proc.returncode != 0:
                        raise RuntimeError(f"sync {name} failed: {proc.stderr.read()[-2000:]}")
            time.sleep(0.05)
    finally:
        wire = wan.stop()
        server.stop()
    for name in ("a", "b"):
        same_tree(half / name, dst / name)
        conns = json.loads((work / f"sj-{name}.json").read_text())["connections"]
        rows.append(Row("15c. two syncs sharing one 16 MiB/s link (256 KiB/s per conn)", f"pareco sync {name}",
                        ended[name], size // 2, link_rate=16 * MiB, runs=[round(ended[name], 3)],
                        note=f"{conns} connections"))
    rates = [size / 2 / ended[n] for n in ("a", "b")]
    rows.append(Row("15c. two syncs sharing one 16 MiB/s link (256 KiB/s per conn)", "both", max(ended.values()),
                    size, wire_bytes=wire, link_rate=16 * MiB,
                    note=f"rates within {100 * (max(rates) / min(rates) - 1):.0f} % of each other"))
    return rows


def encryption(args, work: Path) -> list[Row]:
    """The cost of encryption: a 1 GiB file over loopback, encrypted and not; with --baselines,
    the rsync daemon interleaved with both, so that their CPU per GiB is compared within one set
    of runs (this machine's CPU figures move by a third from one scenario to the next)."""
    size = 1024 * MiB if not args.quick else 64 * MiB
    src = work / "enc-src"
    random_file(src / "big.bin", size)
    age(src)
    dst = work / "enc-dst"

    def pareco(extra):
        def go():
            clear(dst)
            flush()
            return run_pareco(src, dst, None, work, 16, extra)
        return go

    def rsync():
        clear(dst)
        flush()
        return run_rsync(src, dst, None, work)

    tools = {"pareco (encrypted)": pareco([]), "pareco --insecure-no-encryption": pareco(["--insecure-no-encryption"])}
    if args.baselines:
        tools["rsync (daemon)"] = rsync
    rows = summarize("encryption cost: 1 GiB file over loopback", interleave(tools, max(args.repeat, 5)), size, None)
    rsync_cpu = next((r.cpu_per_gib for r in rows if r.tool == "rsync (daemon)"), None)
    for r in rows:
        if rsync_cpu and r.tool.startswith("pareco") and r.cpu_per_gib is not None:
            r.note = f"CPU {r.cpu_per_gib / rsync_cpu:.2f}x the rsync daemon's in these runs"
    return rows


def final_round(args, work: Path) -> list[Row]:
    """Scenario 4: the final round of a migration, an unchanged 100,000-file tree resynced over a
    WAN link. Seeding the copies (over loopback) also measures pareco's memory on such a tree."""
    n = 100_000 if not args.quick else 2000
    link = ["--delay-ms", "50", "--conn-rate", "1M", "--link-rate", "16M"]
    src = work / "s4-src"
    many_files(src, n, 100, per_dir=1000)
    age(src)
    payload = tree_bytes(src)
    dst = work / "s4-dst"
    clear(dst)
    name = f"4. final round: unchanged {n:,} files of 100 B, 16 MiB/s link, 1 MiB/s per conn, 100 ms RTT"
    memory = f"memory: {n:,} files of 100 B, over loopback"
    rows = []

    server = ParecoServer(dst)
    url = f"pareco://127.0.0.1:{server.port}/copy"
    for label in ("initial push", "no-op resync"):
        m = timed([str(PARECO), "sync", "-q", str(src), url], env=pareco_env())
        rows.append(Row(memory, f"pareco ({label})", m.seconds, payload, rss_client_kb=m.rss, cpu_client_s=m.cpu))
    server_rss, server_cpu = server.stop()
    for r in rows:
        r.rss_server_kb = server_rss
    same_tree(src, dst / "copy")

    def resync_of(copy, run):
        def go():
            m = run()
            same_tree(src, copy / "copy")
            return m
        return go

    def resync(run):
        return resync_of(dst, run)

    tools = {"pareco -j 32": resync(lambda: run_pareco(src, dst, link, work, 32))}
    if args.baselines:
        rsync_dst = work / "s4-rsync"
        clear(rsync_dst)
        run_rsync(src, rsync_dst, None, work)  # seed rsync's own copy over loopback
        tools["rsync (daemon)"] = lambda: run_rsync(src, rsync_dst, link, work)
        # The strongest peers resync rsync's copy (same content and mtimes).
        if have("fpsync"):
            tools["fpsync -n 32 (rsync daemon)"] = resync_of(rsync_dst, lambda: run_fpsync(src, rsync_dst, link, work, n))
        if have("rclone"):
            tools["rclone sftp, --transfers 32 --checkers 32"] = resync_of(
                rsync_dst, lambda: run_rclone(src, rsync_dst, link, work))
    return summarize(name, interleave(tools, args.repeat), 0, None) + rows


def log_text(size: int, seed: int) -> bytes:
    """A PostgreSQL statement log: compresses about 8:1 with zstd -1, as such logs do."""
    import random
    rng = random.Random(seed)
    statements = ["SELECT * FROM orders WHERE id = {}", "UPDATE accounts SET balance = balance - {} WHERE id = 17",
                  "INSERT INTO events (kind, payload) VALUES ('click', '{}')", "DELETE FROM sessions WHERE expires < {}",
                  "checkpoint complete: wrote {} buffers", "automatic vacuum of table \"app.public.orders\": index scans: {}"]
    pids = [rng.randint(1000, 99999) for _ in range(12)]
    t = 1_795_000_000.0 + seed * 3600
    lines, n = [], 0
    while n < size:
        t += rng.expovariate(50)
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t)) + f".{int(t * 1000) % 1000:03d}"
        line = (f"{stamp} UTC [{rng.choice(pids)}] app@db{rng.randint(1, 4)} LOG:  duration: {rng.random() * 50:.3f} ms  "
                f"statement: {rng.choice(statements).format(rng.randint(1, 10**6))}\n")
        lines.append(line)
        n += len(line)
    return "".join(lines).encode()[:size]


def text_tree(args, work: Path) -> list[Row]:
    """Scenario 8: a tree of database text (statement logs, big and small) over the seed link:
    pareco compresses where it pays, beside itself with --compress none and rsync with and without -z."""
    link = ["--delay-ms", "50", "--conn-rate", "512K", "--link-rate", "8M"]
    src = work / "s8-src"
    big, n_small = (6 * MiB, 2000) if not args.quick else (MiB, 100)
    (src / "log").mkdir(parents=True)
    for i in range(8):
        (src / "log" / f"postgresql-{i}.log").write_bytes(log_text(big, 1000 + i))
    for i in range(n_small):
        d = src / "small" / f"d{i // 500}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"{i}.log").write_bytes(log_text(8192, i))
    age(src)
    payload = tree_bytes(src)
    dst = work / "s8-dst"
    pareco, rsync = tree_copiers(src, dst, link, work)

    def pareco_with(extra):
        def go():
            clear(dst)
            m = run_pareco(src, dst, link, work, 32, extra)
            same_tree(src, dst / "copy")
            return m
        return go

    def rsync_z():
        clear(dst)
        m = run_rsync(src, dst, link, work, ["-z"])
        same_tree(src, dst / "copy")
        return m

    tools = {"pareco -j 32": pareco(32), "pareco -j 32 --compress none": pareco_with(["--compress", "none"])}
    if args.baselines:
        tools |= {"rsync -z (daemon)": rsync_z, "rsync (daemon)": rsync()}
    return summarize("8. text tree: 64 MiB of database logs, 8 MiB/s link, 0.5 MiB/s per conn, 100 ms RTT",
                     interleave(tools, args.repeat if not args.baselines else 1), payload, 8 * MiB)


def stream_input(path: Path, size: int) -> None:
    """Two thirds text, one third random, in alternating 4 MiB runs."""
    with open(path, "wb") as f:
        for run in range(size // (4 * MiB)):
            f.write(os.urandom(4 * MiB) if run % 3 == 2 else log_text(4 * MiB, run))


def run_pipe(send: str, recv: str, src: Path, out: Path, link: list[str] | None, work: Path) -> Measured:
    """One stream from a shell pipeline reading `src` to one writing `out`,
    the receiver listening on {port}, the sender connecting to {port} (the
    proxy's, if there is a link). Timed from the sender's start to the
    receiver's exit; the output must equal the input."""
    flush()
    port = free_port()
    usage = work / "receiver.time"
    receiver = subprocess.Popen(["/usr/bin/time", "-f", "%M %U %S", "-o", str(usage), "sh", "-c",
                                 recv.format(port=port, out=out)], env=pareco_env(), stderr=subprocess.PIPE, text=True)
    wait_listen(port)
    wan = Wan(port, link, work) if link is not None else None
    start = time.perf_counter()
    try:
        m = timed(send.format(port=wan.port if wan else port, src=src), env=pareco_env(), shell=True)
        if receiver.wait(timeout=1800) != 0:
            raise RuntimeError(f"receiver failed: {receiver.stderr.read()[-2000:]}")
        m.seconds = time.perf_counter() - start
    finally:
        receiver.kill()
        m_wire = wan.stop() if wan else 0
    m.wire = m_wire
    rss, user, system = usage.read_text().strip().splitlines()[-1].split()
    m.server_rss, m.server_cpu = int(rss), float(user) + float(system)
    if not filecmp.cmp(src, out, shallow=False):
        raise RuntimeError(f"the stream arrived altered: {send!r}")
    out.unlink()
    return m


PARECO_SEND = f"{PARECO} send -q {os.environ.get('PARECO_BENCH_ARGS', '')} pareco://127.0.0.1:{{port}} < {{src}}"
PARECO_RECV = f"{PARECO} recv -q {os.environ.get('PARECO_BENCH_ARGS', '')} --listen 127.0.0.1:{{port}} > {{out}}"
MBUFFER_SEND = "mbuffer -q -m 256M < {src} | nc -N 127.0.0.1 {port}"
MBUFFER_RECV = "nc -l 127.0.0.1 {port} | mbuffer -q -m 256M > {out}"


def stream(args, work: Path) -> list[Row]:
    """Scenario 6: a database backup streamed through a WAN link, pareco send/recv beside
    zstd -T0 | mbuffer | nc (one connection) through the same proxy."""
    size = 256 * MiB if not args.quick else 12 * MiB
    link = ["--delay-ms", "50", "--conn-rate", "1M", "--link-rate", "16M"]
    src, out = work / "s6-stream", work / "s6-out"
    stream_input(src, size)
    flush()
    tools = {"pareco send/recv": lambda: run_pipe(PARECO_SEND, PARECO_RECV, src, out, link, work)}
    if args.baselines:
        tools["zstd -T0 \\| mbuffer \\| nc"] = lambda: run_pipe(
            "zstd -q -T0 -c < {src} | " + MBUFFER_SEND.replace("< {src} ", ""),
            MBUFFER_RECV.replace(" > {out}", " | zstd -q -d -c > {out}"), src, out, link, work)
    return summarize("6. stream: 256 MiB, two thirds text, 16 MiB/s link, 1 MiB/s per conn, 100 ms RTT",
                     interleave(tools, 1 if args.baselines else args.repeat), size, 16 * MiB)


def stream_loopback(args, work: Path) -> list[Row]:
    """Scenario 7: 1 GiB of random data streamed over loopback, pareco beside mbuffer | nc."""
    size = 1024 * MiB if not args.quick else 64 * MiB
    src, out = work / "s7-stream", work / "s7-out"
    random_file(src, size)
    flush()
    tools = {"pareco send/recv": lambda: run_pipe(PARECO_SEND, PARECO_RECV, src, out, None, work),
             "mbuffer \\| nc": lambda: run_pipe(MBUFFER_SEND, MBUFFER_RECV, src, out, None, work)}
    return summarize("7. stream over loopback: 1 GiB, incompressible", interleave(tools, args.repeat), size, None)


# ---------------------------------------------------------------- the cutover forwarder

LOADGEN = PARECO.parent / "examples" / "loadgen"


def loadgen(*args) -> dict:
    """One client run of the load generator (crates/forward/examples/loadgen.rs); its JSON report."""
    r = subprocess.run([str(LOADGEN), *map(str, args)], capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        raise RuntimeError(f"loadgen {args} failed ({r.returncode}): {r.stderr[-2000:]}")
    return json.loads(r.stdout)


class Forwarder:
    """A TCP forwarder in front of `target` (a port on 127.0.0.1), or none (`direct`)."""

    def __init__(self, tool: str, target: int, work: Path):
        self.tool, self.proc = tool, None
        port = free_port()
        if tool == "direct":
            self.port = target
            return
        if tool == "pareco forward":
            self.proc = subprocess.Popen([str(PARECO), "forward", "127.0.0.1:0", f"127.0.0.1:{target}"],
                                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            port = int(self.proc.stdout.readline().split(" -> ")[0].rsplit(":", 1)[1])
        elif tool == "rinetd":
            conf = work / f"rinetd-{port}.conf"
            conf.write_text(f"127.0.0.1 {port} 127.0.0.1 {target}\n")
            self.proc = subprocess.Popen(["rinetd", "-f", "-c", str(conf)], stdout=subprocess.DEVNULL,
                                         stderr=subprocess.DEVNULL)
        elif tool == "socat":
            self.proc = subprocess.Popen(["socat", f"TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork,backlog=4096",
                                          f"TCP:127.0.0.1:{target}"], stderr=subprocess.DEVNULL)
        elif tool.startswith("haproxy"):
            conf = work / f"haproxy-{port}.cfg"
            splice = "    option splice-request\n    option splice-response\n" if "splice" in tool else ""
            conf.write_text("global\n    log stderr local0 emerg\ndefaults\n    mode tcp\n    timeout connect 10s\n"
                            f"    timeout client 1h\n    timeout server 1h\n{splice}"
                            f"listen fwd\n    bind 127.0.0.1:{port}\n    server target 127.0.0.1:{target}\n")
            self.proc = subprocess.Popen(["haproxy", "-db", "-f", str(conf)], stdout=subprocess.DEVNULL,
                                         stderr=subprocess.DEVNULL)
        else:
            raise ValueError(tool)
        self.port = port
        wait_port(port)

    def cpu(self) -> float:
        """CPU seconds the forwarder has used so far (0 for a direct connection)."""
        return (cpu_seconds(self.proc.pid) or 0.0) if self.proc else 0.0

    def stop(self) -> int | None:
        """Stops it; returns its peak RSS in KiB."""
        if not self.proc:
            return None
        rss = peak_rss_kb(self.proc.pid)
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        return rss


def forward(args, work: Path) -> list[Row]:
    """The cutover forwarder beside rinetd, socat and haproxy (with splice forced), and a direct
    connection as the reference: bulk throughput, request/response rate and latency, connection
    rate, and connections held at once. The load generator is a Rust program (tokio), so that the
    clients are not what is measured; everything shares the machine's cores."""
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # every child inherits it
    quick = args.quick
    bulk_bytes = (768 if not quick else 16) * MiB
    rr_ms, latency_ms, connect_ms = (5000, 3000, 3000) if not quick else (300, 300, 300)
    # A forwarder holds two descriptors per connection: 20,000 need 40,000.
    want = 20_000 if not quick else 200
    held_target = min(want, (hard - 200) // 2)
    tools = ["direct", "pareco forward", "haproxy (splice)", "rinetd", "socat"]
    server = subprocess.Popen([str(LOADGEN), "server"], stdout=subprocess.PIPE, text=True)
    target = int(server.stdout.readline().rsplit(":", 1)[1])
    bulk1 = {t: [] for t in tools}
    bulk64 = {t: [] for t in tools}
    other: dict[str, dict] = {t: {} for t in tools}
    rss: dict[str, int | None] = {}
    try:
        for rep in range(args.repeat):
            for tool in tools:
                fw = Forwarder(tool, target, work)
                addr = f"127.0.0.1:{fw.port}"
                try:
                    for runs, conns in ((bulk1, 1), (bulk64, 64)):
                        cpu = fw.cpu()
                        r = loadgen("bulk", addr, bulk_bytes, conns)
                        runs[tool].append(Measured(r["seconds"], None, None, server_cpu=fw.cpu() - cpu))
                    o = other[tool]
                    cpu = fw.cpu()
                    o.setdefault("rr", []).append(loadgen("rr", addr, 100, 1024, rr_ms) | {"cpu": fw.cpu() - cpu})
                    o.setdefault("latency", []).append(loadgen("rr", addr, 1, 1024, latency_ms))
                    cpu = fw.cpu()
                    o.setdefault("connect", []).append(loadgen("connect", addr, 8, connect_ms) | {"cpu": fw.cpu() - cpu})
                    if rep == 0 and tool != "socat":  # socat: a process per connection, not at these counts
                        o["hold"] = loadgen("hold", addr, held_target)
                finally:
                    rss[tool] = max(rss.get(tool) or 0, fw.stop() or 0) or None
    finally:
        server.terminate()
        server.wait()

    rows = []
    for name, runs in ((f"forward 1: bulk, one connection, {fmt_bytes(bulk_bytes)} over loopback", bulk1),
                       (f"forward 2: bulk, 64 connections, {fmt_bytes(bulk_bytes)} in all", bulk64)):
        direct = statistics.median(m.seconds for m in runs["direct"])
        for tool in tools:
            secs = [m.seconds for m in runs[tool]]
            med = statistics.median(secs)
            cpu = statistics.median(m.server_cpu for m in runs[tool]) if tool != "direct" else None
            rows.append(Row(name, tool, med, bulk_bytes, rss_server_kb=rss[tool], cpu_server_s=cpu,
                            runs=[round(s, 3) for s in secs],
                            note="the reference" if tool == "direct" else f"{direct / med:.0%} of direct"))
    # Medians over the runs, field by field.
    for o in other.values():
        for k in ("rr", "latency", "connect"):
            o[k] = {f: statistics.median(run[f] for run in o[k]) for f in o[k][0]}
    d = other["direct"]
    plus = lambda tool, value, base: "" if tool == "direct" else f" ({value - base:+.0f} µs)"
    for tool in tools:
        rr = other[tool]["rr"]
        rows.append(Row("forward 3: 1 KiB request/response, 100 held connections", tool, 0, 0,
                        rss_server_kb=rss[tool], cpu_server_s=rr["cpu"] if tool != "direct" else None,
                        note=f"{rr['rps']:,.0f} req/s; p50 {rr['p50_us']:.0f} µs{plus(tool, rr['p50_us'], d['rr']['p50_us'])}, "
                             f"p99 {rr['p99_us']:.0f} µs{plus(tool, rr['p99_us'], d['rr']['p99_us'])}"))
    for tool in tools:
        lat = other[tool]["latency"]
        rows.append(Row("forward 4: 1 KiB request/response, one connection (latency)", tool, 0, 0,
                        note=f"{lat['rps']:,.0f} req/s; p50 {lat['p50_us']:.0f} µs{plus(tool, lat['p50_us'], d['latency']['p50_us'])}, "
                             f"p99 {lat['p99_us']:.0f} µs{plus(tool, lat['p99_us'], d['latency']['p99_us'])}"))
    for tool in tools:
        conn = other[tool]["connect"]
        rows.append(Row("forward 5: new connections (8 at a time, a byte there and back)", tool, 0, 0,
                        cpu_server_s=conn["cpu"] if tool != "direct" else None,
                        note=f"{conn['per_second']:,.0f} connections/s, {conn['failed']:.0f} failed"))
    for tool in tools:
        name = f"forward 6: {held_target:,} connections open at once"
        if "hold" not in other[tool]:
            rows.append(Row(name, tool, 0, 0, note="not run: a process per connection"))
            continue
        h = other[tool]["hold"]
        failures = ", ".join(f"{n} {k}" for k, n in h["failures"].items()) or "none failed"
        rows.append(Row(name, tool, 0, 0, rss_server_kb=rss[tool],
                        note=f"{h['held']:,} open, {h['still_working']:,} still working once all were; {failures}"))
    if held_target < want:
        print(f"note: {want:,} connections need {2 * want:,} descriptors in a forwarder; the hard limit here is "
              f"{hard:,}, so {held_target:,} were held", file=sys.stderr)
    return rows


class S3Server:
    """moto's S3 API server on 127.0.0.1, with one bucket; what clients need to reach it."""

    def __init__(self, bucket: str):
        self.port, self.bucket = free_port(), bucket
        self.proc = subprocess.Popen(["moto_server", "-H", "127.0.0.1", "-p", str(self.port)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port, 30)
        import http.client
        conn = http.client.HTTPConnection("127.0.0.1", self.port)
        conn.request("PUT", f"/{bucket}")  # moto checks no signature
        if conn.getresponse().status != 200:
            raise RuntimeError(f"cannot create bucket {bucket}")

    @staticmethod
    def env(port: int) -> dict:
        endpoint = f"http://127.0.0.1:{port}"
        return dict(pareco_env(), AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_REGION="us-east-1",
                    AWS_DEFAULT_REGION="us-east-1", AWS_ENDPOINT_URL=endpoint)

    def stop(self) -> tuple[int | None, float | None]:
        rss, cpu = peak_rss_kb(self.proc.pid), cpu_seconds(self.proc.pid)
        self.proc.terminate()
        self.proc.wait()
        return rss, cpu


RELAY_ARGS = os.environ.get("PARECO_RELAY_ARGS", "-j 32")
RELAY_SEND_ARGS = os.environ.get("PARECO_RELAY_SEND_ARGS", "--object-size 512K")


def run_relay(s3: S3Server, src: Path, out: Path, link: list[str] | None, work: Path, prefix: str,
              together: bool = True) -> Measured:
    """pareco send s3://… and pareco recv s3://… (at once, or one after the other), through
    the emulator if `link`; timed from the sender's start to the receiver's verified end."""
    flush()
    wan = Wan(s3.port, link, work) if link is not None else None
    env = S3Server.env(wan.port if wan else s3.port)
    url = f"s3://{s3.bucket}/{prefix}"
    usage = work / "relay-recv.time"
    recv_cmd = ["/usr/bin/time", "-f", "%M %U %S", "-o", str(usage), str(PARECO), "recv", "-q", *RELAY_ARGS.split(), url]
    start = time.perf_counter()
    try:
        if together:
            with open(out, "wb") as f:
                receiver = subprocess.Popen(recv_cmd, env=env, stdout=f, stderr=subprocess.PIPE, text=True)
            m = timed(f"{PARECO} send -q {RELAY_ARGS} {RELAY_SEND_ARGS} {url} < {src}", env=env, shell=True)
        else:
            m = timed(f"{PARECO} send -q {RELAY_ARGS} {RELAY_SEND_ARGS} {url} < {src}", env=env, shell=True)
            with open(out, "wb") as f:
                receiver = subprocess.Popen(recv_cmd, env=env, stdout=f, stderr=subprocess.PIPE, text=True)
        if receiver.wait(timeout=1800) != 0:
            raise RuntimeError(f"pareco recv failed: {receiver.stderr.read()[-2000:]}")
        m.seconds = time.perf_counter() - start
    finally:
        m_wire = wan.stop() if wan else 0
    m.wire = m_wire
    rss, user, system = usage.read_text().strip().splitlines()[-1].split()
    m.server_rss, m.server_cpu = int(rss), float(user) + float(system)
    if not filecmp.cmp(src, out, shallow=False):
        raise RuntimeError("the relayed stream arrived altered")
    out.unlink()
    return m


def run_upload_download(s3: S3Server, up: str, down: str, src: Path, out: Path, link: list[str], work: Path,
                        key: str) -> Measured:
    """A one-object tool: upload `src` (`up`), then download it (`down`), through the same link.
    {url}, {src}, {out} and {endpoint} are filled in."""
    flush()
    wan = Wan(s3.port, link, work)
    env = S3Server.env(wan.port)
    env.pop("AWS_CA_BUNDLE", None)  # (no TLS here; some clients refuse a bundle with an http endpoint)
    fill = dict(url=f"s3://{s3.bucket}/{key}", src=src, out=out, endpoint=f"http://127.0.0.1:{wan.port}")
    start = time.perf_counter()
    try:
        m_up = timed(up.format(**fill), env=env, shell=True)
        m_down = timed(down.format(**fill), env=env, shell=True)
        seconds = time.perf_counter() - start
    finally:
        wire = wan.stop()
    if not filecmp.cmp(src, out, shallow=False):
        raise RuntimeError(f"{up!r} then {down!r}: the copy arrived altered")
    out.unlink()
    m = Measured(seconds, m_up.rss, m_up.cpu, m_down.rss, m_down.cpu, wire)
    m.note = f"upload {m_up.seconds:.1f} s, then download {m_down.seconds:.1f} s"
    return m


# rclone rcat's streaming (multipart) upload fails against moto 5.2.1 (400 Bad Request when it
# completes the upload, with Debian's rclone 1.60.1), so the baseline is the AWS CLI's streaming
# `aws s3 cp -`, itself a multipart upload, visible only once complete.
AWS_UP = "aws s3 cp --only-show-errors --endpoint-url {endpoint} - {url} < {src}"
AWS_DOWN = "aws s3 cp --only-show-errors --endpoint-url {endpoint} {url} - > {out}"


def relay(args, work: Path) -> list[Row]:
    """Scenario 9: a stream relayed through object storage (moto's S3 server behind the
    emulator), send and recv at once, beside `aws s3 cp -` then `aws s3 cp … -`; a compressible
    stream; and moto alone over loopback (its own ceiling)."""
    size = 256 * MiB if not args.quick else 8 * MiB
    link = ["--delay-ms", "20", "--conn-rate", "1M", "--link-rate", "16M"]
    src, out, text_src = work / "s9-random", work / "s9-out", work / "s9-text"
    random_file(src, size)
    stream_input(text_src, size)
    s3 = S3Server("bench")
    rows = []
    try:
        n = iter(range(1_000_000))
        tools = {"pareco send \\| recv s3:// (at once)":
                 lambda: run_relay(s3, src, out, link, work, f"r{next(n)}")}
        if args.baselines:
            tools["aws s3 cp -, then aws s3 cp … -"] = lambda: run_upload_download(
                s3, AWS_UP, AWS_DOWN, src, out, link, work, f"aws{next(n)}")
        rows += summarize(f"9. relay through S3: {size // MiB} MiB random, 16 MiB/s link, 1 MiB/s per conn, 40 ms RTT",
                          interleave(tools, 1 if args.baselines else args.repeat), size, 16 * MiB)
        rows += summarize(f"9. relay through S3: {size // MiB} MiB, two thirds text, same link",
                          interleave({"pareco send \\| recv s3:// (at once)":
                                      lambda: run_relay(s3, text_src, out, link, work, f"t{next(n)}")}, 1),
                          size, 16 * MiB)
        rows += summarize(f"9. relay: moto alone over loopback, {size // MiB} MiB random (send, then recv)",
                          interleave({"pareco send, then recv s3:// (no emulator)":
                                      lambda: run_relay(s3, src, out, None, work, f"l{next(n)}", together=False)}, 1),
                          size, None)
    finally:
        s3.stop()
    return rows


# ---------------------------------------------------------------- output

def fmt_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    for unit, size in (("GiB", 1 << 30), ("MiB", MiB), ("KiB", 1024)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def table(rows: list[Row]) -> str:
    out = ["| scenario | tool | seconds | MiB/s | of link cap | on the wire | client RSS | server RSS "
           "| CPU s client + server | CPU s per GiB | time vs pareco | note |",
           "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    by_scenario: dict[str, float] = {}
    for r in rows:
        if r.tool.startswith("pareco") and r.scenario not in by_scenario:
            by_scenario[r.scenario] = r.seconds
    for r in rows:
        base = by_scenario.get(r.scenario)
        ratio = f"{r.seconds / base:.2f}x" if base and r.seconds else "-"
        frac = f"{100 * r.link_fraction:.0f} %" if r.link_fraction else "-"
        rss = lambda kb: f"{kb / 1024:.0f} MiB" if kb else "-"
        cpu = " + ".join(f"{c:.2f}" for c in (r.cpu_client_s, r.cpu_server_s) if c is not None) or "-"
        per_gib = f"{r.cpu_per_gib:.2f}" if r.cpu_per_gib is not None else "-"
        secs, rate = (f"{r.seconds:.2f}", f"{r.mib_s:.1f}") if r.seconds else ("-", "-")
        out.append(f"| {r.scenario} | {r.tool} | {secs} | {rate} | {frac} | {fmt_bytes(r.wire_bytes)} "
                   f"| {rss(r.rss_client_kb)} | {rss(r.rss_server_kb)} | {cpu} | {per_gib} | {ratio} | {r.note} |")
    return "\n".join(out)


SCENARIOS = {"seed": seed_link, "small": small_files, "bigfile": big_file, "delta": delta, "final": final_round, "loopback": loopback,
             "stream": stream, "stream-loopback": stream_loopback, "encryption": encryption, "text": text_tree,
             "shifted": shifted, "dump": dump, "moves": moves, "connections": connections, "relay": relay,
             "forward": forward}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny sizes: checks the script, not the speed")
    p.add_argument("--baselines", action="store_true", help="also run rsync, tar|nc (slow on the WAN links)")
    p.add_argument("--repeat", type=int, default=3, help="runs per tool where it is cheap (median reported)")
    p.add_argument("--only", action="append", choices=sorted(SCENARIOS), help="run only these scenarios")
    p.add_argument("--json", type=Path, default=ROOT / "bench" / "out" / "results.json")
    p.add_argument("--work", type=Path, default=ROOT / "bench" / "out",
                   help="where the scratch directory is made (removed afterwards); default bench/out")
    args = p.parse_args()
    if args.quick:
        args.repeat = 1

    args.work.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="work-", dir=args.work))
    rows: list[Row] = []
    try:
        for name in args.only or list(SCENARIOS):
            print(f"# {name} ...", file=sys.stderr, flush=True)
            rows += SCENARIOS[name](args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    md = table(rows)
    print(md)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    meta = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "cores": os.cpu_count(),
            "mem_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / (1 << 30), 1),
            "kernel": platform.release(), "command": " ".join(sys.argv), "quick": args.quick}
    args.json.write_text(json.dumps({"meta": meta, "rows": [asdict(r) | {"mib_s": r.mib_s, "link_fraction": r.link_fraction,
                                                                         "cpu_per_gib": r.cpu_per_gib}
                                                            for r in rows]}, indent=2))
    print(f"\n(JSON: {args.json})", file=sys.stderr)


if __name__ == "__main__":
    main()
