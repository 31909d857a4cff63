# syntax=docker/dockerfile:1
#
# anya: one static-ish binary on a slim runtime, no model inside (mount the model repository at
# /models). See docs/deployment.md.
#
# CPU image (default):
#   docker build -t anya:0.1.0 .
# CUDA image (build on a CUDA devel image, run on the matching CUDA runtime image):
#   docker build -t anya:0.1.0-cuda \
#     --build-arg BUILD_IMAGE=nvidia/cuda:12.6.3-devel-ubuntu22.04 \
#     --build-arg RUNTIME_IMAGE=nvidia/cuda:12.6.3-runtime-ubuntu22.04 \
#     --build-arg FEATURES=cuda --build-arg CUDA_COMPUTE_CAP=90 .
#
# The compile itself is scripts/build-release.sh, the same command a release build runs outside
# Docker, so the image cannot drift from it.

ARG BUILD_IMAGE=rust:1-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

# ---------------------------------------------------------------------------------------------
FROM ${BUILD_IMAGE} AS build

# Cargo features for the build: "" (CPU) or "cuda".
ARG FEATURES=""
# CUDA compute capability the kernels are built for (e.g. 80, 89, 90); required with cuda when
# the build machine has no GPU, which is the usual case for `docker build`.
ARG CUDA_COMPUTE_CAP=""
# Rust toolchain installed when BUILD_IMAGE has none (a CUDA devel image).
ARG RUST_TOOLCHAIN=stable

# The same locations the official rust images use, so both kinds of BUILD_IMAGE behave alike.
ENV RUSTUP_HOME=/usr/local/rustup \
    CARGO_HOME=/usr/local/cargo \
    PATH=/usr/local/cargo/bin:$PATH \
    CARGO_TERM_COLOR=never

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# A CUDA devel image has nvcc but no Rust: install a minimal toolchain there. The official rust
# image already has one and skips this step.
# hadolint ignore=DL3008
RUN if ! command -v cargo >/dev/null; then \
      apt-get update \
      && apt-get install -y --no-install-recommends ca-certificates curl gcc libc6-dev pkg-config \
      && rm -rf /var/lib/apt/lists/* \
      && curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs \
         | sh -s -- -y --no-modify-path --profile minimal --default-toolchain "$RUST_TOOLCHAIN"; \
    fi \
    && cargo --version

WORKDIR /src

# 1. Dependencies only: a dummy crate (stub files for every target, scripts/stub-crate.sh) with
#    the real manifest and lock file. This layer is rebuilt only when Cargo.toml, Cargo.lock,
#    the two scripts or the build args change.
COPY Cargo.toml Cargo.lock ./
COPY scripts/build-release.sh scripts/stub-crate.sh scripts/
RUN bash scripts/stub-crate.sh \
    && bash scripts/build-release.sh \
    && rm -rf src target/release/anya target/release/anya.d \
              target/release/.fingerprint/anya-* target/release/deps/anya-* \
              target/release/deps/libanya-*

# 2. The crate itself (the example/bench/test stubs stay: `--bin anya` never builds them). The
#    dummy's fingerprints are gone, so cargo rebuilds anya whatever the copied files' mtimes.
COPY src src
# The release profile's line tables are ~100 MB of a ~120 MB binary: the image keeps the symbols
# (function names in backtraces) and drops them, unless KEEP_DEBUG_INFO=true.
ARG KEEP_DEBUG_INFO=false
RUN bash scripts/build-release.sh \
    && install -D -m 0755 target/release/anya /out/anya \
    && if [ "$KEEP_DEBUG_INFO" != true ]; then objcopy --strip-debug /out/anya; fi

# ---------------------------------------------------------------------------------------------
FROM ${RUNTIME_IMAGE} AS runtime

# Fixed, unprivileged ids: Kubernetes' runAsNonRoot can verify a numeric USER, and volume
# permissions (fsGroup) can name it.
ARG ANYA_UID=10001
ARG ANYA_GID=10001

LABEL org.opencontainers.image.title="anya" \
      org.opencontainers.image.description="Model-serving daemon: real models on CPU or CUDA over HTTP with dynamic batching" \
      org.opencontainers.image.licenses="Apache-2.0"

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# ca-certificates: TLS to external services (e.g. rediss://). curl: the HEALTHCHECK.
# Versions are not pinned: the distribution's security updates should land on every rebuild.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid "$ANYA_GID" anya \
    && useradd --system --uid "$ANYA_UID" --gid anya --no-create-home \
               --home-dir /nonexistent --shell /usr/sbin/nologin anya \
    && mkdir -p /models /etc/anya /var/lib/anya/jobs \
    && chown anya:anya /var/lib/anya/jobs

COPY --from=build /out/anya /usr/local/bin/anya
COPY deploy/anya.docker.yaml /etc/anya/anya.yaml
# The model fetcher travels with the binary that reads its manifests: the Helm chart's init
# container copies it from here (see helm/anya/templates/deployment.yaml).
COPY scripts/fetch-models.sh /usr/local/share/anya/fetch-models.sh

# The model repository: models/<id>/<version>/anya.yaml + artifacts, mounted read-only.
VOLUME ["/models"]
# Batch jobs (jobs.dir in /etc/anya/anya.yaml): unfinished jobs resume after a restart when this
# outlives the container (a named volume, as docker-compose.yml mounts).
VOLUME ["/var/lib/anya/jobs"]

# 8000: HTTP API (also /metrics, KServe v2 REST under /v2); 8001: KServe v2 gRPC
# (server.grpc_port); 9090: /metrics only (monitoring.metrics_port).
EXPOSE 8000 8001 9090

USER ${ANYA_UID}:${ANYA_GID}
WORKDIR /

# Liveness only: /health answers 200 while the process serves, even while models still load
# (readiness is /ready; orchestrators should gate traffic on that). Port 8000 is this image's
# contract; a deployment that moves server.port overrides the healthcheck too.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD ["curl", "-fsS", "--max-time", "2", "-o", "/dev/null", "http://127.0.0.1:8000/health"]

# SIGTERM starts the graceful drain (/ready turns 503, in-flight requests finish within
# server.drain_timeout_s, then exit 0); give `docker stop -t` / stop_grace_period more than that.
STOPSIGNAL SIGTERM

# Any config key can also come from the environment, e.g. ANYA__SERVER__LOG_LEVEL=debug.
ENTRYPOINT ["/usr/local/bin/anya"]
CMD ["serve", "--config", "/etc/anya/anya.yaml"]
