package etcdtest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// Version is an etcd release line the tests run against.
type Version string

// The etcd versions users run: 3.4 and 3.5 as external binaries (both affected by
// etcd-io/etcd#15220 at the releases we test), 3.6 embedded in the test process.
const (
	V34 Version = "3.4"
	V35 Version = "3.5"
	V36 Version = "3.6"
)

// Versions lists every version the fault tests run against, oldest first.
func Versions() []Version { return []Version{V34, V35, V36} }

// Binary returns the path of the etcd binary for v (empty for the embedded 3.6) and where it
// came from. ETCDTEST_ETCD34 and ETCDTEST_ETCD35 override the defaults: Debian's
// /usr/bin/etcd (package etcd-server, 3.4.23) and the 3.5.7 that build-etcd35.sh builds.
func Binary(v Version) (path, env string) {
	switch v {
	case V34:
		return envOr("ETCDTEST_ETCD34", "/usr/bin/etcd"), "ETCDTEST_ETCD34"
	case V35:
		return envOr("ETCDTEST_ETCD35", DefaultEtcd35), "ETCDTEST_ETCD35"
	}
	return "", ""
}

// DefaultEtcd35 is where build-etcd35.sh puts its binary unless ETCDTEST_ETCD35 says otherwise.
const DefaultEtcd35 = "/tmp/etcdtest/etcd-v3.5.7"

func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

// StartVersion starts a single-member etcd of version v, with the same API as Start. A
// missing binary skips the test with the reason, or fails it under CI=true, where every
// version must be tested.
func StartVersion(t testing.TB, v Version, opts ...Option) *Server {
	t.Helper()
	bin, env := Binary(v)
	if bin == "" {
		s := Start(t, opts...)
		s.line = v
		return s
	}
	if _, err := os.Stat(bin); err != nil {
		msg := fmt.Sprintf("etcd %s binary: %v (set %s, or run internal/etcdtest/build-etcd35.sh; on Debian apt-get install etcd-server for 3.4)", v, err, env)
		if os.Getenv("CI") == "true" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	s := start(t, bin, opts...)
	s.line = v
	return s
}

// EachVersion runs f as one subtest per etcd version (3.4, 3.5, 3.6), each with its own server.
func EachVersion(t *testing.T, f func(t *testing.T, e *Server), opts ...Option) {
	t.Helper()
	for _, v := range Versions() {
		t.Run("etcd"+string(v), func(t *testing.T) {
			f(t, StartVersion(t, v, opts...))
		})
	}
}

// Line is the release line the server was started as (V36 for Start).
func (s *Server) Line() Version { return s.line }

// Version reports the version of the running server.
func (s *Server) Version() string {
	s.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := s.Client().Status(ctx, s.cfg.ListenClientUrls[0].Host)
	if err != nil {
		s.t.Fatalf("etcdtest: status: %v", err)
	}
	return resp.Version
}

// process is an etcd server run as a separate program.
type process struct {
	cmd  *exec.Cmd
	done chan struct{}
}

// args are the flags that give the external etcd the configuration of the embedded one.
func (s *Server) args() []string {
	c := s.cfg
	a := []string{
		"--name=" + c.Name,
		"--data-dir=" + c.Dir,
		"--listen-client-urls=" + c.ListenClientUrls[0].String(),
		"--advertise-client-urls=" + c.AdvertiseClientUrls[0].String(),
		"--listen-peer-urls=" + c.ListenPeerUrls[0].String(),
		"--initial-advertise-peer-urls=" + c.AdvertisePeerUrls[0].String(),
		"--initial-cluster=" + c.InitialCluster,
		"--initial-cluster-token=" + c.InitialClusterToken,
		"--heartbeat-interval=" + strconv.Itoa(int(c.TickMs)),
		"--election-timeout=" + strconv.Itoa(int(c.ElectionMs)),
		"--logger=zap",
		"--log-level=warn",
	}
	if c.ClientTLSInfo.CertFile != "" {
		a = append(a, "--cert-file="+c.ClientTLSInfo.CertFile, "--key-file="+c.ClientTLSInfo.KeyFile,
			"--trusted-ca-file="+c.ClientTLSInfo.TrustedCAFile,
			"--client-cert-auth="+strconv.FormatBool(c.ClientTLSInfo.ClientCertAuth))
	}
	return a
}

// startProcess runs the binary and waits until it serves.
func (s *Server) startProcess() {
	s.t.Helper()
	logPath := filepath.Join(filepath.Dir(s.cfg.Dir), "etcd.log")
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		s.t.Fatalf("etcdtest: %v", err)
	}
	defer logf.Close()
	cmd := exec.Command(s.bin, s.args()...)
	cmd.Stdout, cmd.Stderr = logf, logf
	// etcd reads ETCD_* variables as flags: the tests' own ETCD_ENDPOINTS must not reach it.
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "ETCD_") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	// Never outlive the test binary, even when it is killed.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		s.t.Fatalf("etcdtest: starting %s: %v", s.bin, err)
	}
	p := &process{cmd: cmd, done: make(chan struct{})}
	go func() { _ = cmd.Wait(); close(p.done) }()
	if err := s.waitServing(p); err != nil {
		stopProcess(p)
		log, _ := os.ReadFile(logPath)
		s.t.Fatalf("etcdtest: %s: %v\n%s", s.bin, err, tail(log, 4000))
	}
	s.mu.Lock()
	s.proc = p
	s.mu.Unlock()
	s.Bridge.Up()
}

// waitServing waits until a read succeeds or is refused for lack of credentials (auth is on):
// either way the server answers requests.
func (s *Server) waitServing(p *process) error {
	cfg := clientv3.Config{Endpoints: []string{s.cfg.ListenClientUrls[0].String()}, Logger: zap.NewNop()}
	if s.TLS != nil {
		var err error
		if cfg.TLS, err = s.TLS.ClientTLS(); err != nil {
			return err
		}
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		select {
		case <-p.done:
			return fmt.Errorf("exited: %v", p.cmd.ProcessState)
		default:
		}
		if time.Now().After(deadline) {
			return errors.New("not serving after 30s")
		}
		conn, err := net.DialTimeout("tcp", s.cfg.ListenClientUrls[0].Host, time.Second)
		if err != nil {
			time.Sleep(20 * time.Millisecond)
			continue
		}
		conn.Close()
		c, err := clientv3.New(cfg)
		if err != nil {
			return err
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, err = c.Get(ctx, "etcdtest-ready")
		cancel()
		c.Close()
		if err == nil || errors.Is(err, rpctypes.ErrUserEmpty) || errors.Is(err, rpctypes.ErrPermissionDenied) ||
			errors.Is(err, rpctypes.ErrInvalidAuthToken) {
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// stopProcess stops etcd as a service manager would: SIGTERM, then SIGKILL after 10s.
func stopProcess(p *process) {
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

func tail(b []byte, n int) []byte {
	if len(b) > n {
		return b[len(b)-n:]
	}
	return b
}
