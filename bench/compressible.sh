#!/usr/bin/env bash
# Binaries against each other on compressible data (`--compress auto`):
# over loopback, where sending as is beats compressing, and through the WAN
# emulator at a link rate below what the cores compress, where compressing
# wins. Interleaved, RUNS times each; prints seconds and MiB on the wire.
#
#   bench/compressible.sh /tmp/old/pareco target/release/pareco
#
# DATA (default /usr/lib/x86_64-linux-gnu, about 650 MiB that zstd shrinks
# about 3x), RATE (bytes/s, default 40000000), RUNS (default 3).
set -euo pipefail
cd "$(dirname "$0")/.."
data=${DATA:-/usr/lib/x86_64-linux-gnu} rate=${RATE:-40000000} runs=${RUNS:-3}
work=$(mktemp -d /dev/shm/compressible.XXXXXX)
export PARECO_TOKEN=compressible-bench-token-0123456789
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
mkdir "$work/root"
serve_port=$(port) wan_port=$(port)
"${@: -1}" serve --root "$work/root" --listen "127.0.0.1:$serve_port" > /dev/null 2>&1 &
server=$!
python3 tools/wanem.py --listen "127.0.0.1:$wan_port" --target "127.0.0.1:$serve_port" \
    --delay-ms 20 --link-rate "$rate" > /dev/null 2>&1 &
wan=$!
trap 'kill $server $wan 2>/dev/null; rm -rf "$work"' EXIT
sleep 1
for ((i = 0; i < runs; i++)); do
    for bin in "$@"; do
        for via in "loopback $serve_port" "link $wan_port"; do
            read -r name to <<< "$via"
            "$bin" sync -q --stats-json "$work/stats.json" "$data" "pareco://127.0.0.1:$to/copy"
            python3 - "$bin" "$name" "$work/stats.json" <<'EOF'
import json, sys
s = json.load(open(sys.argv[3]))
print(f"{sys.argv[1]:40} {sys.argv[2]:8} {s['duration_s']:6.2f} s  {s['wire_bytes_sent'] / 2**20:7.1f} MiB on the wire")
EOF
            rm -rf "$work/root/copy"
        done
    done
done
