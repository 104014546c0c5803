# Shared by the bench scripts (sourced, not run): Postfix's test tools, a
# work directory cleaned up on exit with every process started into pids,
# the built binary, and waiting for a loopback port.

cd "$(dirname "${BASH_SOURCE[0]}")/.."
if ! command -v smtp-source >/dev/null || ! command -v smtp-sink >/dev/null; then
	echo "installing postfix for smtp-source/smtp-sink" >&2
	# "No configuration": no system instance is set up or started (it would
	# listen on port 25); the benches need only the tools and their own
	# private instance (bench/compare.sh).
	echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postfix >/dev/null
fi
work=$(mktemp -d)
pids=()
cleanup() {
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	rm -rf "$work"
}
trap cleanup EXIT
go build -o "$work/mailroot" .

# sink_count prints how many messages smtp-sink -c has counted in file $1.
sink_count() { tr '\r' '\n' <"$1" | sed -n 's/.*mesg=\([0-9]*\).*/\1/p' | tail -1; }

# wait_port waits up to 30 s for a listener on 127.0.0.1:$1.
wait_port() {
	for _ in $(seq 1 300); do
		(exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
		sleep 0.1
	done
	echo "port $1 never opened" >&2
	return 1
}

# median prints the median of its numeric arguments.
median() { printf '%s\n' "$@" | sort -g | awk '{v[NR]=$1} END {print (NR%2) ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2}'; }
