# The operator image: a static (musl) cellmesh-operator on distroless, non-root, read-only.
# Build from the repository root: docker build -f docker/operator.Dockerfile -t ghcr.io/cellmesh/operator:0.1.0 .
FROM rust:1.95-alpine AS build
RUN apk add --no-cache musl-dev
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p cellmesh-operator \
 && cp target/release/cellmesh-operator /cellmesh-operator

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /cellmesh-operator /usr/local/bin/cellmesh-operator
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/cellmesh-operator"]
CMD ["run"]
