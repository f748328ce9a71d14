VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)

.PHONY: build test demo bench bench-smoke
# grpcnotrace leaves out gRPC's request tracing (golang.org/x/net/trace, html/template), which the
# dispenser never uses: a smaller binary, and its pages are most of the idle RSS.
build:
	CGO_ENABLED=0 go build -tags grpcnotrace -trimpath -ldflags "-s -w -X main.version=$(VERSION)" -o etcd-config-dispenser .

test:
	go test -race -count=1 -timeout 12m ./...

demo:
	go run ./cmd/demo

bench:
	go run ./bench

# A few seconds with tiny sizes: checks that the benchmark works (CI), no thresholds.
bench-smoke:
	go run ./bench -smoke
