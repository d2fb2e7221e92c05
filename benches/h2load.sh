#!/usr/bin/env bash
# Side by side with h2load (Debian's nghttp2-client), an HTTP/2 load tool independent of gRPC's own
# clients, on the gateway's Response payload: tyk-grpc-plugin logging at INFO to a file and at WARN,
# the no-op echo server (benches/dispatch.rs), and optionally a peer such as the Python original.
# Rounds alternate between the servers, so a noisy machine slows them alike; one line per result.
#
# Usage: benches/h2load.sh [PEER_HOST:PORT]     Settings: ROUNDS (3), CALLS (200000), PEER_CALLS (20000)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${ROUNDS:-3} calls=${CALLS:-200000} peer_calls=${PEER_CALLS:-20000} peer=${1:-}

bench=$(cargo bench --no-run 2>&1 | sed -n 's/.*Executable benches\/dispatch.rs (\(.*\))/\1/p')
work=$(mktemp -d)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null; rm -rf "$work"' EXIT
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

"$bench" --write-frame "$work/response.bin"
info_port=$(free_port)
RUST_LOG=info TYK_PLUGIN_LISTEN=127.0.0.1:$info_port target/release/tyk-grpc-plugin 2>"$work/info.log" &
pids+=($!) && info_pid=$!
warn_port=$(free_port)
RUST_LOG=warn TYK_PLUGIN_LISTEN=127.0.0.1:$warn_port target/release/tyk-grpc-plugin 2>"$work/warn.log" &
pids+=($!)
mkfifo "$work/hold"
"$bench" --echo-server <"$work/hold" >"$work/echo.address" &
pids+=($!)
exec 3>"$work/hold"
sleep 1
echo_address=$(sed 's/listening on //' "$work/echo.address")

targets=("plugin-info 127.0.0.1:$info_port $calls" "plugin-warn 127.0.0.1:$warn_port $calls" "no-op-echo $echo_address $calls")
[ -n "$peer" ] && targets+=("peer $peer $peer_calls")

# h2load's summary: "finished in 2.1s, 14284.77 req/s, ..." and "time for request: min max mean sd"
load() {
  h2load -n "$3" -c "$1" -m "$2" -t 1 -H 'content-type: application/grpc' -H 'te: trailers' \
    -d "$work/response.bin" "http://$4/coprocess.Dispatcher/Dispatch" |
    awk '/^finished in/ {rate = $4} /^requests:/ {failed = $10} /time for request:/ {mean = $6}
         END {printf "%10.0f calls/s  mean %8s  failed %s\n", rate, mean, failed}'
}
printf '%-5s %-12s %-12s %s\n' round server in-flight result
for round in $(seq "$rounds"); do
  for target in "${targets[@]}"; do
    read -r name address n <<<"$target"
    printf '%-5s %-12s %-12s %s\n' "$round" "$name" 256 "$(load 4 64 "$n" "$address")"
    printf '%-5s %-12s %-12s %s\n' "$round" "$name" 1 "$(load 1 1 $((n / 8)) "$address")"
  done
done
echo "plugin-info peak RSS: $(awk '/VmHWM/ {print $2, $3}' "/proc/$info_pid/status"); log lines: $(wc -l <"$work/info.log")"
