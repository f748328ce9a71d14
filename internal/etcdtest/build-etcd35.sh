#!/usr/bin/env bash
# Builds etcd 3.5.7 from the Go module proxy for the tests against etcd 3.5 (etcdtest.V35).
# 3.5.7 still has etcd-io/etcd#15220 (a progress notification ahead of a reconnected watch),
# which is what the fault tests must survive. The binary goes to $ETCDTEST_ETCD35, by default
# /tmp/etcdtest/etcd-v3.5.7; an existing binary of the right version is kept.
set -euo pipefail
version=v3.5.7
out="${ETCDTEST_ETCD35:-/tmp/etcdtest/etcd-$version}"
if [ -x "$out" ] && "$out" --version 2>/dev/null | grep -q "etcd Version: ${version#v}"; then
  echo "etcd $version already at $out"
  exit 0
fi
mkdir -p "$(dirname "$out")"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cd "$work"
# A throwaway module outside the repository: etcd 3.5's own go.mod files carry replace
# directives, so "go install ...@version" refuses them; requiring the module works.
cat > go.mod <<MOD
module etcdtest-build-etcd35

go 1.19
MOD
printf '//go:build tools\n\npackage tools\n\nimport _ "go.etcd.io/etcd/server/v3"\n' > tools.go
GOFLAGS=-mod=mod go get "go.etcd.io/etcd/server/v3@$version"
CGO_ENABLED=0 go build -trimpath -o "$out.tmp" go.etcd.io/etcd/server/v3
mv "$out.tmp" "$out"
"$out" --version
