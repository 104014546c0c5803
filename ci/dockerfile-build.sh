#!/usr/bin/env bash
# Proves that the shipped Dockerfile builds with the legacy builder, offline:
# stand-in base images replace golang:* (the host's Go toolchain, busybox and
# a module cache holding exactly go.sum's modules, GOPROXY=off) and
# distroless (scratch). Then checks that the binary in the image is byte for
# byte the one `go build` makes on the host. About 2 minutes; not in .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."
. ci/lib.sh
compose_or_skip dockerfile-build
need_busybox
work=$(mktemp -d)
dangling() { docker images -q -f dangling=true | sort; }
dangling >"$work/dangling.before"
cleanup() { # the two images, and the build stage this run left dangling
	docker rmi -f mailroot-ci/mailroot:source mailroot-ci/golang:standin >/dev/null 2>&1 || true
	comm -13 "$work/dangling.before" <(dangling) | xargs -r docker rmi -f >/dev/null 2>&1 || true
	rm -rf "$work"
}
trap cleanup EXIT
root=$work/root
mkdir -p "$root/usr/local" "$root/bin" "$root/tmp" "$root/root" "$root/go/pkg/mod"
cp -a "$(go env GOROOT)" "$root/usr/local/go"
cp "$BUSYBOX" "$root/bin/busybox"
for a in sh mkdir cp rm ls cat env; do ln -s busybox "$root/bin/$a"; done
# The module cache of this module only, filled from the host's cache (no network).
hostcache=$(go env GOMODCACHE)
GOMODCACHE=$root/go/pkg/mod GOPROXY="file://$hostcache/cache/download" GOFLAGS=-mod=mod GOSUMDB=off go mod download
chmod -R u+w "$root/go"
tar -C "$root" -c . | docker import \
	-c 'ENV PATH=/usr/local/go/bin:/bin' -c 'ENV HOME=/root' -c 'ENV GOCACHE=/tmp/gocache' \
	-c 'ENV GOMODCACHE=/go/pkg/mod' -c 'ENV GOPROXY=off' -c 'ENV GOFLAGS=-buildvcs=false' -c 'ENV GOTOOLCHAIN=local' \
	- mailroot-ci/golang:standin >/dev/null
start=$(date +%s)
DOCKER_BUILDKIT=0 docker build -q --build-arg GO_IMAGE=mailroot-ci/golang:standin --build-arg RUNTIME_IMAGE=scratch \
	-t mailroot-ci/mailroot:source . >"$work/build.log" 2>&1 || { cat "$work/build.log"; exit 1; }
echo "dockerfile-build: legacy builder, source build in $(($(date +%s) - start))s"
cid=$(docker create mailroot-ci/mailroot:source)
docker cp "$cid:/usr/local/bin/mailroot" "$work/from-image" && docker rm "$cid" >/dev/null
CGO_ENABLED=0 go build -trimpath -ldflags='-s -w -buildid=' -o "$work/from-host" .
a=$(sha256sum <"$work/from-image" | cut -c1-16) b=$(sha256sum <"$work/from-host" | cut -c1-16)
if [ "$a" != "$b" ]; then
	echo "dockerfile-build: FAIL: image binary $a differs from host build $b"
	exit 1
fi
docker run --rm mailroot-ci/mailroot:source help >/dev/null
echo "dockerfile-build: PASS (binary sha256 $a… identical to the host build)"
