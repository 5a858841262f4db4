# syntax=docker/dockerfile:1
# pitcrew's image: the `dist` build (fat LTO) on distroless, non-root.
#
#   docker build -t pitcrew .
#   docker run --read-only --tmpfs /tmp -p 9095:9095 -v pitcrew-state:/var/lib/pitcrew \
#     -v "$PWD/pitcrew.yaml:/etc/pitcrew/pitcrew.yaml:ro" pitcrew
#
# The builder is Debian bookworm so the binary links against the same glibc
# as the distroless cc-debian12 runtime.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
# Caches keep the registry and the dependency builds between image builds;
# the binary is copied out because a cache mount is gone after this step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --profile dist --locked \
    && install -D -m 0755 target/dist/pitcrew /out/usr/local/bin/pitcrew \
    && install -d -m 0700 /out/var/lib/pitcrew

# cc: glibc and libgcc, which the binary needs; nothing else (no shell).
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/usr/local/bin/pitcrew /usr/local/bin/pitcrew
# Owned by the runtime user: a fresh named volume copies this ownership, so
# `docker run` can write state without a chown step.
COPY --from=build --chown=65532:65532 /out/var/lib/pitcrew /var/lib/pitcrew
# Numeric, so Kubernetes' runAsNonRoot can check it without reading /etc/passwd.
USER 65532:65532
VOLUME ["/var/lib/pitcrew"]
# The config (and the runbooks it names) is mounted at /etc/pitcrew; it must
# set `listen: 0.0.0.0:9095` (the default is loopback) and auth tokens.
EXPOSE 9095
ENTRYPOINT ["/usr/local/bin/pitcrew"]
CMD ["serve", "--config", "/etc/pitcrew/pitcrew.yaml"]
