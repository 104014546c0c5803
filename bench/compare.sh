#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Postfix and Mailroot side by side on the same load (issue #12).
#
# Runs a PRIVATE Postfix instance (the Debian package, its queue fsynced as
# usual) and `mailroot all` (default nats.sync = "always") on 127.0.0.1, each
# relaying to Postfix's smtp-sink on another loopback port, and drives both
# with the same load, interleaved: postfix, mailroot, postfix, mailroot, ...
# so that a change in the machine's load hits both sides alike. Per run it
# measures:
#
#   - accepted msgs/s: smtp-source -s SESSIONS, a new connection per message,
#     until every message got its 250;
#   - end to end msgs/s: until smtp-sink counted every message;
#   - CPU ms/msg: user+sys of all the server's processes over the run (from
#     just before the load to the last message at the sink) divided by N,
#     from a cgroup v2 per server run (cpu.stat usage_usec, which also counts
#     Postfix's short-lived children), or from /proc where no cgroup can be
#     made; both servers are always counted the same way;
#   - p50/p99 accept latency: bench/smtpload -latency, SESSIONS sessions that
#     reuse their connection, time from the end-of-DATA "." to the 250:
#     once with each server as fast as it answers (saturated: a faster
#     server is offered more load, so this compares latencies at different
#     loads), and once with both offered the same load, smtpload -rate, half
#     of the rate Postfix accepted in the saturated run of the same round
#     (or RATE), which compares what each adds to a 250 at equal load.
#
# Then, in one extra run per server not counted in the medians (tracing slows
# it), the fsync-class system calls (fsync, fdatasync, syncfs,
# sync_file_range) per accepted mail, with strace.
#
# Everything listens on 127.0.0.1 only, every step has a timeout, and all
# processes (the Postfix instance too) are stopped on exit. Needs root
# (Postfix's master runs as root); installs postfix and strace with apt-get
# if missing.
#
#   bench/compare.sh                      # 3 rounds of 10,000 x 4 KiB, 20 sessions
#   N=500 ROUNDS=1 bench/compare.sh       # a quick check
#   SYNC=2m STRACE=0 bench/compare.sh     # Mailroot with a JetStream sync interval, no strace run
#   RATE=300 bench/compare.sh             # the same-load latency runs at 300 msgs/s
set -euo pipefail
N=${N:-10000}             # messages per run
ROUNDS=${ROUNDS:-3}       # rounds; each round runs both servers under both loads
SESSIONS=${SESSIONS:-20}  # concurrent SMTP sessions
SIZE=${SIZE:-4096}        # message size in bytes
SYNC=${SYNC:-always}      # Mailroot's nats.sync
SYNC_DELAY=${SYNC_DELAY:-1ms}  # Mailroot's nats.sync_delay (the group commit's wait)
SYNC_METHOD=${SYNC_METHOD:-}   # Mailroot's nats.sync_method (files or syncfs; empty: the default)
STRACE=${STRACE:-1}       # 1: one extra traced run per server counting fsync-class calls
CGROUP=${CGROUP:-1}       # 0: count CPU from /proc even where a cgroup could be made
TIMEOUT=${TIMEOUT:-600}   # seconds for any one load, or for the sink to count it
PF_PORT=${PF_PORT:-2725}  # Postfix's smtpd
MR_PORT=${MR_PORT:-2726}  # Mailroot's SMTP
SINK_PORT=${SINK_PORT:-2727}

[ "$(id -u)" = 0 ] || { echo "compare.sh needs root: Postfix's master runs as root" >&2; exit 1; }
# lib.sh: installs postfix if smtp-source is missing, makes $work (removed
# on exit, every pid in pids killed), builds $work/mailroot, cd's to the repo.
# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"
if [ "$STRACE" = 1 ] && ! command -v strace >/dev/null; then
	echo "installing strace" >&2
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq strace >/dev/null
fi
go build -o "$work/smtpload" ./bench/smtpload
# Postfix's daemons drop to the postfix user; they must be able to reach
# their queue and data directories under $work.
chmod 755 "$work"

now() { date +%s.%N; }
fsyncs=fsync,fdatasync,syncfs,sync_file_range
pf_version=$(postconf -d -h mail_version)

for p in "$PF_PORT" "$MR_PORT" "$SINK_PORT"; do
	if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
		echo "port $p on 127.0.0.1 is already in use; set PF_PORT, MR_PORT, SINK_PORT" >&2
		exit 1
	fi
