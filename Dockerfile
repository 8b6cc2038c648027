# One image for Portico's programs: `portico` and the five services, with HAProxy 2.6
# (the renderer checks configurations with `haproxy -c`; the HAProxy container of the
# Kubernetes pod runs it from this image too). Envoy runs from envoyproxy/envoy.
#   docker build -t portico .
FROM rust:1.89-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --workspace --all-features --bins

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends haproxy ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/portico \
                  /src/target/release/portico-watcher \
                  /src/target/release/portico-secrets \
                  /src/target/release/portico-resolver \
                  /src/target/release/portico-renderer-haproxy \
                  /src/target/release/portico-renderer-envoy \
                  /usr/local/bin/
USER 65532:65532
ENTRYPOINT []
