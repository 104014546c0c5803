#!/usr/bin/env bash
# Accept throughput with TLS and AUTH: bench/smtpload (a Go SMTP client;
# Postfix's smtp-source cannot AUTH) sends N messages over S sessions to
# `mailroot all`, once per mode:
#
#   plain        port "mta", no TLS, no AUTH (relay_networks), like bench/relay.sh
#   starttls     port "submission": STARTTLS + AUTH PLAIN, one login per session
#   smtps        port "smtps": implicit TLS + AUTH PLAIN
#   reconnect    submission with a new connection (TLS handshake + AUTH) every 10 messages
#
# Accepted msgs/s = messages / time until the last 250 (stored and, with
# nats.sync = "always", fsynced). Mail is relayed to Postfix's smtp-sink so
# the queue drains as in production. Everything runs on 127.0.0.1.
#
#   bench/submission.sh                   # 3 runs of 5,000 x 4 KiB, 20 sessions
#   N=2000 RUNS=1 bench/submission.sh     # quicker
#   MODES="starttls smtps" bench/submission.sh
set -euo pipefail
N=${N:-5000}
SESSIONS=${SESSIONS:-20}
SIZE=${SIZE:-4096}
RUNS=${RUNS:-3}
SYNC=${SYNC:-always}
MODES=${MODES:-"plain starttls smtps reconnect"}
BASE=${BASE:-2700}
SINK_PORT=$((BASE + 6))

source "$(dirname "$0")/lib.sh"
go build -o "$work/smtpload" ./bench/smtpload


declare -A results
for run in $(seq 1 "$RUNS"); do
	for mode in $MODES; do
		data="$work/data-$run-$mode"
		mkdir -p "$data"
		smtp-sink -u nobody -c "127.0.0.1:$SINK_PORT" 256 >/dev/null 2>&1 &
		sinkpid=$!; pids+=("$sinkpid")
		cat >"$work/bench.toml" <<CFG
hostname = "bench.mailroot.test"
data_dir = "$data"
log_level = "warn"
local_domains = ["local.test"]
[ingress]
max_connections = 2000
max_connections_per_ip = 2000
max_messages_per_connection = 0
[delivery]
smart_host = "[127.0.0.1]:$SINK_PORT"
[nats]
sync = "$SYNC"
[[site]]
kind = "mta"
listen = ["127.0.0.1:$((BASE + 25))"]
[[site]]
kind = "submission"
listen = ["127.0.0.1:$((BASE + 87))"]
[[site]]
kind = "smtps"
listen = ["127.0.0.1:$((BASE + 65))"]
CFG
		echo "bench-password" | "$work/mailroot" user add bench@bench.test -config "$work/bench.toml" -password-stdin >/dev/null
		"$work/mailroot" all -config "$work/bench.toml" 2>"$work/mailroot.log" &
		mrpid=$!; pids+=("$mrpid")
		wait_port $((BASE + 25)); wait_port $((BASE + 87)); wait_port $((BASE + 65)); wait_port "$SINK_PORT"
		auth=(-user bench@bench.test -password bench-password)
		case $mode in
		plain) args=(-addr "127.0.0.1:$((BASE + 25))") ;;
		starttls) args=(-addr "127.0.0.1:$((BASE + 87))" -starttls "${auth[@]}") ;;
		smtps) args=(-addr "127.0.0.1:$((BASE + 65))" -tls "${auth[@]}") ;;
		reconnect) args=(-addr "127.0.0.1:$((BASE + 87))" -starttls -per-session 10 "${auth[@]}") ;;
		esac
		out=$("$work/smtpload" -n "$N" -sessions "$SESSIONS" -size "$SIZE" "${args[@]}")
		echo "run $run $mode: $out"
		rate=$(sed -n 's/.*accepted \([0-9]*\) msgs\/s.*/\1/p' <<<"$out")
		results[$mode]="${results[$mode]:-} $rate"
		kill "$mrpid"; wait "$mrpid" 2>/dev/null || true
		kill "$sinkpid"; wait "$sinkpid" 2>/dev/null || true
		pids=()
	done
done
for mode in $MODES; do
	# shellcheck disable=SC2086
	printf 'median of %d, %-9s: accepted %.0f msgs/s (%d x %d bytes, %d sessions, sync=%s)\n' "$RUNS" "$mode" "$(median ${results[$mode]})" "$N" "$SIZE" "$SESSIONS" "$SYNC"
done
