# spansink: a build stage that compiles the release binary, and a slim
# runtime stage that holds only the binary and the shared libraries it links.
#
#   docker build -t spansink .
#   docker build --build-arg SPANSINK_GIT_SHA=$(git rev-parse --short=12 HEAD) -t spansink .

# The toolchain the project is built and tested with.
FROM rust:1.95-slim-bookworm AS build
# librdkafka is built from source by rdkafka-sys: a C toolchain, pkg-config,
# zlib, OpenSSL (TLS, SASL SCRAM) and libcurl (SASL OAUTHBEARER with OIDC).
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      build-essential pkg-config zlib1g-dev libssl-dev libcurl4-openssl-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src

# Dependencies first, in a layer of their own: it is rebuilt only when
# Cargo.toml or Cargo.lock change, not on every change to the sources. The
# targets the manifest names are stubs here.
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src benches \
 && echo 'fn main() {}' > src/main.rs \
 && touch src/lib.rs \
 && echo 'fn main() {}' > benches/decode.rs \
 && echo 'fn main() {}' > benches/copy.rs \
 && echo 'fn main() {}' > build.rs \
 && cargo build --release --locked --bin spansink \
 && rm -rf src benches build.rs

COPY build.rs ./
COPY proto proto
COPY migrations migrations
COPY sql sql
COPY benches benches
COPY src src
# The build-info metric's commit: the context has no .git to read it from.
ARG SPANSINK_GIT_SHA=unknown
# The stubs' outputs must not pass for the real crate's: touch makes the
# sources newer than them.
RUN touch build.rs src/main.rs src/lib.rs \
 && cargo build --release --locked --bin spansink \
 && cp target/release/spansink /usr/local/bin/spansink \
 && /usr/local/bin/spansink --version

FROM debian:bookworm-slim AS runtime
# What the binary links besides glibc: OpenSSL, libcurl and zlib; CA
# certificates for TLS to the brokers and the OIDC token endpoint.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libssl3 libcurl4 zlib1g \
 && rm -rf /var/lib/apt/lists/*
# A fixed uid, so that volumes and a Kubernetes fsGroup can name it. The
# spool exists, owned by it, before it is declared a volume: a new volume
# starts as a copy of it, writable by the service.
RUN groupadd --system --gid 10001 spansink \
 && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/spansink --no-create-home --shell /usr/sbin/nologin spansink \
 && mkdir -p /var/lib/spansink/spool \
 && chown -R 10001:10001 /var/lib/spansink
COPY --from=build /usr/local/bin/spansink /usr/local/bin/spansink
USER 10001:10001
WORKDIR /var/lib/spansink
ENV SPANSINK_SPOOL_DIR=/var/lib/spansink/spool \
    SPANSINK_METRICS_ADDR=0.0.0.0:9464
VOLUME ["/var/lib/spansink/spool"]
# /metrics, /healthz, /readyz. The admin endpoint stays on loopback.
EXPOSE 9464
# SIGTERM drains: in-flight batches commit within --drain-timeout, then the
# spool's last pass runs within --spool-drain-timeout. Give the container a
# grace period longer than both together (docker stop --time, compose's
# stop_grace_period, Kubernetes' terminationGracePeriodSeconds).
STOPSIGNAL SIGTERM
# Liveness only: /healthz never depends on PostgreSQL or the broker.
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
  CMD ["/usr/local/bin/spansink", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/spansink"]
CMD ["run"]
