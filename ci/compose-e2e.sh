#!/usr/bin/env bash
# End-to-end test of the shipped docker-compose.yml on a machine that cannot
# pull images (run by .ci/run):
#   1. builds mailroot, the test sink and nats-server on the host and packages
#      them FROM scratch (no pull; the NATS stand-in gets busybox's wget);
#   2. runs the unchanged docker-compose.yml plus ci/compose.e2e.yml (the sink)
#      with every port published on 127.0.0.1 only;
#   3. checks the Compose file with `config -q`, waits for every container to
#      be healthy, and runs ci/composetest: SMTP from the host to the sink,
#      Drop and Pickup volumes, --scale delivery=3 while mail is queued;
#   4. removes containers, networks and volumes, whatever happened.
# Without a Docker engine or Compose it prints a SKIP line and exits 0.
set -euo pipefail
cd "$(dirname "$0")/.."
. ci/lib.sh
compose_or_skip compose-e2e
start=$(date +%s)

build_images e2e
publish_loopback
export COMPOSE_PROJECT_NAME=mailroot-e2e-$$
export COMPOSE_FILE=docker-compose.yml:ci/compose.e2e.yml
trap teardown EXIT

"${DC[@]}" config -q
# The cluster overlay must parse too.
COMPOSE_FILE=docker-compose.yml:compose.cluster.yml "${DC[@]}" config -q

"${DC[@]}" up -d --no-build --scale delivery=1 >"dist/$COMPOSE_PROJECT_NAME.up.log" 2>&1 ||
	{ cat "dist/$COMPOSE_PROJECT_NAME.up.log"; exit 1; }
wait_healthy 90
echo "compose-e2e: images built and $(docker ps -q --filter "label=com.docker.compose.project=$COMPOSE_PROJECT_NAME" | wc -l) containers healthy after $(($(date +%s) - start))s"
status=0
go test -tags integration -count=1 -v -run 'TestComposeE2E$' -timeout 8m ./ci/composetest/ >"dist/$COMPOSE_PROJECT_NAME.test.log" 2>&1 || status=$?
grep -E '^(=== RUN|\s*--- |    |PASS|FAIL|ok|panic)' "dist/$COMPOSE_PROJECT_NAME.test.log" || cat "dist/$COMPOSE_PROJECT_NAME.test.log"
if [ "$status" -ne 0 ]; then
	echo "compose-e2e: FAIL (container logs: dist/$COMPOSE_PROJECT_NAME.log)"
	exit 1
fi
echo "compose-e2e: PASS in $(($(date +%s) - start))s with $("${DC[@]}" version --short 2>/dev/null || echo compose)"
