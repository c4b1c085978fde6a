# sluice container image.
#
#   docker build -t sluice .
#   docker run --rm -p 2003:2003 \
#       -v "$PWD/config/graphite.toml:/etc/sluice/sluice.toml:ro" \
#       sluice --config /etc/sluice/sluice.toml --dns 10.0.0.2:8600
#
# Configuration: the image expects its TOML file at /etc/sluice/sluice.toml
# (mount a file or a directory there); the default command reads it. Any
# arguments given to `docker run` replace that default command, e.g.
# `--check --config /etc/sluice/sluice.toml` or shorthand listeners such as
# `--dns 10.0.0.2:8600 2003:graphite`. Note that `--dns` takes an IP[:port],
# not a host name.
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
# (Cargo.toml names integration/main.rs as a test and bench/udpload.rs as an
# example; stubs keep the manifest valid, and neither is built here.)
RUN mkdir src integration bench \
    && echo 'fn main() {}' > src/main.rs \
    && echo 'fn main() {}' > bench/udpload.rs \
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

ENTRYPOINT ["/usr/local/bin/sluice"]
CMD ["--config", "/etc/sluice/sluice.toml"]
