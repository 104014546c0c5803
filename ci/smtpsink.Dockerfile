# The test sink (cmd/smtpsink) FROM scratch. Build context: dist/.
FROM scratch
COPY smtpsink /smtpsink
USER 65532:65532
EXPOSE 25 8025
ENTRYPOINT ["/smtpsink"]
