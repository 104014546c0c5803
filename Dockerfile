# Mailroot image: one static binary; the command picks the actor
# (ingress, router, delivery, badmail, pickupwatcher, healthcheck, all).
#
#   docker build -t mailroot/mailroot .
#
# Portable on purpose: no "# syntax=" line, no RUN --mount, no COPY --chmod or
# --link. It builds with BuildKit and with the legacy builder (Debian 12's
# docker.io + docker-compose 1.29, a Docker CLI without buildx, podman).
# Without network access, point GO_IMAGE and RUNTIME_IMAGE at local images,
# or build the binary on the host and package it with Dockerfile.prebuilt.
ARG GO_IMAGE=golang:1.26-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/static-debian12:nonroot

FROM ${GO_IMAGE} AS build
WORKDIR /src
# Modules in their own layer: reused until go.mod or go.sum change.
COPY go.mod go.sum ./
RUN go mod download
COPY . .
# Same flags as ci/compose-e2e.sh, so the host build and this one are the
# same bytes.
RUN CGO_ENABLED=0 go build -trimpath -ldflags="-s -w -buildid=" -o /out/mailroot . \
 && mkdir -p /out/skel/var/spool/mailroot/Pickup /out/skel/var/spool/mailroot/Drop \
             /out/skel/var/spool/mailroot/Badmail /out/skel/var/spool/mailroot/nats /out/skel/tmp

FROM ${RUNTIME_IMAGE}
COPY --from=build /out/mailroot /usr/local/bin/mailroot
# The spool (data_dir) and /tmp (heartbeat files of `mailroot healthcheck`)
# belong to the unprivileged user; named volumes mounted on the spool's
# subdirectories inherit that ownership.
COPY --from=build --chown=65532:65532 /out/skel/ /
USER 65532:65532
ENV MAILROOT_DATA_DIR=/var/spool/mailroot
WORKDIR /var/spool/mailroot
EXPOSE 25 587
ENTRYPOINT ["/usr/local/bin/mailroot"]
CMD ["all"]