done

# --- stopping things -------------------------------------------------------

# gone PID SECONDS waits up to SECONDS for PID to exit; fails if it did not.
gone() {
	for _ in $(seq 1 $(($2 * 10))); do
		kill -0 "$1" 2>/dev/null || return 0
		sleep 0.1
	done
	! kill -0 "$1" 2>/dev/null
}

# stop PID: TERM, up to 10 s, then KILL.
stop() {
	kill "$1" 2>/dev/null || true
	gone "$1" 10 || kill -9 "$1" 2>/dev/null || true
	wait "$1" 2>/dev/null || true
}

# The trap stops a Postfix instance still running (pf_conf is set while one
# is), removes our cgroups, then runs lib.sh's cleanup.
pf_conf=""
cg_dirs=()
compare_cleanup() {
	if [ -n "$pf_conf" ]; then stop_postfix; fi
	local cg
	for cg in "${cg_dirs[@]}"; do
		[ -d "$cg" ] || continue
		[ ! -e "$cg/cgroup.kill" ] || echo 1 >"$cg/cgroup.kill" 2>/dev/null || true
		for _ in $(seq 1 50); do rmdir "$cg" 2>/dev/null && break; sleep 0.1; done
	done
	cleanup
}
trap compare_cleanup EXIT
trap 'exit 130' INT TERM

# --- CPU accounting --------------------------------------------------------
# Preferred: every server run gets its own cgroup v2 directory; its cpu.stat
# usage_usec sums user+sys of every process that ever ran in it, Postfix's
# smtpd and cleanup children that come and go included. The probe checks
# that a directory can be made and that a process can be moved into it.
cg_root=""
[ "$CGROUP" = 0 ] || cg_root=$(awk '$3 == "cgroup2" {print $2; exit}' /proc/mounts)
if [ -n "$cg_root" ]; then
	probe="$cg_root/mrcompare-$$-probe"
	if mkdir "$probe" 2>/dev/null; then
		cg_dirs+=("$probe")
		if [ ! -r "$probe/cpu.stat" ] || ! sh -c 'echo $$ >"$1/cgroup.procs"' sh "$probe" 2>/dev/null; then
			cg_root=""
		fi
		rmdir "$probe" 2>/dev/null || true
	else
		cg_root=""
	fi
fi
if [ -n "$cg_root" ]; then
	cpu_method="cgroup v2 cpu.stat usage_usec ($cg_root)"
else
	# Fallback: /proc/<pid>/stat utime+stime+cutime+cstime of the server's
	# processes (Mailroot: its one process; Postfix: every process in the
	# master's session, and the master's cutime/cstime holds the children
	# that exited and were reaped).
	cpu_method="/proc/<pid>/stat utime+stime+cutime+cstime"
	clk_tck=$(getconf CLK_TCK)
fi

# drop_cg removes srv_cg once its processes are gone (killing stragglers
# after 10 s), so that nothing of a run is left in it.
drop_cg() {
	[ -n "${srv_cg:-}" ] && [ -d "$srv_cg" ] || return 0
	for _ in $(seq 1 100); do [ -s "$srv_cg/cgroup.procs" ] || break; sleep 0.1; done
	[ ! -s "$srv_cg/cgroup.procs" ] || echo 1 >"$srv_cg/cgroup.kill" 2>/dev/null || true
	for _ in $(seq 1 50); do rmdir "$srv_cg" 2>/dev/null && break; sleep 0.1; done
	srv_cg=""
}

# enter_cg is a sh script run as `sh -c "$enter_cg" sh CGROUP CMD...`: it
# moves itself into CGROUP (when not empty) and execs CMD, so CMD and all it
# forks are counted there, and CMD keeps the pid that $! reported.
# shellcheck disable=SC2016 # expanded by that sh, not here
enter_cg='[ -z "$1" ] || echo $$ >"$1/cgroup.procs" || exit 1; shift; exec "$@"'

# new_cg NAME sets srv_cg to a fresh cgroup (empty without cgroups).
new_cg() {
	srv_cg=""
	[ -n "$cg_root" ] || return 0
	srv_cg="$cg_root/mrcompare-$$-$1"
	mkdir "$srv_cg"
	cg_dirs+=("$srv_cg")
}

