package source

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/etcd-config-dispenser/etcd-config-dispenser/internal/etcdtest"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
)

// calls records the etcd requests a client makes, by gRPC method.
type calls struct {
	mu      sync.Mutex
	methods []string
}

func (c *calls) record(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn,
	invoke grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	c.mu.Lock()
	c.methods = append(c.methods, method)
	c.mu.Unlock()
	return invoke(ctx, method, req, reply, cc, opts...)
}

func (c *calls) list() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.methods)
}

// The command waits for the first apply: before it, the source asks etcd for nothing but
// the snapshot's pages (no member list for the log line, no status). The line saying which
// member answered still comes, once.
func TestFirstApplyWaitsForNoRequestButTheSnapshot(t *testing.T) {
	e := etcdtest.Start(t)
	put(t, e.Client(), "/p/a", "1")
	var seen calls
	var logs logBuffer
	cfg := clientv3.Config{Endpoints: []string{e.Endpoint()}, DialOptions: []grpc.DialOption{grpc.WithChainUnaryInterceptor(seen.record)}}
	var before []string
	first := true
	m := &mirror{}
	apply := func(ctx context.Context, b Batch) error {
		if first {
			first, before = false, seen.list()
		}
		return m.apply(ctx, b)
	}
	s := New(Options{Config: cfg, Prefix: "/p/", Logger: logs.logger()})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx, apply) }()
	t.Cleanup(func() { cancel(); <-done })

	etcdtest.Eventually(t, 10*time.Second, func() error { return m.equals(map[string]string{"a": "1"}) })
	for _, method := range before {
		if method != "/etcdserverpb.KV/Range" {
			t.Errorf("%s requested before the first apply, want only the snapshot's reads (all: %v)", method, before)
		}
	}
	etcdtest.Eventually(t, 10*time.Second, func() error {
		if n := strings.Count(logs.String(), "connected to etcd"); n != 1 {
			return fmt.Errorf("%d lines 'connected to etcd', want 1:\n%s", n, logs.String())
		}
		return nil
	})
}

// The first connection is not a reconnect: once the snapshot is applied the source watches
// without listing the prefix again (a check there would only compete with the command's start).
func TestFirstConnectionAsksForNoCheck(t *testing.T) {
	e := etcdtest.Start(t)
	put(t, e.Client(), "/p/a", "1")
	var seen calls
	cfg := clientv3.Config{Endpoints: []string{e.Endpoint()}, DialOptions: []grpc.DialOption{grpc.WithChainUnaryInterceptor(seen.record)}}
	m := &mirror{}
	s := New(Options{Config: cfg, Prefix: "/p/"})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx, m.apply) }()
	t.Cleanup(func() { cancel(); <-done })

	etcdtest.Eventually(t, 10*time.Second, func() error { return m.equals(map[string]string{"a": "1"}) })
	// A change applied through the watch: the watch loop runs, past any check at its start.
	put(t, e.Client(), "/p/a", "2")
	etcdtest.Eventually(t, 10*time.Second, func() error { return m.equals(map[string]string{"a": "2"}) })
	if n := slices.Index(seen.list(), "/etcdserverpb.KV/Range"); n < 0 || slices.Contains(seen.list()[n+1:], "/etcdserverpb.KV/Range") {
		t.Fatalf("requests %v, want one read of the prefix (the snapshot)", seen.list())
	}
}
