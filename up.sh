#!/usr/bin/env bash
# Builds and starts tyk-grpc-plugin as the demo's tyk-python-grpc-server service, on the demo's
# "tyk" network (created if missing), and waits until its health check passes.
set -euo pipefail
cd "$(dirname "$0")"

docker network inspect tyk >/dev/null 2>&1 || docker network create tyk >/dev/null
docker compose up --detach --build --wait
docker compose ps
echo "tyk-grpc-plugin is serving on localhost:50051."
echo "Gateway setting: TYK_GW_COPROCESSOPTIONS_COPROCESSGRPCSERVER=tcp://tyk-python-grpc-server:50051"
