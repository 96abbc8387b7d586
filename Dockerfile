# syntax=docker/dockerfile:1
# Images for sidekey-proxy and sidekey-controller from the static binaries `make dist`
# leaves in dist/linux-<arch>/ (so the image build needs no Rust toolchain):
#
#   make dist && make images
#   docker build --target sidekey-proxy -t ghcr.io/sidekey-dev/sidekey-proxy:v0.1.0 .
#
# distroless/static: no shell, no package manager; CA certificates, tzdata and a nonroot
# user (65532) only. Pin it by digest in release builds (BASE=...@sha256:...).
ARG BASE=gcr.io/distroless/static-debian12:nonroot

# What both images share; labels set here are inherited.
FROM ${BASE} AS common
ARG VERSION=dev
ARG REVISION=unknown
LABEL org.opencontainers.image.source="https://github.com/sidekey-dev/sidekey" \
      org.opencontainers.image.url="https://github.com/sidekey-dev/sidekey" \
      org.opencontainers.image.documentation="https://github.com/sidekey-dev/sidekey/tree/main/docs" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}"
USER 65532:65532

FROM common AS sidekey-proxy
ARG TARGETARCH=amd64
LABEL org.opencontainers.image.title="sidekey-proxy" \
      org.opencontainers.image.description="OIDC / Entra ID authenticating reverse proxy and forward-auth endpoint, oauth2-proxy compatible"
COPY --chmod=0555 dist/linux-${TARGETARCH}/sidekey-proxy /usr/local/bin/sidekey-proxy
EXPOSE 4180
ENTRYPOINT ["/usr/local/bin/sidekey-proxy"]

FROM common AS sidekey-controller
ARG TARGETARCH=amd64
LABEL org.opencontainers.image.title="sidekey-controller" \
      org.opencontainers.image.description="Kubernetes controller that injects sidekey-proxy for AuthPolicy resources"
COPY --chmod=0555 dist/linux-${TARGETARCH}/sidekey-controller /usr/local/bin/sidekey-controller
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/sidekey-controller"]
