# Stand-in for the official nats:<minor>-alpine image on machines that
# cannot pull: nats-server built from the module pinned in go.mod, plus
# Debian's busybox-static for the same wget healthcheck. Same interface as
# the official image: entrypoint nats-server, flags-only command.
# Build context: dist/ (ci/compose-e2e.sh).
FROM scratch
COPY nats-server /usr/local/bin/nats-server
COPY busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]
ENV PATH=/usr/local/bin:/bin
EXPOSE 4222 6222 8222
ENTRYPOINT ["nats-server"]