# proc_ticks pid|sid N prints the clock ticks of the process N, or of all
# processes in session N.
proc_ticks() {
	{ cat /proc/[0-9]*/stat 2>/dev/null || true; } | awk -v by="$1" -v n="$2" '{
		pid = $1; sub(/^.*\) /, "")   # drop "pid (comm) ": comm may hold spaces
		# now $1 state, $2 ppid, $3 pgrp, $4 session, $12..$15 utime stime cutime cstime
		if ((by == "pid" && pid == n) || (by == "sid" && $4 == n)) t += $12 + $13 + $14 + $15
	} END { print t + 0 }'
}

# cpu_usec prints the CPU microseconds used so far by the running server
# (srv_cg, or srv_by/srv_id for the /proc fallback).
cpu_usec() {
	if [ -n "$cg_root" ]; then
		awk '$1 == "usage_usec" {print $2}' "$srv_cg/cpu.stat"
	else
		echo $(($(proc_ticks "$srv_by" "$srv_id") * 1000000 / clk_tck))
	fi
}

# --- the sink ---------------------------------------------------------------

start_sink() {
	sink_out="$work/sink-$1.out"
	smtp-sink -u nobody -c "127.0.0.1:$SINK_PORT" 256 >"$sink_out" 2>&1 &
	sink_pid=$!; pids+=("$sink_pid")
	wait_port "$SINK_PORT"
}

# wait_sink waits up to TIMEOUT s until smtp-sink has counted N messages.
wait_sink() {
	local c deadline=$(($(date +%s) + TIMEOUT))
	while c=$(sink_count "$sink_out"); [ "${c:-0}" -lt "$N" ]; do
		if [ "$(date +%s)" -gt "$deadline" ]; then
			echo "$label: only ${c:-0} of $N reached smtp-sink in ${TIMEOUT}s" >&2
			return 1
		fi
		sleep 0.05
	done
}

# --- Postfix: a private instance -------------------------------------------
# Its own config, queue and data directories under $work, smtpd on
# 127.0.0.1:PF_PORT only (no port 25), relaying everything to smtp-sink.
# Changed from the package's defaults only as a private bench instance needs:
# paths, loopback only, relayhost, enough processes for SESSIONS sessions
# and no per-client connection limit (all load comes from 127.0.0.1), its
# log in a file instead of syslog, and no chroot (the chroot would need the
# copies of /etc files that Debian's init script makes for the system
# instance). The queue is fsynced as Debian ships it: that is the point.
start_postfix() { # label [strace-output]
	local d="$work/postfix-$1" compat
	pf_conf="$d/etc" pf_queue="$d/spool"
	mkdir -p "$pf_conf" "$pf_queue" "$d/data"
	chown postfix: "$d/data"
	compat=$(sed -n 's/^compatibility_level *= *//p' /etc/postfix/main.cf.proto 2>/dev/null | head -1)
	cat >"$pf_conf/main.cf" <<CFG
compatibility_level = ${compat:-3.6}
queue_directory = $pf_queue
data_directory = $d/data
mail_owner = postfix
setgid_group = postdrop
myhostname = postfix.bench.test
inet_interfaces = loopback-only
inet_protocols = ipv4
mydestination =
mynetworks = 127.0.0.0/8
relayhost = [127.0.0.1]:$SINK_PORT
alias_maps =
alias_database =
default_process_limit = 100
smtpd_client_connection_count_limit = 0
maillog_file = $work/postfix-$1.log
maillog_file_prefixes = $work
CFG
	# master.cf: the services a relay needs; the only inet one is smtpd on
	# 127.0.0.1:PF_PORT. Columns: service type private unpriv chroot wakeup maxproc command.
	cat >"$pf_conf/master.cf" <<CFG
127.0.0.1:$PF_PORT inet n - n - - smtpd
pickup     unix  n - n 60    1 pickup
cleanup    unix  n - n -     0 cleanup
qmgr       unix  n - n 300   1 qmgr
rewrite    unix  - - n -     - trivial-rewrite
bounce     unix  - - n -     0 bounce
defer      unix  - - n -     0 bounce
trace      unix  - - n -     0 bounce
verify     unix  - - n -     1 verify
flush      unix  n - n 1000? 0 flush
proxymap   unix  - - n -     - proxymap
proxywrite unix  - - n -     1 proxymap
smtp       unix  - - n -     - smtp
relay      unix  - - n -     - smtp
showq      unix  n - n -     - showq
error      unix  - - n -     - error
retry      unix  - - n -     - error
discard    unix  - - n -     - discard
local      unix  - n n -     - local
anvil      unix  - - n -     1 anvil
scache     unix  - - n -     1 scache
postlog    unix-dgram n - n - 1 postlogd
CFG
	# check creates the queue directories with their owners and modes.
	postfix -c "$pf_conf" check
	if [ -n "${2:-}" ]; then
		# Traced: strace follows `postfix start` into the master it starts
		# and every child the master forks; it ends when the master does.
		strace -f --seccomp-bpf -qq -ttt -e trace="$fsyncs" -e signal=none -o "$2" \
			postfix -c "$pf_conf" start >>"$work/postfix-$1.log" 2>&1 &
		strace_pid=$!; pids+=("$strace_pid")
		srv_cg=""
	else
		new_cg "postfix-$1"
		sh -c "$enter_cg" sh "$srv_cg" postfix -c "$pf_conf" start >>"$work/postfix-$1.log" 2>&1
	fi
	wait_port "$PF_PORT"
	pf_master=$(tr -d ' \n' <"$pf_queue/pid/master.pid")
	srv_by=sid srv_id=$pf_master srv_port=$PF_PORT srv_log="$work/postfix-$1.log"
	# Refuse to go on if the instance listens anywhere but 127.0.0.1.
	local beyond
	beyond=$(ss -Htulnp 2>/dev/null | grep "pid=$pf_master," | awk '{print $5}' | grep -v '^127\.0\.0\.1:' || true)
	if [ -n "$beyond" ]; then
		echo "the Postfix instance listens beyond loopback: $beyond" >&2
		exit 1
	fi
}

