#!/usr/bin/env python3
"""Soak test: for a bounded time, mutate a random part of a tree (edit,
append, truncate, delete, create, rename), sync it with --delete through the
WAN emulator cutting connections at random, and check the copy with
`pareco verify`. Prints rounds, cuts and files checked; exits 1 (keeping the
work directory) at the first difference.

    python3 bench/soak.py --minutes 3

Not part of the test run (scripts/test): it is a long run by design.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PARECO = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")).resolve() / "release" / "pareco"
WANEM = ROOT / "tools" / "wanem.py"
TOKEN = "soak-token-0123456789abcdef"
ENV = dict(os.environ, PARECO_TOKEN=TOKEN, PARECO_LOG="error")


def spawn_listening(cmd: list[str], marker: str, stream: str = "stdout") -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=ENV, text=True)
    line = proc.stdout.readline()
    if marker not in line:
        raise RuntimeError(f"{cmd[0]} said {line!r}")
    return proc, int(line.split()[-1].rsplit(":", 1)[-1])


class Tree:
    """The source tree and the mutations applied to it."""

    def __init__(self, root: Path, rng: random.Random):
        self.root, self.rng, self.counter = root, rng, 0

    def files(self) -> list[Path]:
        return [p for p in self.root.rglob("*") if p.is_file()]

    def dirs(self) -> list[Path]:
        return [self.root] + [p for p in self.root.rglob("*") if p.is_dir()]

    def new_name(self) -> str:
        self.counter += 1
        return f"n{self.counter:05d}"

    def content(self, size: int) -> bytes:
        """Random bytes or text (half and half), so that frames go both raw and compressed."""
        if self.rng.random() < 0.5:
            return os.urandom(size)
        line = f"{self.rng.randrange(10**9)}\tpareco soak\t{self.counter}\n".encode()
        return (line * (size // len(line) + 1))[:size]

    def create(self) -> str:
        d = self.rng.choice(self.dirs())
        if self.rng.random() < 0.15:
            d = d / self.new_name()
            d.mkdir()
        size = self.rng.choice([0, 1, 100, 4096, 70_000, 1 << 20, 5 << 20])
        (d / self.new_name()).write_bytes(self.content(size))
        return "create"

    def mutate(self) -> str:
        files = self.files()
        if not files:
            return self.create()
        op = self.rng.choice(["edit", "edit", "append", "truncate", "delete", "create", "create", "rename"])
        f = self.rng.choice(files)
        if op == "edit" and f.stat().st_size > 0:
            with open(f, "r+b") as h:
                h.seek(self.rng.randrange(f.stat().st_size))
                h.write(self.content(self.rng.choice([1, 512, 4096, 100_000])))
        elif op == "append":
            with open(f, "ab") as h:
                h.write(self.content(self.rng.choice([1, 4096, 300_000])))
        elif op == "truncate":
            os.truncate(f, self.rng.randrange(f.stat().st_size + 1))
        elif op == "delete":
            f.unlink()
        elif op == "rename":
            target = self.rng.choice(self.dirs()) / self.new_name()
            moved = f.parent
            if self.rng.random() < 0.2 and moved != self.root and moved not in target.parents:
                moved.rename(target)  # a whole directory
            else:
                f.rename(target)
        else:
            return self.create()
        return op


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=3.0)
    p.add_argument("--seed", type=int, default=int(time.time()))
    p.add_argument("--cut-every", type=float, default=0.7, help="seconds between cuts (wanem)")
    args = p.parse_args()
    subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT, check=True)
    rng = random.Random(args.seed)
    (ROOT / "bench" / "out").mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="soak-", dir=ROOT / "bench" / "out"))
    src, srv = work / "src", work / "srv"
    src.mkdir()
    srv.mkdir()
    tree = Tree(src, rng)
    for _ in range(60):
        tree.create()

    server, port = spawn_listening([str(PARECO), "serve", "--root", str(srv), "--listen", "127.0.0.1:0"], "listening")
    stats = work / "wan.json"
    wan, wport = spawn_listening([sys.executable, str(WANEM), "--listen", "127.0.0.1:0", "--target",
                                  f"127.0.0.1:{port}", "--delay-ms", "10", "--conn-rate", "4M",
                                  "--cut-every", str(args.cut_every), "--seed", str(args.seed),
                                  "--stats", str(stats), "--stats-interval", "0.5"], "READY")
    url_wan, url_direct = f"pareco://127.0.0.1:{wport}/copy", f"pareco://127.0.0.1:{port}/copy"
    deadline = time.monotonic() + args.minutes * 60
    rounds, ops, checked, sent = 0, {}, 0, 0
    failed = False
    try:
        while time.monotonic() < deadline:
            for _ in range(rng.randint(1, 8)):
                op = tree.mutate()
                ops[op] = ops.get(op, 0) + 1
            run = subprocess.run([str(PARECO), "sync", "-q", "--delete", "-j", "8", "--stats-json",
                                  str(work / "sync.json"), str(src), url_wan], env=ENV, capture_output=True, text=True)
            if run.returncode not in (0, 24):
                print(f"round {rounds + 1}: sync failed ({run.returncode}):\n{run.stderr}", file=sys.stderr)
                failed = True
                break
            sent += json.loads((work / "sync.json").read_text())["bytes_transferred"]
            if run.returncode == 24:
                continue  # a source file moved under the sync (the mtime rule): the next round settles it
            check = subprocess.run([str(PARECO), "verify", "--stats-json", str(work / "verify.json"), str(src),
                                    url_direct], env=ENV, capture_output=True, text=True)
            if check.returncode != 0:
                print(f"round {rounds + 1}: the copy differs:\n{check.stdout}{check.stderr}", file=sys.stderr)
                failed = True
                break
            checked += json.loads((work / "verify.json").read_text())["entries"]
            rounds += 1
    finally:
        wan.terminate()
        wan.wait()
        server.terminate()
        server.wait()
    cuts = json.loads(stats.read_text()).get("cut", 0) if stats.exists() else 0
    summary = (f"soak (seed {args.seed}, {args.minutes} min): {rounds} rounds verified, {cuts} connections cut, "
               f"{checked} entries checked, {sent / (1 << 20):.1f} MiB sent, mutations {ops}")
    if failed:
        print(f"{summary}\nFAILED: work directory kept in {work}")
        return 1
    print(f"{summary}\nnothing lost: every round's copy was identical")
    shutil.rmtree(work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
