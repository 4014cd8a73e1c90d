# syntax=docker/dockerfile:1
#
# The nftpolicy image: one static binary on distroless, nothing else. There is
# no nft binary: the agent speaks nftables' netlink protocol itself
# (github.com/google/nftables).
#
#   make docker-build IMG=ghcr.io/you/nftpolicy:dev    # VERSION from git
#   docker buildx build --platform linux/amd64,linux/arm64 --build-arg VERSION=v0.1.0 -t IMG .

FROM --platform=$BUILDPLATFORM golang:1.26 AS builder
ARG TARGETOS=linux
ARG TARGETARCH
ARG VERSION=dev
WORKDIR /src
# Modules first, so that a source change reuses the download layer.
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod go mod download
COPY . .
RUN --mount=type=cache,target=/go/pkg/mod --mount=type=cache,target=/root/.cache/go-build \
    CGO_ENABLED=0 GOOS=$TARGETOS GOARCH=$TARGETARCH \
    go build -trimpath -ldflags "-s -w -X main.version=$VERSION" -o /out/nftpolicy ./cmd/nftpolicy && \
    CGO_ENABLED=0 GOOS=$TARGETOS GOARCH=$TARGETARCH \
    go build -trimpath -ldflags "-s -w" -o /out/nftpolicy-cni-gate ./cmd/nftpolicy-cni-gate

# distroless/static: CA certificates, /etc/passwd, tzdata; no shell.
FROM gcr.io/distroless/static:latest
COPY --from=builder /out/nftpolicy /nftpolicy
# The CNI gate's plugin, which the agent installs on the node (config/cni-gate).
COPY --from=builder /out/nftpolicy-cni-gate /nftpolicy-cni-gate
# Root, deliberately (the :nonroot variant would not work): the agent needs
# CAP_NET_ADMIN in the host network namespace, and Kubernetes can only grant a
# capability that a root process keeps. The DaemonSet drops every other
# capability, forbids privilege escalation and mounts the root read-only; see
# config/agent/daemonset.yaml.
USER 0:0
ENTRYPOINT ["/nftpolicy"]
