# dativo in a container: multi-stage, slim, non-root.
#
#   docker build -t dativo:0.1 .
#   docker run --rm -v $PWD/jobs:/jobs:ro dativo:0.1 run /jobs/orders.yaml --shard 0/4
#
# Not built by the test suite (no container engine on the CI machines); the Kubernetes
# manifests from `dativo deploy kubernetes` expect this image (see docs/scaling.md).

# --- build -------------------------------------------------------------------------------
FROM rust:1.95-slim-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends \
        pkg-config python3-dev ca-certificates && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# Dependencies first, so that source edits reuse the cached layer.
COPY Cargo.toml Cargo.lock ./
COPY crates crates
COPY examples/plugins/rust examples/plugins/rust
COPY tests/plugins/broken tests/plugins/broken
# The `dist` profile: the release build without debug information (see Cargo.toml).
RUN cargo build --profile dist --locked -p dativo-cli -p dativo-python

# --- run ---------------------------------------------------------------------------------
FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates tzdata \
        libpython3.11 && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /work --create-home dativo
COPY --from=build /src/target/dist/dativo /usr/local/bin/dativo
# The Python plugin bridge (only loaded when a job names a Python class).
COPY --from=build /src/target/dist/libdativo_python.so /usr/local/lib/dativo/libdativo_python.so
ENV DATIVO_PYTHON_BRIDGE=/usr/local/lib/dativo/libdativo_python.so \
    DATIVO_STATE_DIR=/work/.dativo
USER 10001:10001
WORKDIR /work
ENTRYPOINT ["/usr/local/bin/dativo"]
CMD ["--help"]