# stop_postfix: `postfix stop`, then abort, then kill whatever is left in
# its cgroup; waits for the master (and strace, when tracing) to be gone.
# Also the trap's way to stop an instance that is still running.
stop_postfix() {
	local log=${srv_log:-/dev/null}
	postfix -c "$pf_conf" stop >>"$log" 2>&1 || true
	if [ -n "${pf_master:-}" ] && ! gone "$pf_master" 20; then
		postfix -c "$pf_conf" abort >>"$log" 2>&1 || true
		gone "$pf_master" 10 || kill -9 "$pf_master" 2>/dev/null || true
	fi
	drop_cg
	if [ -n "${strace_pid:-}" ]; then
		gone "$strace_pid" 20 || kill "$strace_pid" 2>/dev/null || true
		wait "$strace_pid" 2>/dev/null || true
		strace_pid=""
	fi
	pf_conf="" pf_master=""
}

# --- Mailroot ---------------------------------------------------------------
# `mailroot all` with a fresh data dir per run, the bench config of
# bench/relay.sh: everything relayed through smart_host to smtp-sink.
start_mailroot() { # label [strace-output]
	local data="$work/mailroot-$1"
	mkdir -p "$data"
	method_line=""
	[ -z "$SYNC_METHOD" ] || method_line="sync_method = \"$SYNC_METHOD\""
	cat >"$work/mailroot-$1.toml" <<CFG
hostname = "bench.mailroot.test"
data_dir = "$data"
log_level = "warn"
local_domains = ["local.test"]
[ingress]
listen = ["127.0.0.1:$MR_PORT"]
max_connections = 2000
[delivery]
smart_host = "[127.0.0.1]:$SINK_PORT"
concurrency = 100
[nats]
sync = "$SYNC"
sync_delay = "$SYNC_DELAY"
$method_line
CFG
	srv_log="$work/mailroot-$1.log"
	if [ -n "${2:-}" ]; then
		strace -f --seccomp-bpf -qq -ttt -e trace="$fsyncs" -e signal=none -o "$2" \
			"$work/mailroot" all -config "$work/mailroot-$1.toml" 2>"$srv_log" &
		strace_pid=$!; pids+=("$strace_pid")
		srv_cg=""
		wait_port "$MR_PORT"
		mr_pid=$(ps -o pid= --ppid "$strace_pid" | tr -d ' ')
	else
		new_cg "mailroot-$1"
		sh -c "$enter_cg" sh "$srv_cg" "$work/mailroot" all -config "$work/mailroot-$1.toml" 2>"$srv_log" &
		mr_pid=$!
		wait_port "$MR_PORT"
	fi
	pids+=("$mr_pid")
	srv_by=pid srv_id=$mr_pid srv_port=$MR_PORT
}

