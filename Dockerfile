# sluice container image.
#
#   docker build -t sluice .
#   docker run --rm -p 2003:2003 -p 127.0.0.1:9910:9910 \
#       -v "$PWD/config/graphite.toml:/etc/sluice/sluice.toml:ro" \
#       sluice --dns 10.0.0.2:8600
#
# Configuration: sluice reads /etc/sluice/sluice.toml when given neither
# --config nor shorthand listeners, so mount a file (or a directory) there.
# Arguments given to `docker run` are sluice's, e.g. `--check` or shorthand
# listeners such as `--dns 10.0.0.2:8600 2003:graphite`.
#
# The admin endpoint (/metrics, /status, /ready, /healthz, the API) listens
# on 0.0.0.0:9910 inside the container (SLUICE_METRICS; a --metrics argument
# overrides it, the file's `metrics` does not). HEALTHCHECK asks /ready with
# the binary itself (`sluice --probe`), as the image has no curl: the
# container is healthy once every listener has its first discovery answer.
# Publish 9910 only to localhost or a private network.
#
# sluice runs as the unprivileged user `sluice` (uid 10001), so listeners must
# bind ports >= 1024 unless the container gets CAP_NET_BIND_SERVICE.
# SIGTERM (`docker stop`) starts a drain of `shutdown_grace` (30s unless the
# config says otherwise); give `docker stop -t` / `stop_grace_period` at least
# that much, or Docker kills sluice before its connections finish.

# --- build -------------------------------------------------------------------
FROM rust:1-bookworm AS build
WORKDIR /src

# Dependencies first, against stub sources, so this layer is rebuilt only when
# Cargo.toml or Cargo.lock change, not on every source edit.
COPY Cargo.toml Cargo.lock ./
# (Cargo.toml names integration/main.rs as a test and bench/*.rs as
# examples; stubs keep the manifest valid, and none is built here.)
RUN mkdir src integration bench \
    && echo 'fn main() {}' > src/main.rs \
    && for example in udpload hostile_dns consul_standin; do echo 'fn main() {}' > bench/$example.rs; done \
    && touch src/lib.rs integration/main.rs \
    && cargo build --release --locked \
    && rm -rf src

# The real sources. `touch` makes them newer than the stub build (COPY keeps
# the files' original mtimes), so cargo rebuilds the sluice crate itself.
COPY src ./src
RUN touch src/main.rs src/lib.rs \
    && cargo build --release --locked

# --- runtime -----------------------------------------------------------------
FROM debian:bookworm-slim

RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 sluice \
    && useradd --system --uid 10001 --gid sluice --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin sluice \
    && mkdir -p /etc/sluice

COPY --from=build /src/target/release/sluice /usr/local/bin/sluice

# Numeric, so orchestrators can verify "runs as non-root" without /etc/passwd.
USER 10001:10001

ENV SLUICE_METRICS=0.0.0.0:9910
EXPOSE 9910
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["/usr/local/bin/sluice", "--probe", "http://127.0.0.1:9910/ready"]

ENTRYPOINT ["/usr/local/bin/sluice"]
