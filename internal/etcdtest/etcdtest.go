// Package etcdtest runs a real etcd server in-process for tests, on free
// loopback ports in a temporary directory. It can stop, restart, wipe and
// compact the server, so tests can reproduce the faults a real cluster shows.
package etcdtest

import (
	"context"
	"fmt"
	"net"
	"net/url"
	"os"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
)

// Server is one embedded etcd member. Its address stays the same across
// Stop, Restart and Wipe, as a real server's would.
type Server struct {
	t      testing.TB
	cfg    *embed.Config
	mu     sync.Mutex
	etcd   *embed.Etcd
	client *clientv3.Client
	// Bridge stands between clients and the server: Endpoint goes through it.
	Bridge *Bridge
}

// Start starts a single-member etcd and stops it when the test ends.
func Start(t testing.TB) *Server {
	t.Helper()
	cfg, err := Config(t.TempDir())
	if err != nil {
		t.Fatalf("etcdtest: %v", err)
	}
	b, err := newBridge(cfg.ListenClientUrls[0].Host)
	if err != nil {
		t.Fatalf("etcdtest: bridge: %v", err)
	}
	s := &Server{t: t, cfg: cfg, Bridge: b}
	s.start()
	t.Cleanup(func() {
		s.Stop()
		b.Close()
	})
	return s
}

// Endpoint is the client URL through the bridge, as ETCD_ENDPOINTS would
// name it.
func (s *Server) Endpoint() string { return "http://" + s.Bridge.Addr() }

// Client returns a client for the test's own reads and writes. It talks to
// the server directly, not through the bridge, and is closed when the test
// ends.
func (s *Server) Client() *clientv3.Client {
	s.t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.client == nil {
		s.client = s.newClient(s.cfg.ListenClientUrls[0].String())
	}
	return s.client
}

// BridgedClient returns a new client that goes through the bridge, as the
// code under test should.
func (s *Server) BridgedClient() *clientv3.Client {
	s.t.Helper()
	return s.newClient(s.Endpoint())
}

func (s *Server) newClient(endpoint string) *clientv3.Client {
	s.t.Helper()
	c, err := clientv3.New(clientv3.Config{
		Endpoints:   []string{endpoint},
		DialTimeout: 5 * time.Second,
		Logger:      zap.NewNop(),
	})
	if err != nil {
		s.t.Fatalf("etcdtest: client: %v", err)
	}
	s.t.Cleanup(func() { c.Close() })
	return c
}

func (s *Server) start() {
	s.t.Helper()
	e, err := embed.StartEtcd(s.cfg)
	if err != nil {
		s.t.Fatalf("etcdtest: start: %v", err)
	}
	select {
	case <-e.Server.ReadyNotify():
	case <-time.After(30 * time.Second):
		e.Close()
		s.t.Fatalf("etcdtest: server not ready after 30s")
	}
	s.mu.Lock()
	s.etcd = e
	s.mu.Unlock()
	s.Bridge.Up()
}

// Stop stops the server; clients see the connection refused. Calling it
// twice is harmless.
func (s *Server) Stop() {
	// Dropping the clients first lets the server stop at once instead of
	// waiting for open watch streams to end.
	s.Bridge.Down()
	s.mu.Lock()
	e := s.etcd
	s.etcd = nil
	s.mu.Unlock()
	if e != nil {
		e.Close()
	}
}

// Restart stops the server, if it runs, and starts it again on the same data
// and ports.
func (s *Server) Restart() {
	s.t.Helper()
	s.Stop()
	s.start()
}

// Wipe loses all data, as a restore or a wiped member would: same address
// and cluster ID, revisions start again from 1.
func (s *Server) Wipe() {
	s.t.Helper()
	s.Stop()
	if err := os.RemoveAll(s.cfg.Dir); err != nil {
		s.t.Fatalf("etcdtest: wipe: %v", err)
	}
	s.start()
}

// Compact compacts the history up to the current revision and returns it.
func (s *Server) Compact(ctx context.Context) int64 {
	s.t.Helper()
	c := s.Client()
	resp, err := c.Get(ctx, "compact-probe")
	if err != nil {
		s.t.Fatalf("etcdtest: compact: %v", err)
	}
	rev := resp.Header.Revision
	if _, err := c.Compact(ctx, rev, clientv3.WithCompactPhysical()); err != nil {
		s.t.Fatalf("etcdtest: compact at %d: %v", rev, err)
	}
	return rev
}

// Eventually calls cond until it returns nil or the timeout passes, then
// fails the test with cond's last error.
func Eventually(t testing.TB, timeout time.Duration, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("condition not met after %v: %v", timeout, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Config is a quiet, fast-electing single-member configuration with its data
// in dir and its client and peer URLs on free loopback ports.
func Config(dir string) (*embed.Config, error) {
	cfg := embed.NewConfig()
	cfg.Name = "etcdtest"
	cfg.Dir = dir
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop())
	cfg.LogLevel = "error"
	cfg.TickMs = 10
	cfg.ElectionMs = 100
	client, err := freeURL()
	if err != nil {
		return nil, err
	}
	peer, err := freeURL()
	if err != nil {
		return nil, err
	}
	cfg.ListenClientUrls = []url.URL{client}
	cfg.AdvertiseClientUrls = []url.URL{client}
	cfg.ListenPeerUrls = []url.URL{peer}
	cfg.AdvertisePeerUrls = []url.URL{peer}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	return cfg, nil
}

func freeURL() (url.URL, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return url.URL{}, fmt.Errorf("finding a free port: %w", err)
	}
	defer l.Close()
	return url.URL{Scheme: "http", Host: fmt.Sprintf("127.0.0.1:%d", l.Addr().(*net.TCPAddr).Port)}, nil
}