stop_mailroot() {
	stop "$mr_pid"
	drop_cg
	if [ -n "${strace_pid:-}" ]; then
		gone "$strace_pid" 20 || kill "$strace_pid" 2>/dev/null || true
		wait "$strace_pid" 2>/dev/null || true
		strace_pid=""
	fi
}

# --- one run ----------------------------------------------------------------

# load KIND LABEL sends N messages to srv_port: KIND "new" is smtp-source
# with a new connection per message, "reuse" is smtpload -latency with
# SESSIONS connections reused for all messages. It runs in the background
# and is waited for, so that a TERM or INT to the script ends it at once
# (the trap runs; a foreground child would delay it) and cleanup kills it.
load() {
	local out="$work/load-$2.out"
	if [ "$1" = new ]; then
		timeout "$TIMEOUT" smtp-source -s "$SESSIONS" -l "$SIZE" -m "$N" \
			-f sender@bench.test -t rcpt@remote.test "127.0.0.1:$srv_port" >"$out" 2>&1 &
	elif [ "$1" = reuse ]; then
		timeout "$TIMEOUT" "$work/smtpload" -addr "127.0.0.1:$srv_port" -n "$N" \
			-sessions "$SESSIONS" -size "$SIZE" -latency >"$out" 2>&1 &
	else
		timeout "$TIMEOUT" "$work/smtpload" -addr "127.0.0.1:$srv_port" -n "$N" \
			-sessions "$SESSIONS" -size "$SIZE" -latency -rate "$round_rate" >"$out" 2>&1 &
	fi
	pids+=("$!")
	wait "$!"
}

# fail prints what the server and the load said, then exits.
fail() {
	echo "$label failed: $1" >&2
	tail -20 "$srv_log" "$work/load-$label.out" >&2 2>/dev/null || true
	exit 1
}

# run SERVER KIND ROUND: one measured run; sets r_acc, r_e2e, r_cpu, r_p50, r_p99.
run() {
	local srv=$1 kind=$2 c0 c1 t0 t1 t2
	label="$srv-$kind-$3"
	start_sink "$label"
	"start_$srv" "$label"
	c0=$(cpu_usec); t0=$(now)
	load "$kind" "$label" || fail "load exited with $?"
	t1=$(now)
	wait_sink || fail "not all delivered"
	t2=$(now); c1=$(cpu_usec)
	"stop_$srv"
	stop "$sink_pid"
	pids=()
	r_acc=$(awk -v n="$N" -v a="$t0" -v b="$t1" 'BEGIN {printf "%.0f", n / (b - a)}')
	r_e2e=$(awk -v n="$N" -v a="$t0" -v b="$t2" 'BEGIN {printf "%.0f", n / (b - a)}')
	r_cpu=$(awk -v n="$N" -v a="$c0" -v b="$c1" 'BEGIN {printf "%.3f", (b - a) / 1000 / n}')
	r_p50=- r_p99=-
	if [ "$kind" != new ]; then
		read -r r_p50 r_p99 < <(sed -n 's/.*p50 \([0-9.]*\) ms, p99 \([0-9.]*\) ms.*/\1 \2/p' "$work/load-$label.out") || true
		[ -n "${r_p99:-}" ] || fail "no latency line from smtpload"
	fi
}

# --- the rounds --------------------------------------------------------------

declare -A res   # "server:metric" -> space-separated values of all rounds
name() { if [ "$1" = postfix ]; then echo "Postfix $pf_version"; else echo "Mailroot (sync=$SYNC${SYNC_METHOD:+, $SYNC_METHOD})"; fi; }

