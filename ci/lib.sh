# Shared by ci/compose-e2e.sh and ci/chaos.sh: find Docker and Compose, build
# the images without pulling, and helpers around `compose`. Source it from
# the repository root.

# compose_or_skip sets DC to the Compose command, or prints a SKIP line and
# exits 0 when this machine cannot run containers.
compose_or_skip() {
	local name=$1
	if ! command -v docker >/dev/null 2>&1 || ! docker info >/dev/null 2>&1; then
		echo "$name: SKIP (no usable Docker engine)"
		exit 0
	fi
	if docker compose version >/dev/null 2>&1; then
		DC=(docker compose)
	elif command -v docker-compose >/dev/null 2>&1; then
		DC=(docker-compose)
	else
		echo "$name: SKIP (neither 'docker compose' nor docker-compose installed)"
		exit 0
	fi
	export MAILROOT_DC="${DC[*]}" # for the Go side
}

# need_busybox installs Debian's busybox-static when it is missing: the NATS
# stand-in gets its wget from it.
need_busybox() {
	if ! command -v busybox >/dev/null 2>&1; then
		if command -v apt-get >/dev/null 2>&1; then
			echo "installing busybox-static"
			DEBIAN_FRONTEND=noninteractive apt-get install -y -q busybox-static >/dev/null ||
				{ apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q busybox-static >/dev/null; }
		fi
	fi
	BUSYBOX=$(command -v busybox) || { echo "needs busybox-static (apt-get install busybox-static)"; exit 1; }
	if ldd "$BUSYBOX" >/dev/null 2>&1; then # ldd fails on a static binary
		echo "$BUSYBOX is dynamically linked; install busybox-static"
		exit 1
	fi
}

# build_images builds mailroot, the sink and nats-server on the host
# (static, same flags as the Dockerfile) and packages them FROM scratch:
# nothing is pulled.
build_images() {
	local tag=$1
	need_busybox
	rm -rf dist && mkdir -p dist/skel/var/spool/mailroot/Pickup dist/skel/var/spool/mailroot/Drop \
		dist/skel/var/spool/mailroot/Badmail dist/skel/var/spool/mailroot/nats dist/skel/tmp
	export CGO_ENABLED=0
	go build -trimpath -ldflags='-s -w -buildid=' -o dist/mailroot .
	go build -trimpath -ldflags='-s -w -buildid=' -o dist/smtpsink ./cmd/smtpsink
	# nats-server from the version pinned in go.mod (Mailroot embeds it too).
	go build -trimpath -ldflags='-s -w -buildid=' -o dist/nats-server github.com/nats-io/nats-server/v2
	cp "$BUSYBOX" dist/busybox
	export DOCKER_BUILDKIT=0 # the legacy builder: what docker-compose 1.29 and a CLI without buildx use
	local spec old
	for spec in "Dockerfile.prebuilt mailroot" "ci/smtpsink.Dockerfile smtpsink" "ci/nats-standin.Dockerfile nats"; do
		set -- $spec
		old=$(docker images -q "mailroot-ci/$2:$tag")
		docker build -q -f "$1" --build-arg BASE=scratch -t "mailroot-ci/$2:$tag" dist >dist/build.log 2>&1 ||
			{ cat dist/build.log; return 1; }
		# The image this tag named before is left dangling: remove it.
		[ -z "$old" ] || [ "$old" = "$(docker images -q "mailroot-ci/$2:$tag")" ] || docker rmi "$old" >/dev/null 2>&1 || true
	done
	export MAILROOT_IMAGE="mailroot-ci/mailroot:$tag" SINK_IMAGE="mailroot-ci/smtpsink:$tag" NATS_IMAGE="mailroot-ci/nats:$tag"
}

# free_port prints a free TCP port on 127.0.0.1.
free_port() {
	python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])' 2>/dev/null ||
		echo $((20000 + RANDOM % 20000))
}

# publish_loopback puts every published port on 127.0.0.1 and a free port.
publish_loopback() {
	MAILROOT_SMTP_PORT=$(free_port)
	SINK_HTTP_PORT=$(free_port)
	export MAILROOT_SMTP_PORT SINK_HTTP_PORT
	export MAILROOT_SMTP_PUBLISH="127.0.0.1:$MAILROOT_SMTP_PORT"
	export MAILROOT_SUBMISSION_PUBLISH="127.0.0.1:$(free_port)"
	export SINK_HTTP_PUBLISH="127.0.0.1:$SINK_HTTP_PORT"
	export MAILROOT_CONFIG_FILE=./ci/e2e.toml
}

# wait_healthy waits until every container of the project is healthy
# (Compose 1.29 has no `up --wait`).
wait_healthy() {
	local tries=${1:-90} bad i
	for ((i = 1; i <= tries; i++)); do
		bad=$(docker ps -a --filter "label=com.docker.compose.project=$COMPOSE_PROJECT_NAME" \
			--format '{{.Names}} {{.Status}}' | grep -v '(healthy)' || true)
		[ -z "$bad" ] && return 0
		sleep 2
	done
	echo "not healthy after $((tries * 2))s:"
	echo "$bad"
	return 1
}

# teardown saves the logs and removes containers, networks and volumes.
teardown() {
	"${DC[@]}" logs --no-color >"dist/$COMPOSE_PROJECT_NAME.log" 2>&1 || true
	"${DC[@]}" down -v --remove-orphans -t 20 >/dev/null 2>&1 || true
}
