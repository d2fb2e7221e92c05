# tyk-grpc-plugin in a slim image: a drop-in for the Tyk demo's Python plugin server
# (service coprocess.Dispatcher on port 50051).  docker build -t tyk-grpc-plugin .

FROM rust:1.95-slim-bookworm AS build
# grpcio compiles gRPC's C core: cmake and a C++ compiler. Debian's versions are what this image
# tag pins; pinning each package again would break on every point release.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends cmake g++ make \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# Dependencies first, against placeholder sources: this layer, with gRPC's C core, is rebuilt only
# when the manifest, the lock file, build.rs or proto/ change, not for a source change. Cargo wants
# every target the manifest declares to exist; the benchmark is never built here, so an empty file
# stands for it.
COPY Cargo.toml Cargo.lock build.rs ./
COPY proto proto
RUN mkdir src benches && echo 'fn main() {}' > src/main.rs && touch src/lib.rs benches/dispatch.rs \
    && cargo build --release --locked \
    && rm -r src
COPY src src
# The same build command as CI's (.ci/run); touch, so cargo does not take the placeholders for new.
RUN touch src/main.rs src/lib.rs && cargo build --release --locked

FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin plugin
COPY --from=build /src/target/release/tyk-grpc-plugin /usr/local/bin/tyk-grpc-plugin
USER 10001
# The settings and their defaults, as in the README and --help. Two names mention keys and secrets,
# but the values are a file path and a flag: the keys file is mounted, never baked in.
# hadolint ignore=DL3064
ENV TYK_PLUGIN_LISTEN="[::]:50051" \
    TYK_PLUGIN_MAX_MESSAGE_BYTES=67108864 \
    TYK_PLUGIN_MEMORY_LIMIT=268435456 \
    TYK_PLUGIN_WORKERS=64 \
    TYK_PLUGIN_HMAC_KEYS_FILE="" \
    TYK_PLUGIN_HMAC_CLOCK_SKEW=300 \
    TYK_PLUGIN_HMAC_REQUIRED_HEADERS=date \
    TYK_PLUGIN_HMAC_ALGORITHMS=hmac-sha1,hmac-sha256,hmac-sha384,hmac-sha512,rsa-sha256 \
    TYK_PLUGIN_LOG_SECRETS=0 \
    TYK_PLUGIN_LOG_REDACT_HEADERS="" \
    TYK_PLUGIN_LOG_BODIES=1 \
    TYK_PLUGIN_MAX_CONNECTION_AGE=30 \
    TYK_PLUGIN_SHUTDOWN_GRACE=10 \
    TYK_PLUGIN_MAX_CONNECTION_AGE_GRACE=30 \
    TYK_PLUGIN_KEEPALIVE_TIME=60 \
    TYK_PLUGIN_KEEPALIVE_TIMEOUT=20 \
    TYK_PLUGIN_METRICS_LISTEN="" \
    TYK_PLUGIN_LOG_FORMAT=text \
    RUST_LOG=info
EXPOSE 50051
HEALTHCHECK --interval=10s --timeout=5s --start-period=5s --retries=3 CMD ["tyk-grpc-plugin", "--health-check"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["tyk-grpc-plugin"]