echo "N=$N msgs of $SIZE bytes, $SESSIONS sessions, $ROUNDS rounds; CPU from $cpu_method"
echo
echo "| round | server | load | accepted msgs/s | end to end msgs/s | CPU ms/msg | p50 ms | p99 ms |"
echo "|---|---|---|---|---|---|---|---|"
for round in $(seq 1 "$ROUNDS"); do
	# Each round: both servers under the throughput load, then both under
	# the latency load, always Postfix first, so neither side gets the
	# quieter moments.
	for kind in new reuse rate; do
		for srv in postfix mailroot; do
			run "$srv" "$kind" "$round"
			case $kind in
			new)
				what="smtp-source, new conn per msg"
				res[$srv:acc]+=" $r_acc"; res[$srv:e2e]+=" $r_e2e"; res[$srv:cpu]+=" $r_cpu" ;;
			reuse)
				what="smtpload -latency, conns reused"
				res[$srv:p50]+=" $r_p50"; res[$srv:p99]+=" $r_p99"
				# The same offered load for both in this round's rate
				# runs: half of what Postfix accepted here (or RATE).
				if [ "$srv" = postfix ]; then
					round_rate=${RATE:-$(awk -v a="$r_acc" 'BEGIN {printf "%.0f", a / 2}')}
				fi ;;
			rate)
				what="smtpload -latency -rate $round_rate, conns reused"
				res[$srv:q50]+=" $r_p50"; res[$srv:q99]+=" $r_p99" ;;
			esac
			echo "| $round | $(name "$srv") | $what | $r_acc | $r_e2e | $r_cpu | $r_p50 | $r_p99 |"
		done
	done
done

# med SERVER METRIC prints the median over the rounds.
med() { local v; read -ra v <<<"${res[$1:$2]}"; median "${v[@]}"; }

echo
echo "Medians of $ROUNDS rounds: throughput and CPU with a new connection per message (smtp-source),"
echo "latency from end-of-DATA \".\" to 250 with connections reused (smtpload): each server as fast as it answers"
echo "(saturated), and both at the same offered load (${RATE:+$RATE msgs/s}${RATE:-half the rate Postfix accepted in the round}); $SESSIONS sessions, $SIZE-byte messages."
echo
echo "| | accepted msgs/s | end to end msgs/s | CPU ms/msg | p50 ms | p99 ms | p50 ms, same load | p99 ms, same load |"
echo "|---|---|---|---|---|---|---|---|"
for srv in postfix mailroot; do
	printf '| %s | %.0f | %.0f | %.3f | %.3f | %.3f | %.3f | %.3f |\n' "$(name "$srv")" \
		"$(med "$srv" acc)" "$(med "$srv" e2e)" "$(med "$srv" cpu)" "$(med "$srv" p50)" "$(med "$srv" p99)" "$(med "$srv" q50)" "$(med "$srv" q99)"
done
ratios=""
for m in acc e2e cpu p50 p99 q50 q99; do
	ratios+=$(awk -v a="$(med mailroot "$m")" -v b="$(med postfix "$m")" 'BEGIN {printf " %.2f |", (b > 0) ? a / b : 0}')
done
echo "| mailroot/postfix |$ratios"
echo
echo "(ratios of medians: above 1 is better for msgs/s, below 1 is better for CPU and latency)"

# --- fsync-class calls -------------------------------------------------------
# One extra run per server under strace (not in the medians: tracing slows
# it), the same smtp-source load. strace starts with the server, so only the
# calls stamped from the start of the load to the last message at the sink
# are counted: every sync one message costs, accepted and relayed.
if [ "$STRACE" = 1 ]; then
	echo
	for srv in mailroot postfix; do
		label="$srv-strace"
		trace="$work/strace-$srv.txt"
		start_sink "$label"
		"start_$srv" "$label" "$trace"
		t0=$(now)
		load new "$label" || fail "load exited with $?"
		t1=$(now)
		wait_sink || fail "not all delivered"
		t2=$(now)
		"stop_$srv"
		stop "$sink_pid"
		pids=()
		# Lines are "pid time call(...) = ret" or "... call(... <unfinished ...>";
		# the "<... call resumed>" halves do not start with a call name.
		read -r total accepted detail < <(awk -v a="$t0" -v b="$t1" -v c="$t2" '
			$2 >= a && $2 <= c && match($3, /^(fsync|fdatasync|syncfs|sync_file_range)\(/) {
				s = substr($3, 1, RLENGTH - 1); n[s]++; t++; if ($2 <= b) acc++
			}
			END {
				d = ""; for (s in n) d = d (d == "" ? "" : ",") s "=" n[s]
				print t + 0, acc + 0, (d == "" ? "none" : d)
			}' "$trace")
		per=$(awk -v t="$total" -v n="$N" 'BEGIN {printf "%.2f", t / n}')
		if [ "$srv" = mailroot ]; then
			echo "fsync-class calls per mail: $per ($(name "$srv"): $total calls for $N mails, $accepted of them until the last 250; $detail)"
		else
			echo "fsync-class calls per mail, $(name "$srv"): $per ($total calls for $N mails, $accepted of them until the last 250; $detail)"
		fi
	done
fi
