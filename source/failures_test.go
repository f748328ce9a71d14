package source

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/etcd-config-dispenser/etcd-config-dispenser/internal/etcdtest"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// recorder is an Observer that keeps what it was told.
type recorder struct {
	mu          sync.Mutex
	etcdErrors  []error
	applyErrors []string // stage: error
}

func (r *recorder) Applied(int64)         {}
func (r *recorder) EtcdRevision(int64)    {}
func (r *recorder) Watching(bool, string) {}
func (r *recorder) Resync(string)         {}
func (r *recorder) EtcdError(err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.etcdErrors = append(r.etcdErrors, err)
}
func (r *recorder) ApplyFailed(stage string, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.applyErrors = append(r.applyErrors, stage+": "+err.Error())
}

func (r *recorder) counts() (etcd, apply int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.etcdErrors), len(r.applyErrors)
}

// logBuffer collects log lines for assertions.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func (l *logBuffer) logger() *slog.Logger {
	return slog.New(slog.NewTextHandler(l, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// A batch the target cannot take (full disk, failing template or check) is a
// local failure: it is retried, but never logged, counted or reported as an
// etcd one, and the connection is not announced again at every retry.
func TestAnApplyFailureIsNotBlamedOnEtcd(t *testing.T) {
	e := etcdtest.Start(t)
	c := e.Client()
	put(t, c, "/p/a", "1")
	var logs logBuffer
	obs := &recorder{}
	m := &mirror{}
	diskFull := fmt.Errorf("writing version 2: %w", errors.New("no space left on device"))
	var mu sync.Mutex
	failures := 0
	apply := func(ctx context.Context, b Batch) error {
		mu.Lock()
		defer mu.Unlock()
		if failures < 4 {
			failures++
			return diskFull
		}
		return m.apply(ctx, b)
	}
	s := New(Options{Client: e.BridgedClient(), Prefix: "/p", Logger: logs.logger(), Observer: obs})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx, apply) }()
	t.Cleanup(func() { cancel(); <-done })

	etcdtest.Eventually(t, 30*time.Second, func() error {
		if _, n := obs.counts(); n < 1 {
			return errors.New("no apply failure reported")
		}
		var ae *ApplyError
		if err := s.LastError(); !errors.As(err, &ae) || !errors.Is(err, diskFull) {
			return fmt.Errorf("last error %v, want the apply failure", err)
		}
		return nil
	})
	etcdtest.Eventually(t, 30*time.Second, func() error { return m.equals(map[string]string{"a": "1"}) })
	etcdErrs, applyErrs := obs.counts()
	log := logs.String()
	if etcdErrs != 0 {
		t.Errorf("%d etcd errors reported for apply failures: %v", etcdErrs, obs.etcdErrors)
	}
	if applyErrs != 4 {
		t.Errorf("%d apply failures reported, want 4", applyErrs)
	}
	if strings.Contains(log, "etcd unreachable") || strings.Contains(log, "etcd still failing") {
		t.Errorf("apply failures blamed on etcd:\n%s", log)
	}
	if n := strings.Count(log, "connected to etcd"); n != 1 {
		t.Errorf("%d lines 'connected to etcd' for one connection, want 1:\n%s", n, log)
	}
	if !strings.Contains(log, "no space left on device") {
		t.Errorf("the apply failure is not logged with its cause:\n%s", log)
	}
	if s.LastError() != nil {
		t.Errorf("last error %v after success", s.LastError())
	}
}

// Every kind of connection failure is reported with its real cause, not only
// "context deadline exceeded", with and without credentials.
func TestConnectionFailuresNameTheirCause(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	refused := l.Addr().String()
	l.Close()
	web := httptest.NewServer(http.NotFoundHandler())
	defer web.Close()
	plain := etcdtest.Start(t)
	for _, tc := range []struct {
		name, endpoint, cause string
		tls                   bool
	}{
		{"refused", "http://" + refused, "connection refused", false},
		{"plain HTTP server", web.URL, "HTTP/1.1", false},
		{"TLS to a plaintext etcd", "https://" + plain.Bridge.Addr(), "handshake", true},
		{"unknown host", "http://etcd.invalid:2379", "etcd.invalid", false},
	} {
		for _, auth := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/auth=%v", tc.name, auth), func(t *testing.T) {
				cfg := clientv3.Config{Endpoints: []string{tc.endpoint}, Logger: zap.NewNop()}
				if tc.tls {
					cfg.TLS = &tls.Config{InsecureSkipVerify: true}
				}
				if auth {
					cfg.Username, cfg.Password = "u", "p"
				}
				s := New(Options{Config: cfg, Prefix: "/p", RequestTimeout: 500 * time.Millisecond,
					Logger: slog.New(slog.DiscardHandler)})
				ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
				defer cancel()
				s.Run(ctx, func(context.Context, Batch) error { return errors.New("never reached") })
				err := s.LastError()
				if err == nil || !strings.Contains(err.Error(), tc.cause) {
					t.Fatalf("last error %v, want its cause (%q)", err, tc.cause)
				}
			})
		}
	}
}

// When the start timeout ends the first attempt, before any failure was
// recorded, the cause is still known.
func TestTheFirstAttemptCutShortStillNamesItsCause(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	refused := l.Addr().String()
	l.Close()
	cfg := clientv3.Config{Endpoints: []string{refused}, Logger: zap.NewNop()}
	s := New(Options{Config: cfg, Prefix: "/p", Logger: slog.New(slog.DiscardHandler)})
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond) // below RequestTimeout
	defer cancel()
	s.Run(ctx, func(context.Context, Batch) error { return nil })
	if err := s.LastError(); err == nil || !strings.Contains(err.Error(), "connection refused") {
		t.Fatalf("last error %v, want the refused connection", err)
	}
}
