// Package etcdtest runs a real etcd server in-process for tests, on free
// loopback ports in a temporary directory. It can stop, restart, wipe and
// compact the server, so tests can reproduce the faults a real cluster shows.
package etcdtest

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
)

// Server is one etcd member, embedded (3.6) or an external etcd program (StartVersion). Its
// address stays the same across Stop, Restart and Wipe, as a real server's would.
type Server struct {
	t      testing.TB
	cfg    *embed.Config
	bin    string // the etcd program, or "" for the embedded server
	line   Version
	mu     sync.Mutex
	etcd   *embed.Etcd
	proc   *process
	client *clientv3.Client
	// Bridge stands between clients and the server: Endpoint goes through it.
	Bridge *Bridge
	// TLS is set when the server requires TLS with client certificates.
	TLS *Certs
}

// Option changes how Start sets the server up.
type Option func(*embed.Config, *Server) error

// WithTLS serves clients over TLS only and requires a client certificate
// signed by a throwaway CA (Server.TLS).
func WithTLS() Option {
	return func(cfg *embed.Config, s *Server) error {
		certs, err := NewCerts(s.t.TempDir())
		if err != nil {
			return err
		}
		s.TLS = certs
		u := cfg.ListenClientUrls[0]
		u.Scheme = "https"
		cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{u}, []url.URL{u}
		cfg.ClientTLSInfo.CertFile = certs.ServerCertFile
		cfg.ClientTLSInfo.KeyFile = certs.ServerKeyFile
		cfg.ClientTLSInfo.TrustedCAFile = certs.CAFile
		cfg.ClientTLSInfo.ClientCertAuth = true
		return nil
	}
}

// Start starts a single-member embedded etcd and stops it when the test ends.
func Start(t testing.TB, opts ...Option) *Server {
	t.Helper()
	return start(t, "", opts...)
}

// start starts the program bin as the server, or the embedded etcd when bin is "".
func start(t testing.TB, bin string, opts ...Option) *Server {
	t.Helper()
	cfg, err := Config(filepath.Join(t.TempDir(), "data"))
	if err != nil {
		t.Fatalf("etcdtest: %v", err)
	}
	s := &Server{t: t, cfg: cfg, bin: bin, line: V36}
	for _, o := range opts {
		if err := o(cfg, s); err != nil {
			t.Fatalf("etcdtest: %v", err)
		}
	}
	b, err := newBridge(cfg.ListenClientUrls[0].Host)
	if err != nil {
		t.Fatalf("etcdtest: bridge: %v", err)
	}
	s.Bridge = b
	s.start()
	t.Cleanup(func() {
		s.Stop()
		b.Close()
	})
	return s
}

// Endpoint is the client URL through the bridge, as ETCD_ENDPOINTS would
// name it.
func (s *Server) Endpoint() string {
	return s.cfg.ListenClientUrls[0].Scheme + "://" + s.Bridge.Addr()
}

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

func (s *Server) newClient(endpoint string, userAndPassword ...string) *clientv3.Client {
	s.t.Helper()
	return s.newClientOf([]string{endpoint}, userAndPassword...)
}

func (s *Server) newClientOf(endpoints []string, userAndPassword ...string) *clientv3.Client {
	s.t.Helper()
	cfg := clientv3.Config{
		Endpoints:   endpoints,
		DialTimeout: 5 * time.Second,
		Logger:      zap.NewNop(),
	}
	if len(userAndPassword) == 2 {
		cfg.Username, cfg.Password = userAndPassword[0], userAndPassword[1]
	}
	if s.TLS != nil {
		var err error
		if cfg.TLS, err = s.TLS.ClientTLS(); err != nil {
			s.t.Fatalf("etcdtest: %v", err)
		}
	}
	c, err := clientv3.New(cfg)
	if err != nil {
		s.t.Fatalf("etcdtest: client: %v", err)
	}
	s.t.Cleanup(func() { c.Close() })
	return c
}

