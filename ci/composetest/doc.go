// Package composetest checks the Docker Compose deployment from the
// outside: it sends mail over SMTP from the host to ingress on a
// 127.0.0.1-published port, counts what arrives at the sink container
// (cmd/smtpsink), scales delivery workers, and kills containers.
//
// Its tests carry the integration build tag and expect the stack that
// ci/compose-e2e.sh (run by .ci/run) or ci/chaos.sh has brought up; the
// scripts pass the Compose command, project, files and ports in the
// environment:
//
//	MAILROOT_DC           "docker compose" or "docker-compose"
//	COMPOSE_PROJECT_NAME  the project the scripts started
//	COMPOSE_FILE          docker-compose.yml plus overlays, ':'-separated
//	MAILROOT_SMTP_PORT    ingress port 25 on 127.0.0.1
//	SINK_HTTP_PORT        the sink's counters on 127.0.0.1
package composetest
