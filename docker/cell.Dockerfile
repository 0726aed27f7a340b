# The cell image: a static (musl) cellmesh-cell on distroless, non-root.
# Build from the repository root: docker build -f docker/cell.Dockerfile -t ghcr.io/cellmesh/cell:0.1.0 .
FROM rust:1.95-alpine AS build
RUN apk add --no-cache musl-dev protobuf-dev
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p cellmesh-cell \
 && cp target/release/cellmesh-cell /cellmesh-cell

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /cellmesh-cell /usr/local/bin/cellmesh-cell
USER 65532:65532
# REST (and /metrics), gRPC (µBench's port), admin (/live, /ready, /info, /metrics).
EXPOSE 8080 51313 8081
ENTRYPOINT ["/usr/local/bin/cellmesh-cell"]
