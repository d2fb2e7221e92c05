#!/usr/bin/env bash
# Side by side with h2load (Debian's nghttp2-client), an HTTP/2 load tool independent of gRPC's own
# clients, on the gateway's Response payload: tyk-grpc-plugin logging at INFO to a file, at WARN, and
# at WARN with its metrics on,
# the no-op echo server (benches/dispatch.rs), and optionally a baseline build of tyk-grpc-plugin
# (BASELINE=path/to/binary, e.g. the previous release, at INFO and WARN) and a peer such as the
# Python original. Rounds alternate between the servers, so a noisy machine slows them alike; one
# line per result. Last, a hook that sleeps 50 ms under 256 calls in flight, with health checks
# timed beside it.
#
# Usage: benches/h2load.sh [PEER_HOST:PORT]
# Settings: ROUNDS (3), CALLS (200000), PEER_CALLS (20000), BASELINE (unset)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${ROUNDS:-3} calls=${CALLS:-200000} peer_calls=${PEER_CALLS:-20000} peer=${1:-} baseline=${BASELINE:-}

bench=$(cargo bench --no-run 2>&1 | sed -n 's/.*Executable benches\/dispatch.rs (\(.*\))/\1/p')
work=$(mktemp -d)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null; rm -rf "$work"' EXIT
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# start NAME LEVEL BINARY [ARGS...]: a plugin logging to $work/NAME.log; sets $port and $pid.
start() {
  local name=$1 level=$2
  shift 2
  port=$(free_port)
  RUST_LOG=$level TYK_PLUGIN_LISTEN=127.0.0.1:$port "$@" 2>"$work/$name.log" &
  pid=$!
  pids+=("$pid")
}

"$bench" --write-frame "$work/response.bin"
printf '\0\0\0\0\0' >"$work/empty.bin" # an empty gRPC message: a HealthCheckRequest for ""
targets=()
start plugin-info info target/release/tyk-grpc-plugin && targets+=("plugin-info 127.0.0.1:$port $calls") && info_pid=$pid
start plugin-warn warn target/release/tyk-grpc-plugin && targets+=("plugin-warn 127.0.0.1:$port $calls")
TYK_PLUGIN_METRICS_LISTEN=127.0.0.1:$(free_port) start plugin-metrics warn target/release/tyk-grpc-plugin &&
  targets+=("plugin-metrics 127.0.0.1:$port $calls")
if [ -n "$baseline" ]; then
  start baseline-info info "$baseline" && targets+=("baseline-info 127.0.0.1:$port $calls")
  start baseline-warn warn "$baseline" && targets+=("baseline-warn 127.0.0.1:$port $calls")
fi
mkfifo "$work/hold"
"$bench" --echo-server <"$work/hold" >"$work/echo.address" &
pids+=($!)
exec 3>"$work/hold"
sleep 1
targets+=("no-op-echo $(sed 's/listening on //' "$work/echo.address") $calls")
[ -n "$peer" ] && targets+=("peer $peer $peer_calls")

# h2load's summary: "finished in 2.1s, 14284.77 req/s, ..." and "time for request: min max mean sd"
load() {
  h2load -n "$3" -c "$1" -m "$2" -t 1 -H 'content-type: application/grpc' -H 'te: trailers' \
    -d "${5:-$work/response.bin}" "http://$4" |
    awk '/^finished in/ {rate = $4} /^requests:/ {failed = $10} /time for request:/ {mean = $6}
         END {printf "%10.0f calls/s  mean %8s  failed %s\n", rate, mean, failed}'
}
dispatch=coprocess.Dispatcher/Dispatch
printf '%-5s %-14s %-12s %s\n' round server in-flight result
for round in $(seq "$rounds"); do
  for target in "${targets[@]}"; do
    read -r name address n <<<"$target"
    printf '%-5s %-14s %-12s %s\n' "$round" "$name" 256 "$(load 4 64 "$n" "$address/$dispatch")"
    printf '%-5s %-14s %-12s %s\n' "$round" "$name" 1 "$(load 1 1 $((n / 8)) "$address/$dispatch")"
    # Logged lines go to the disk now, not while the next server is measured.
    sync
  done
done
echo "plugin-info peak RSS: $(awk '/VmHWM/ {print $2, $3}' "/proc/$info_pid/status"); log lines: $(wc -l <"$work/plugin-info.log")"

TYK_BENCH_SLEEPING_HOOK_MS=50 start sleeping warn "$bench"
sleep 1
load 4 64 5000 "127.0.0.1:$port/$dispatch" >"$work/sleeping.txt" &
sleeping_load=$!
sleep 2
health=$(load 1 1 200 "127.0.0.1:$port/grpc.health.v1.Health/Check" "$work/empty.bin")
wait "$sleeping_load"
echo "hook sleeping 50 ms, 256 in flight: $(cat "$work/sleeping.txt")"
echo "health checks meanwhile, one at a time: $health"
