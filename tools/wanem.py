#!/usr/bin/env python3
"""wanem.py -- userspace WAN emulator TCP proxy (Python 3.11+, stdlib only).

(Vendored from the team's shared tools, ../shared/wan/wanem.py, so that the
tests and benchmarks of this repository run on a fresh checkout.)

Forwards TCP connections from one or more local listen ports to a target and
emulates a slow, long link on the way:

  * one-way delay on data in both directions (RTT grows by 2*delay) and an
    emulated TCP handshake (the target sees the connection 1.5 RTT after the
    client connected, so a first request/response costs 2 RTT as on a real
    link),
  * a per-connection, per-direction token-bucket rate cap,
  * a link-wide, per-direction rate cap shared fairly by all connections,
  * bounded in-flight buffering (back-pressure reaches the sender),
  * correct half-close propagation, reset propagation,
  * fault injection: cut (RST) after N bytes, cut a random connection every
    S seconds, refuse the first N connections,
  * JSON stats (rewritten every second, final copy at exit).

See README.md next to this file, or run with --help.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import signal
import socket
import struct
import sys
import time
from collections import deque

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
UP, DOWN = 0, 1                     # UP: client -> target, DOWN: target -> client
LINGER_RST = struct.pack("ii", 1, 0)   # SO_LINGER on, 0 s: close() sends RST
MIN_SLEEP = 0.001                   # pacing debts below this are carried, not slept
TIMER_LAG = 0.0003                  # typical wake-up lateness of an asyncio timer
BURST_S = 0.005                     # token buckets hold max(quantum, 5 ms of rate) credit
_mono = time.monotonic


# --------------------------------------------------------------------------- #
# argument parsing helpers
# --------------------------------------------------------------------------- #
def parse_scaled(text: str) -> float:
    """'512K', '0.5M', '1G', '10MiB', '2MB/s', '100' -> bytes (K/M/G = 2^10/20/30)."""
    t = text.strip().upper()
    if t.endswith("/S"):
        t = t[:-2]
    if t.endswith("IB"):
        t = t[:-2]
    elif t.endswith("B"):
        t = t[:-1]
    mult = 1
    if t and t[-1] in "KMG":
        mult = {"K": KiB, "M": MiB, "G": GiB}[t[-1]]
        t = t[:-1]
    try:
        v = float(t)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"bad size/rate {text!r} (examples: 100, 512K, 0.5M, 1G)") from None
    if not math.isfinite(v) or v < 0:
        raise argparse.ArgumentTypeError(f"bad size/rate {text!r}")
    return v * mult


def parse_size(text: str) -> int:
    return int(round(parse_scaled(text)))


def parse_hostport(text: str) -> tuple[str, int]:
    host, sep, port = text.strip().rpartition(":")
    if not sep or not host:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    host = host.strip("[]")
    try:
        p = int(port)
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad port in {text!r}") from None
    if not 0 <= p <= 65535:
        raise argparse.ArgumentTypeError(f"bad port in {text!r}")
    return host, p


def parse_map(text: str) -> tuple[tuple[str, int], tuple[str, int]]:
    lport, sep, rest = text.strip().partition(":")
    if not sep:
        raise argparse.ArgumentTypeError(
            f"expected LISTENPORT:TARGETHOST:TARGETPORT, got {text!r}")
    listen = parse_hostport("127.0.0.1:" + lport)
    return listen, parse_hostport(rest)


async def sleep_until(due: float) -> None:
    """Sleep until monotonic time `due`, to within about +-0.5 ms.  epoll_wait
    has 1 ms resolution and asyncio rounds timeouts up, so sleep a whole number
    of milliseconds (minus the usual wake-up lag) rather than up to 1 ms late."""
    k = math.floor((due - _mono() - TIMER_LAG) * 1000.0 + 0.5)
    if k > 0:
        await asyncio.sleep(k * 0.001 - 1e-6)


def fmt_bytes(n: float) -> str:
    for unit, div in (("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if abs(n) >= div:
            return f"{n / div:.2f}{unit}"
    return f"{int(n)}B"


# --------------------------------------------------------------------------- #
# building blocks
# --------------------------------------------------------------------------- #
class Bucket:
    """Token bucket kept as a 'virtual clock' (allows debt => strict FIFO
    fairness among the tasks that reserve from it).

    reserve(n) books n bytes and returns how long the caller must wait before
    sending them.  The bucket holds at most `burst` bytes of credit."""

    __slots__ = ("rate", "burst_s", "t")

    def __init__(self, rate: float, burst: float):
        self.rate = float(rate)
        self.burst_s = burst / self.rate
        self.t = 0.0

    def reserve(self, n: int, now: float) -> float:
        lo = now - self.burst_s
        if self.t < lo:
            self.t = lo
        self.t += n / self.rate
        return self.t - now


class Pipe:
    """One direction of one connection: the emulated 'wire'.  Holds
    (timestamp, bytes) chunks between the reader and the writer, bounded by
    `window` bytes."""

    __slots__ = ("q", "queued", "window", "eof", "eof_ts", "_data_waiter", "_space_waiter")

    def __init__(self, window: int):
        self.q: deque = deque()
        self.queued = 0
        self.window = window
        self.eof = False
        self.eof_ts = 0.0
        self._data_waiter: asyncio.Future | None = None
        self._space_waiter: asyncio.Future | None = None

    def put(self, ts: float, data) -> None:
        self.q.append((ts, data))
        self.queued += len(data)
        w = self._data_waiter
        if w is not None:
            self._data_waiter = None
            if not w.done():
                w.set_result(None)

    def set_eof(self, ts: float) -> None:
        self.eof = True
        self.eof_ts = ts
        w = self._data_waiter
        if w is not None:
            self._data_waiter = None
            if not w.done():
                w.set_result(None)

    def release(self, n: int) -> None:
        self.queued -= n
        w = self._space_waiter
        if w is not None and self.queued < self.window:
            self._space_waiter = None
            if not w.done():
                w.set_result(None)

    async def wait_data(self) -> None:
        fut = asyncio.get_running_loop().create_future()
        self._data_waiter = fut
        await fut

    async def wait_space(self) -> None:
        while self.queued >= self.window:
            fut = asyncio.get_running_loop().create_future()
            self._space_waiter = fut
            await fut


class Stats:
    def __init__(self):
        self.start = _mono()
        self.fwd = [0, 0]           # bytes written to the destination, per direction
        self.rcv = [0, 0]           # bytes read from the source, per direction
        self.incoming = 0           # every accepted TCP connection (incl. refused)
        self.accepted = 0           # connections actually proxied
        self.refused = 0
        self.active = 0
        self.peak_concurrent = 0
        self.closed = 0
        self.closed_clean = 0
        self.cut_after = 0
        self.cut_every = 0
        self.reset = 0              # aborted because one side errored / reset
        self.connect_failed = 0
        self.aborted_at_exit = 0
        self.peak_buffered = 0      # max bytes queued in one pipe (one direction of one conn)


# --------------------------------------------------------------------------- #
# one proxied connection
# --------------------------------------------------------------------------- #
class Conn:
    def __init__(self, px: "Proxy", cid: int, csock: socket.socket, peer, target):
        self.px = px
        self.cid = cid
        self.csock = csock
        self.ssock: socket.socket | None = None
        self.peer = peer
        self.target = target          # (family, sockaddr)
        self.tasks: list[asyncio.Task] = []
        self.abort_reason: str | None = None
        self.forwarded = 0            # both directions, for --cut-after
        self.cut_limit = px.draw_cut_limit()
        self.connected = asyncio.Event()
        self.pipes = (Pipe(px.window), Pipe(px.window))
        cr = px.conn_rate
        self.buckets = ((Bucket(cr, px.burst(cr)), Bucket(cr, px.burst(cr)))
                        if cr else (None, None))
        self.t0 = _mono()

    # -- lifecycle ---------------------------------------------------------
    async def run(self) -> None:
        px = self.px
        self.tasks = [asyncio.create_task(self._connect()),
                      asyncio.create_task(self._reader(UP)),
                      asyncio.create_task(self._writer(UP)),
                      asyncio.create_task(self._reader(DOWN)),
                      asyncio.create_task(self._writer(DOWN))]
        px.conns[self.cid] = self
        if px.stopping:
            self.abort("shutdown")
        try:
            await asyncio.wait(self.tasks)
        finally:
            px.conns.pop(self.cid, None)
            self._close()

    def abort(self, reason: str, exc: BaseException | None = None) -> None:
        """Tear the connection down with RST on both sides (idempotent)."""
        if self.abort_reason is not None:
            return
        self.abort_reason = reason
        st = self.px.stats
        if reason in ("reset", "error"):
            st.reset += 1
        elif reason == "connect_failed":
            st.connect_failed += 1
        elif reason == "cut_after":
            st.cut_after += 1
        elif reason == "cut_every":
            st.cut_every += 1
        elif reason == "shutdown":
            st.aborted_at_exit += 1
        if self.px.verbose:
            self.px.log(f"conn {self.cid}: abort ({reason}{': ' + str(exc) if exc else ''})")
        cur = asyncio.current_task()
        for t in self.tasks:
            if t is not cur:
                t.cancel()

    def _close(self) -> None:
        rst = self.abort_reason is not None
        for s in (self.csock, self.ssock):
            if s is None:
                continue
            if rst:
                try:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RST)
                except OSError:
                    pass
            try:
                s.close()
            except OSError:
                pass
        st = self.px.stats
        st.active -= 1
        st.closed += 1
        if not rst:
            st.closed_clean += 1
        if self.px.verbose:
            self.px.log(f"conn {self.cid}: closed after {_mono() - self.t0:.3f}s, "
                        f"{self.forwarded} bytes, {self.abort_reason or 'clean'}")

    # -- tasks -----------------------------------------------------------
    async def _connect(self) -> None:
        px = self.px
        try:
            if px.connect_delay > 0:
                await sleep_until(self.t0 + px.connect_delay)
            family, addr = self.target
            s = socket.socket(family, socket.SOCK_STREAM)
            self.ssock = s
            s.setblocking(False)
            px.set_sockbuf(s)
            try:
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
            await px.loop.sock_connect(s, addr)
        except OSError as e:
            self.abort("connect_failed", e)
            return
        self.connected.set()

    async def _reader(self, d: int) -> None:
        px = self.px
        pipe = self.pipes[d]
        st = px.stats
        try:
            if d == UP:
                src = self.csock
            else:
                await self.connected.wait()
                src = self.ssock
            recv = px.loop.sock_recv
            rsize = px.read_size
            bucket = self.buckets[d]
            link = px.link[d]
            quantum = px.quantum
            rcv = st.rcv
            sleep = asyncio.sleep
            while True:
                if pipe.queued >= pipe.window:
                    await pipe.wait_space()
                data = await recv(src, rsize)
                n = len(data)
                if not n:
                    break
                rcv[d] += n
                if bucket is None and link is None:
                    pipe.put(_mono(), data)
                else:
                    mv = memoryview(data) if n > quantum else None
                    for off in range(0, n, quantum):
                        piece = data if mv is None else mv[off:off + quantum]
                        k = len(piece)
                        if bucket is not None:
                            w = bucket.reserve(k, _mono())
                            if w > MIN_SLEEP:
                                await sleep(w)
                        if link is not None:
                            w = link.reserve(k, _mono())
                            if w > MIN_SLEEP:
                                await sleep(w)
                        pipe.put(_mono(), piece)
                if pipe.queued > st.peak_buffered:
                    st.peak_buffered = pipe.queued
            pipe.set_eof(_mono())
        except OSError as e:
            self.abort("reset", e)
        except Exception as e:                      # bug guard: never hang a connection
            self.px.log(f"conn {self.cid}: internal error in reader: {e!r}")
            self.abort("error", e)

    async def _writer(self, d: int) -> None:
        px = self.px
        pipe = self.pipes[d]
        q = pipe.q
        delay = px.delay
        fwd = px.stats.fwd
        try:
            if d == UP:
                await self.connected.wait()
                dst = self.ssock
            else:
                dst = self.csock
            send = px.loop.sock_sendall
            sleep = asyncio.sleep
            while True:
                if not q:
                    if pipe.eof:
                        break
                    await pipe.wait_data()
                    continue
                ts, data = q[0]
                if delay:               # inlined sleep_until(ts + delay)
                    k = math.floor((ts + delay - _mono() - TIMER_LAG) * 1000.0 + 0.5)
                    if k > 0:
                        await sleep(k * 0.001 - 1e-6)
                q.popleft()
                n = len(data)
                limit = self.cut_limit
                if limit and n >= limit - self.forwarded:
                    rem = max(0, limit - self.forwarded)
                    self.forwarded += rem
                    if rem:
                        await send(dst, memoryview(data)[:rem])
                        fwd[d] += rem
                    self.abort("cut_after")
                    return
                self.forwarded += n
                await send(dst, data)
                fwd[d] += n
                pipe.release(n)
            if delay:                       # the FIN travels the link too
                await sleep_until(pipe.eof_ts + delay)
            dst.shutdown(socket.SHUT_WR)
        except OSError as e:
            self.abort("reset", e)
        except Exception as e:                      # bug guard: never hang a connection
            self.px.log(f"conn {self.cid}: internal error in writer: {e!r}")
            self.abort("error", e)


# --------------------------------------------------------------------------- #
# the proxy
# --------------------------------------------------------------------------- #
class Proxy:
    def __init__(self, args):
        self.args = args
        self.loop: asyncio.AbstractEventLoop | None = None
        self.verbose = args.verbose
        self.delay = args.delay_ms / 1000.0
        if args.connect_delay_ms is None:
            self.connect_delay = 3 * self.delay
        else:
            self.connect_delay = args.connect_delay_ms / 1000.0
        self.conn_rate = args.conn_rate or 0.0
        self.link_rate = args.link_rate or 0.0
        rates = [r for r in (self.conn_rate, self.link_rate) if r]
        if args.quantum:
            self.quantum = args.quantum
        else:
            # 16 KiB, smaller for very slow caps (keeps pacing steps <= ~20 ms)
            self.quantum = int(min(16 * KiB, max(1 * KiB, min(rates) / 50))) if rates else 16 * KiB
        if args.window:
            self.window = args.window
        else:
            r = self.conn_rate or self.link_rate
            if r:
                self.window = int(max(256 * KiB, 2 * r * self.delay))
            elif self.delay:
                self.window = 2 * MiB     # uncapped but delayed: ~ a 4 MiB TCP window
            else:
                self.window = 256 * KiB
        self.read_size = args.read_size
        lr = self.link_rate
        self.link = ((Bucket(lr, self.burst(lr)), Bucket(lr, self.burst(lr)))
                     if lr else (None, None))
        seed = args.seed
        self.rng_jitter = random.Random(f"{seed}-jitter")
        self.rng_cut = random.Random(f"{seed}-cut")
        self.stats = Stats()
        self.conns: dict[int, Conn] = {}
        self.run_tasks: set[asyncio.Task] = set()
        self.next_cid = 0
        self.listeners: list[dict] = []
        self.stopping = False
        self.recent = [0.0, 0.0]        # B/s over the last stats interval

    def set_sockbuf(self, s: socket.socket) -> None:
        if self.args.sockbuf:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.args.sockbuf)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.args.sockbuf)

    def burst(self, rate: float) -> float:
        return max(self.quantum, rate * BURST_S)

    def log(self, msg: str) -> None:
        print(f"wanem[{os.getpid()}] {msg}", file=sys.stderr, flush=True)

    def draw_cut_limit(self) -> int:
        a = self.args
        if not a.cut_after:
            return 0
        lim = a.cut_after
        if a.cut_jitter:
            lim = lim * (1.0 + a.cut_jitter * (2.0 * self.rng_jitter.random() - 1.0))
        return max(1, int(round(lim)))

    # -- accepting ---------------------------------------------------------
    async def accept_loop(self, lsock: socket.socket, target, info: dict) -> None:
        loop = self.loop
        st = self.stats
        while True:
            try:
                csock, peer = await loop.sock_accept(lsock)
            except OSError as e:              # EMFILE & co: back off, keep serving
                self.log(f"accept failed: {e}")
                await asyncio.sleep(0.1)
                continue
            st.incoming += 1
            info["incoming"] += 1
            if st.refused < self.args.refuse_first:
                st.refused += 1
                try:
                    csock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RST)
                except OSError:
                    pass
                csock.close()
                if self.verbose:
                    self.log(f"refused connection from {peer}")
                continue
            csock.setblocking(False)
            try:
                csock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
            st.accepted += 1
            st.active += 1
            if st.active > st.peak_concurrent:
                st.peak_concurrent = st.active
            self.next_cid += 1
            conn = Conn(self, self.next_cid, csock, peer, target)
            if self.verbose:
                self.log(f"conn {conn.cid}: from {peer} to {info['target']}"
                         + (f" (cut after {conn.cut_limit} B)" if conn.cut_limit else ""))
            t = asyncio.create_task(conn.run())
            self.run_tasks.add(t)
            t.add_done_callback(self.run_tasks.discard)

    async def cut_every_loop(self, period: float) -> None:
        while True:
            await asyncio.sleep(period)
            live = [c for c in self.conns.values() if c.abort_reason is None]
            if live:
                self.rng_cut.choice(live).abort("cut_every")

    # -- stats -------------------------------------------------------------
    def snapshot(self, final: bool) -> dict:
        st = self.stats
        el = _mono() - st.start
        a = self.args
        return {
            "final": final,
            "elapsed_s": round(el, 3),
            "up_bytes": st.fwd[UP],
            "down_bytes": st.fwd[DOWN],
            "up_bytes_read": st.rcv[UP],
            "down_bytes_read": st.rcv[DOWN],
            "up_avg_Bps": round(st.fwd[UP] / el, 1) if el > 0 else 0.0,
            "down_avg_Bps": round(st.fwd[DOWN] / el, 1) if el > 0 else 0.0,
            "up_recent_Bps": self.recent[0],
            "down_recent_Bps": self.recent[1],
            "incoming": st.incoming,
            "accepted": st.accepted,
            "refused": st.refused,
            "active": st.active,
            "peak_concurrent": st.peak_concurrent,
            "closed": st.closed,
            "closed_clean": st.closed_clean,
            "cut": st.cut_after + st.cut_every,
            "cut_after": st.cut_after,
            "cut_every": st.cut_every,
            "reset": st.reset,
            "connect_failed": st.connect_failed,
            "aborted_at_exit": st.aborted_at_exit,
            "peak_buffered_bytes": st.peak_buffered,
            "listeners": self.listeners,
            "config": {
                "delay_ms": a.delay_ms,
                "connect_delay_ms": round(self.connect_delay * 1000, 3),
                "conn_rate_Bps": self.conn_rate,
                "link_rate_Bps": self.link_rate,
                "window_bytes": self.window,
                "quantum_bytes": self.quantum,
                "read_size": self.read_size,
                "sockbuf": a.sockbuf,
                "cut_after": a.cut_after,
                "cut_jitter": a.cut_jitter,
                "cut_every_s": a.cut_every,
                "refuse_first": a.refuse_first,
                "seed": a.seed,
            },
        }

    def write_stats(self, final: bool) -> None:
        path = self.args.stats
        if not path:
            return
        tmp = f"{path}.tmp.{os.getpid()}"
        try:
            with open(tmp, "w") as f:
                json.dump(self.snapshot(final), f, indent=1)
                f.write("\n")
            os.replace(tmp, path)
        except OSError as e:
            self.log(f"cannot write stats to {path}: {e}")

    async def stats_loop(self, interval: float) -> None:
        prev_t, prev = _mono(), list(self.stats.fwd)
        while True:
            await asyncio.sleep(interval)
            now, cur = _mono(), list(self.stats.fwd)
            self.recent = [round((c - p) / (now - prev_t), 1) for c, p in zip(cur, prev)]
            prev_t, prev = now, cur
            self.write_stats(final=False)

    def summary(self) -> str:
        st = self.stats
        el = _mono() - st.start
        return (f"wanem: {el:.1f}s up={st.fwd[UP]}B ({fmt_bytes(st.fwd[UP])}) "
                f"down={st.fwd[DOWN]}B ({fmt_bytes(st.fwd[DOWN])}) "
                f"accepted={st.accepted} refused={st.refused} peak={st.peak_concurrent} "
                f"cut={st.cut_after + st.cut_every} (after={st.cut_after} every={st.cut_every}) "
                f"reset={st.reset} connect_failed={st.connect_failed}")

    # -- main --------------------------------------------------------------
    async def main(self, maps) -> int:
        self.loop = loop = asyncio.get_running_loop()
        a = self.args
        lsocks = []
        bg: list[asyncio.Task] = []
        try:
            for (lhost, lport), (thost, tport) in maps:
                tinfo = socket.getaddrinfo(thost, tport, type=socket.SOCK_STREAM)[0]
                target = (tinfo[0], tinfo[4])
                linfo = socket.getaddrinfo(lhost, lport, type=socket.SOCK_STREAM,
                                           flags=socket.AI_PASSIVE)[0]
                ls = socket.socket(linfo[0], socket.SOCK_STREAM)
                ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                self.set_sockbuf(ls)          # inherited by accepted sockets
                ls.bind(linfo[4])
                ls.listen(1024)
                ls.setblocking(False)
                lsocks.append(ls)
                port = ls.getsockname()[1]
                info = {"listen": f"{lhost}:{port}", "port": port,
                        "target": f"{thost}:{tport}", "incoming": 0}
                self.listeners.append(info)
                bg.append(asyncio.create_task(self.accept_loop(ls, target, info)))
        except OSError as e:
            self.log(f"setup failed: {e}")
            for t in bg:
                t.cancel()
            for ls in lsocks:
                ls.close()
            return 2

        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        if a.duration:
            loop.call_later(a.duration, stop.set)
        if a.stats:
            self.write_stats(final=False)
            bg.append(asyncio.create_task(self.stats_loop(a.stats_interval)))
        if a.cut_every:
            bg.append(asyncio.create_task(self.cut_every_loop(a.cut_every)))
        if self.verbose:
            def rate(r):
                return f"{fmt_bytes(r)}/s" if r else "unlimited"
            self.log(f"delay={self.delay * 1000:g}ms connect_delay={self.connect_delay * 1000:g}ms "
                     f"conn_rate={rate(self.conn_rate)} link_rate={rate(self.link_rate)} "
                     f"window={fmt_bytes(self.window)} quantum={fmt_bytes(self.quantum)}")
        try:
            print("READY " + " ".join(str(i["port"]) for i in self.listeners), flush=True)
        except (BrokenPipeError, ValueError):
            pass

        await stop.wait()

        # shutdown: stop accepting, RST whatever is still open, final stats
        self.stopping = True
        for t in bg:
            t.cancel()
        await asyncio.gather(*bg, return_exceptions=True)
        for ls in lsocks:
            ls.close()
        for c in list(self.conns.values()):
            c.abort("shutdown")
        if self.run_tasks:
            await asyncio.wait(list(self.run_tasks), timeout=5)
        self.write_stats(final=True)
        print(self.summary(), file=sys.stderr, flush=True)
        return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="wanem.py",
        description="Userspace WAN emulator TCP proxy: delay, per-connection and "
                    "link-wide rate caps, bounded buffering, fault injection, JSON stats.",
        epilog="Sizes/rates accept suffixes K, M, G (= KiB, MiB, GiB; rates per second). "
               "Example: wanem.py --listen 127.0.0.1:0 --target 127.0.0.1:873 "
               "--delay-ms 50 --conn-rate 0.5M --link-rate 10M --stats /tmp/wan.json")
    g = p.add_argument_group("endpoints")
    g.add_argument("--listen", type=parse_hostport, metavar="HOST:PORT",
                   help="listen address (port 0 = pick a free port; printed as READY <port>)")
    g.add_argument("--target", type=parse_hostport, metavar="HOST:PORT",
                   help="where to forward connections accepted on --listen")
    g.add_argument("--map", type=parse_map, action="append", default=[],
                   metavar="LPORT:THOST:TPORT",
                   help="extra listener on 127.0.0.1:LPORT forwarding to THOST:TPORT "
                        "(repeatable; LPORT 0 = free port)")
    g = p.add_argument_group("link emulation")
    g.add_argument("--delay-ms", type=float, default=0.0, metavar="D",
                   help="one-way delay applied to data in both directions (RTT += 2*D)")
    g.add_argument("--connect-delay-ms", type=float, default=None, metavar="C",
                   help="delay before the proxy connects to the target "
                        "(default 3*D: emulates the TCP handshake, i.e. the target sees "
                        "the connection 1.5 RTT after the client connected)")
    g.add_argument("--conn-rate", type=parse_scaled, default=0.0, metavar="RATE",
                   help="per-connection cap, each direction, bytes/s (0 = unlimited)")
    g.add_argument("--link-rate", type=parse_scaled, default=0.0, metavar="RATE",
                   help="cap shared by all connections, each direction, bytes/s (0 = unlimited)")
    g.add_argument("--window", type=parse_size, default=0, metavar="BYTES",
                   help="max bytes in flight per connection per direction "
                        "(default max(256K, 2*rate*D) where rate = conn-rate, else link-rate; "
                        "2M if uncapped with delay; 256K otherwise). Per-connection "
                        "throughput is bounded by window/D")
    g.add_argument("--quantum", type=parse_size, default=0, metavar="BYTES",
                   help="pacing step for the rate caps (default 16K, smaller for slow caps)")
    g.add_argument("--read-size", type=parse_size, default=64 * KiB, metavar="BYTES",
                   help="socket read size (default 64K)")
    g.add_argument("--sockbuf", type=parse_size, default=0, metavar="BYTES",
                   help="set SO_SNDBUF/SO_RCVBUF on the proxy's own sockets (default: kernel "
                        "autotuning, which can park several MiB in kernel buffers outside "
                        "the emulated link)")
    g = p.add_argument_group("fault injection")
    g.add_argument("--cut-after", type=parse_size, default=0, metavar="BYTES",
                   help="abort (RST both sides) a connection once it has forwarded this "
                        "many bytes, both directions together")
    g.add_argument("--cut-jitter", type=float, default=0.0, metavar="F",
                   help="randomise --cut-after per connection by +-F (fraction, e.g. 0.5)")
    g.add_argument("--cut-every", type=float, default=0.0, metavar="SECONDS",
                   help="every SECONDS abort one random live connection")
    g.add_argument("--refuse-first", type=int, default=0, metavar="N",
                   help="reset the first N incoming connections immediately")
    g.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    g = p.add_argument_group("run control / stats")
    g.add_argument("--duration", type=float, default=0.0, metavar="SECONDS",
                   help="exit after SECONDS (0 = until SIGINT/SIGTERM)")
    g.add_argument("--stats", metavar="FILE",
                   help="write JSON stats here every --stats-interval and at exit")
    g.add_argument("--stats-interval", type=float, default=1.0, metavar="SECONDS")
    g.add_argument("-v", "--verbose", action="store_true", help="per-connection log on stderr")
    return p


def main(argv=None) -> int:
    p = build_parser()
    a = p.parse_args(argv)
    maps = list(a.map)
    if a.listen or a.target:
        if not (a.listen and a.target):
            p.error("--listen and --target go together")
        maps.insert(0, (a.listen, a.target))
    if not maps:
        p.error("need --listen/--target or at least one --map")
    if a.delay_ms < 0 or (a.connect_delay_ms is not None and a.connect_delay_ms < 0):
        p.error("delays must be >= 0")
    if a.cut_jitter < 0 or a.cut_jitter >= 1:
        p.error("--cut-jitter must be in [0, 1)")
    if a.read_size < 1 or a.stats_interval <= 0 or a.cut_every < 0 or a.refuse_first < 0:
        p.error("bad --read-size / --stats-interval / --cut-every / --refuse-first")
    px = Proxy(a)
    try:
        return asyncio.run(px.main(maps))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