func (s *Server) start() {
	s.t.Helper()
	if s.bin != "" {
		s.startProcess()
		return
	}
	s.ready(s.launch())
}

// launch starts the server without waiting for it to be ready, which a
// cluster member is only once a quorum of members runs.
func (s *Server) launch() *embed.Etcd {
	s.t.Helper()
	e, err := embed.StartEtcd(s.cfg)
	if err != nil {
		s.t.Fatalf("etcdtest: start: %v", err)
	}
	return e
}

func (s *Server) ready(e *embed.Etcd) {
	s.t.Helper()
	if err := waitReady(e); err != nil {
		s.t.Fatalf("etcdtest: %v", err)
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
	e, p := s.etcd, s.proc
	s.etcd, s.proc = nil, nil
	s.mu.Unlock()
	if e != nil {
		e.Close()
	}
	if p != nil {
		stopProcess(p)
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
	_, err = c.Compact(ctx, rev, clientv3.WithCompactPhysical())
	if err != nil && !errors.Is(err, rpctypes.ErrCompacted) { // compacted there already: fine
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

// Run starts etcd with cfg, outside tests (the demo, the benchmark), and
// returns it once it serves, with a client of it.
func Run(cfg *embed.Config) (*embed.Etcd, *clientv3.Client, error) {
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return nil, nil, err
	}
	if err := waitReady(e); err != nil {
		return nil, nil, err
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{cfg.ListenClientUrls[0].String()}, Logger: zap.NewNop()})
	if err != nil {
		e.Close()
		return nil, nil, err
	}
	return e, cli, nil
}

// waitReady waits until e serves; after 30s it stops e and gives up.
func waitReady(e *embed.Etcd) error {
	select {
	case <-e.Server.ReadyNotify():
		return nil
	case <-time.After(30 * time.Second):
		e.Close()
		return errors.New("etcd not ready after 30s")
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
	// A port the kernel hands out for listening (port 0) comes from the ephemeral range, which
	// every outgoing connection of every process also draws from: between this check and
	// etcd's own listen, a client socket of a test running in parallel may take it. Ports
	// below the ephemeral range (32768 on Linux) are only ever taken by listeners.
	for range 1000 {
		port := 20000 + rand.IntN(12000)
		l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err != nil {
			continue
		}
		l.Close()
		return url.URL{Scheme: "http", Host: fmt.Sprintf("127.0.0.1:%d", port)}, nil
	}
	return url.URL{}, errors.New("finding a free port: none free in 20000-32000")
}

// EnableAuth turns authentication on with a root user for the test's own
// client and a user that may only read the keys under prefix. It returns
// that user's name and password.
func (s *Server) EnableAuth(prefix string) (user, password string) {
	s.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c := s.Client()
	user, password = "dispenser", "s3cret-Pa55word"
	steps := []func() error{
		func() error { _, err := c.UserAdd(ctx, "root", "root-pw"); return err },
		func() error { _, err := c.UserGrantRole(ctx, "root", "root"); return err },
		func() error { _, err := c.RoleAdd(ctx, "reader"); return err },
		func() error {
			_, err := c.RoleGrantPermission(ctx, "reader", prefix, clientv3.GetPrefixRangeEnd(prefix),
				clientv3.PermissionType(clientv3.PermRead))
			return err
		},
		func() error { _, err := c.UserAdd(ctx, user, password); return err },
		func() error { _, err := c.UserGrantRole(ctx, user, "reader"); return err },
		func() error { _, err := c.AuthEnable(ctx); return err },
	}
	for i, step := range steps {
		if err := step(); err != nil {
			s.t.Fatalf("etcdtest: enabling auth, step %d: %v", i, err)
		}
	}
	root := s.newClient(s.cfg.ListenClientUrls[0].String(), "root", "root-pw")
	s.mu.Lock()
	s.client = root
	s.mu.Unlock()
	return user, password
}
