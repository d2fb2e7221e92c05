#!/usr/bin/env bash
# Stops and removes the plugin server's container. It drains first: SIGTERM, then calls in flight
# are answered for up to TYK_PLUGIN_SHUTDOWN_GRACE seconds.
set -euo pipefail
cd "$(dirname "$0")"

docker compose down
