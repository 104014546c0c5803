#!/usr/bin/env bash
# Chaos test and scaling measurement of the compose deployment (not part of
# .ci/run: about 5 minutes). Same offline images as ci/compose-e2e.sh.
#
#   ci/chaos.sh            both
#   ci/chaos.sh chaos      cluster overlay (3 NATS nodes, R3), two delivery workers; while
#                          CHAOS_MESSAGES (5000) are sent at CHAOS_RATE (100/s): docker kill the
#                          MAIL stream's leader node, then the node ingress is connected to, then
#                          a delivery worker, then the router, each started again after
#                          CHAOS_DOWN_SECONDS (5). Checks that every accepted message reaches the
#                          sink, and counts duplicates.
#   ci/chaos.sh scaling    single node; end-to-end and drain msgs/s with 1, 2 and 4 delivery
#                          workers (SCALING_MESSAGES, 2000; SCALING_SINK_DELAYS, "0s,50ms").
#
# Figures go to stdout and dist/chaos-summary.txt, dist/scaling-summary.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
. ci/lib.sh
compose_or_skip chaos
what=${1:-all}
build_images chaos
publish_loopback
mkdir -p dist

run() { # run <name> <compose files> <delivery workers> <go test regexp> <env...>
	local name=$1 files=$2 workers=$3 test=$4 status=0
	shift 4
	export COMPOSE_PROJECT_NAME=mailroot-$name-$$ COMPOSE_FILE=$files
	trap teardown EXIT
	"${DC[@]}" up -d --no-build --scale delivery="$workers" >"dist/$COMPOSE_PROJECT_NAME.up.log" 2>&1 ||
		{ cat "dist/$COMPOSE_PROJECT_NAME.up.log"; exit 1; }
	wait_healthy 120
	env "$@" go test -tags integration -count=1 -v -run "$test" -timeout 30m ./ci/composetest/ \
		>"dist/$COMPOSE_PROJECT_NAME.test.log" 2>&1 || status=$?
	grep -E '^(=== RUN|\s*--- |    |PASS|FAIL|ok|panic)' "dist/$COMPOSE_PROJECT_NAME.test.log" || cat "dist/$COMPOSE_PROJECT_NAME.test.log"
	teardown
	trap - EXIT
	if [ "$status" -ne 0 ]; then
		echo "$name: FAIL (container logs: dist/$COMPOSE_PROJECT_NAME.log)"
		exit 1
	fi
	echo "$name: PASS"
}

if [ "$what" = all ] || [ "$what" = chaos ]; then
	run chaos docker-compose.yml:compose.cluster.yml:ci/compose.e2e.yml 2 'TestChaos$' \
		MAILROOT_CHAOS=1 CHAOS_SUMMARY="$PWD/dist/chaos-summary.txt"
fi
if [ "$what" = all ] || [ "$what" = scaling ]; then
	run scaling docker-compose.yml:ci/compose.e2e.yml 1 'TestScaling$' \
		MAILROOT_SCALING=1 SCALING_SUMMARY="$PWD/dist/scaling-summary.txt"
fi
