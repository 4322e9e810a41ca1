# syntax=docker/dockerfile:1
# One image with every authrelay binary: smtp-frontend, sasl-auth,
# credential-store, relay-queue and authrelay (admin CLI + all-in-one).
# The Kubernetes manifests pick the binary with `command:`.
#
#   docker build -t registry.example.com/authrelay:0.1.0 .
#
# Reproducible from the workspace lock file (--locked refuses to build if
# Cargo.lock would change). For bit-for-bit rebuilds pin the two base
# images by digest (FROM image@sha256:…).

ARG RUST_VERSION=1

FROM rust:${RUST_VERSION}-bookworm AS builder
WORKDIR /src
COPY . .
# protoc is vendored by crates/proto's build script: nothing else to install.
RUN cargo build --release --locked \
        -p smtp-frontend -p sasl-auth -p credential-store -p relay-queue -p authrelay \
    && mkdir -p /out \
    && for bin in smtp-frontend sasl-auth credential-store relay-queue authrelay; do \
           install -m 0755 "target/release/$bin" /out/; \
       done \
    && install -m 0755 /usr/bin/sleep /out/sleep

# Runtime: glibc and libgcc only, no shell, no package manager; uid 65532.
FROM gcr.io/distroless/cc-debian12:nonroot AS runtime
COPY --from=builder /out/ /usr/local/bin/
# The admin pod idles with coreutils' sleep (it needs only glibc, which
# distroless has) so operators can `kubectl exec` the authrelay CLI there.
USER nonroot:nonroot
# SMTP 2525/2587/2465, gRPC 7340-7343 (frontend admin, sasl-auth,
# credential-store, relay-queue), Prometheus metrics 9464.
EXPOSE 2525 2587 2465 7340 7341 7342 7343 9464
ENTRYPOINT ["/usr/local/bin/authrelay"]
CMD ["serve"]
