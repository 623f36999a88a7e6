#!/usr/bin/env bash
# Benchmarks pareco beside rsync, fpsync, rclone, tar|nc, mbuffer|nc, cp and the AWS CLI on the same data and the same
# emulated links, and pareco forward beside rinetd, socat and haproxy, in one run.
# Prints a Markdown table; writes bench/out/results.json.
#   bench/run.sh --quick                 # tiny sizes, under a minute: checks the script
#   bench/run.sh                         # pareco's scenarios, 3 interleaved runs each
#   bench/run.sh --baselines             # also rsync and tar|nc (several minutes on the slow links)
#   bench/run.sh --only seed --only delta
set -euo pipefail
cd "$(dirname "$0")/.."
missing=()
for tool in rsync nc mbuffer zstd python3 /usr/bin/time rinetd socat haproxy fpsync rclone; do
    command -v "$tool" >/dev/null || missing+=("$tool")
done
if ((${#missing[@]})); then
    sudo=""; [[ $(id -u) -ne 0 ]] && sudo="sudo"
    $sudo apt-get update -qq
    $sudo apt-get install -y -qq rsync netcat-openbsd mbuffer zstd python3 time rinetd socat haproxy fpart rclone
fi
# The relay's scenario: moto's S3 server (as scripts/test installs it), and
# the AWS CLI for its baseline (rclone rcat's upload fails against moto).
command -v moto_server >/dev/null || python3 -m pip install --quiet "moto[server]==5.2.1"
if [[ " $* " == *" --baselines "* ]] && ! command -v aws >/dev/null; then
    python3 -m pip install --quiet "awscli==1.45.11"
fi
# The binary, and the forwarder scenario's load generator (a client and
# server in Rust). --quick checks the script, not the speed: the debug build
# will do, selected as the tests' build is (same features: after
# scripts/test's tests nothing is built again).
if [[ " $* " == *" --quick "* ]]; then
    export PARECO_PROFILE=debug
    cargo build --quiet --workspace --bins --examples
else
    export PARECO_PROFILE=release
    cargo build --release --quiet
    cargo build --release --quiet -p pareco-forward --example loadgen
fi
exec python3 bench/bench.py "$@"
