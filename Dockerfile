# syntax=docker/dockerfile:1
#
# One image for every paygate binary: docker-compose.yml picks the binary with `command`.
# e2e/tests/compose.rs checks that each binary the compose file runs is built and copied here.

# ---- builder -------------------------------------------------------------------------------
FROM rust:1.95-bookworm AS builder

# rdkafka-sys compiles librdkafka from source with its ./configure + make (the workspace enables
# rdkafka's `tokio` feature and rdkafka-sys's default `libz`, not `cmake-build`, `ssl`, `sasl`,
# `zstd` or `curl`), so a C toolchain, make, pkg-config and zlib's headers are all it needs.
# The rust image has them already; they are named here so the build does not depend on that.
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential pkg-config zlib1g-dev \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /src
# The whole workspace (see .dockerignore): every member's Cargo.toml must be there for the
# workspace to load, and migrations/ is embedded into the binaries at compile time.
COPY . .

RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked \
        --bin paygate-api \
        --bin paygate-payment-processor \
        --bin paygate-callback-processor \
        --bin paygate-callback-dispatcher \
        --bin paygate-sandbox \
        --bin paygate \
    && mkdir -p /out \
    && cp target/release/paygate-api \
          target/release/paygate-payment-processor \
          target/release/paygate-callback-processor \
          target/release/paygate-callback-dispatcher \
          target/release/paygate-sandbox \
          target/release/paygate \
          /out/

# ---- runtime -------------------------------------------------------------------------------
FROM debian:bookworm-slim AS runtime

# ca-certificates for https to providers and merchants; curl for the compose healthchecks.
# (librdkafka is linked statically; zlib1g is part of the base image.)
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/*

RUN groupadd --system --gid 10001 paygate \
    && useradd --system --uid 10001 --gid paygate --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin paygate

COPY --from=builder /out/paygate-api /usr/local/bin/paygate-api
COPY --from=builder /out/paygate-payment-processor /usr/local/bin/paygate-payment-processor
COPY --from=builder /out/paygate-callback-processor /usr/local/bin/paygate-callback-processor
COPY --from=builder /out/paygate-callback-dispatcher /usr/local/bin/paygate-callback-dispatcher
COPY --from=builder /out/paygate-sandbox /usr/local/bin/paygate-sandbox
COPY --from=builder /out/paygate /usr/local/bin/paygate

USER paygate:paygate
CMD ["paygate", "--help"]
