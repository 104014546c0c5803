#!/usr/bin/env bash
# Relay benchmark: Postfix's smtp-source sends N messages over S sessions to
# `mailroot all`, which relays them through smart_host to Postfix's
# smtp-sink. Prints accepted msgs/s (smtp-source finished: every message got
# its 250, fsynced) and end-to-end msgs/s (smtp-sink counted every message).
# Everything runs on 127.0.0.1 and stops by itself.
#
#   bench/relay.sh                 # 3 runs of 10,000 x 4 KiB, 20 sessions
#   N=2000 RUNS=1 bench/relay.sh   # quicker
#   SYNC=2m bench/relay.sh         # JetStream sync interval instead of fsync per message
set -euo pipefail
N=${N:-10000}
SESSIONS=${SESSIONS:-20}
SIZE=${SIZE:-4096}
RUNS=${RUNS:-3}
SYNC=${SYNC:-always}
SMTP_PORT=${SMTP_PORT:-2625}
SINK_PORT=${SINK_PORT:-2626}
TIMEOUT=${TIMEOUT:-600}

source "$(dirname "$0")/lib.sh"
now() { date +%s.%N; }

acc=(); e2e=()
for run in $(seq 1 "$RUNS"); do
	data="$work/data$run"
	mkdir -p "$data"
	smtp-sink -u nobody -c "127.0.0.1:$SINK_PORT" 256 >"$work/sink$run.out" 2>&1 &
	sinkpid=$!; pids+=("$sinkpid")
	cat >"$work/bench.toml" <<CFG
hostname = "bench.mailroot.test"
data_dir = "$data"
log_level = "warn"
local_domains = ["local.test"]
[ingress]
listen = ["127.0.0.1:$SMTP_PORT"]
max_connections = 2000
[delivery]
smart_host = "[127.0.0.1]:$SINK_PORT"
concurrency = 100
[nats]
sync = "$SYNC"
CFG
	"$work/mailroot" all -config "$work/bench.toml" 2>"$work/mailroot$run.log" &
	mrpid=$!; pids+=("$mrpid")
	wait_port "$SMTP_PORT"
	wait_port "$SINK_PORT"
	t0=$(now)
	smtp-source -s "$SESSIONS" -l "$SIZE" -m "$N" -f sender@bench.test -t rcpt@remote.test "127.0.0.1:$SMTP_PORT"
	t1=$(now)
	deadline=$(( $(date +%s) + TIMEOUT ))
	while c=$(sink_count "$work/sink$run.out"); [ "${c:-0}" -lt "$N" ]; do
		if [ "$(date +%s)" -gt "$deadline" ]; then
			echo "run $run: only ${c:-0} of $N arrived in ${TIMEOUT}s" >&2
			tail -20 "$work/mailroot$run.log" >&2
			exit 1
		fi
		sleep 0.05
	done
	t2=$(now)
	a=$(awk -v n="$N" -v a="$t0" -v b="$t1" 'BEGIN{print n/(b-a)}'); e=$(awk -v n="$N" -v a="$t0" -v b="$t2" 'BEGIN{print n/(b-a)}')
	printf 'run %d: %d msgs of %d bytes, %d sessions: accepted %.0f msgs/s, end to end %.0f msgs/s\n' "$run" "$N" "$SIZE" "$SESSIONS" "$a" "$e"
	acc+=("$a"); e2e+=("$e")
	kill "$mrpid"; wait "$mrpid" 2>/dev/null || true
	kill "$sinkpid"; wait "$sinkpid" 2>/dev/null || true
	pids=()
done
printf 'median of %d: accepted %.0f msgs/s, end to end %.0f msgs/s (sync=%s)\n' "$RUNS" "$(median "${acc[@]}")" "$(median "${e2e[@]}")" "$SYNC"
