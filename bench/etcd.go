package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"

	"github.com/etcd-config-dispenser/etcd-config-dispenser/internal/etcdtest"
)

// server is an etcd member or a grpc-proxy: in-process (embedded etcd 3.6) or a process of
// its own (an etcd binary, such as Debian's 3.4), whose CPU time can then be read.
type server struct {
	endpoint string // host:port
	version  string
	cmd      *exec.Cmd
	embedded *embed.Etcd
	log      *os.File
}

// startEtcd starts etcd with its data in dir: bin's etcd when bin is set, else in-process.
func startEtcd(dir, bin string) (*server, *clientv3.Client, error) {
	cfg, err := etcdtest.Config(dir)
	if err != nil {
		return nil, nil, err
	}
	cfg.QuotaBackendBytes = 8 << 30
	client := cfg.ListenClientUrls[0]
	if bin == "" {
		e, cli, err := etcdtest.Run(cfg)
		if err != nil {
			return nil, nil, err
		}
		return &server{endpoint: client.Host, version: "3.6 (embedded)", embedded: e}, cli, nil
	}
	peer := cfg.ListenPeerUrls[0].String()
	s, err := spawn(dir, bin, "--name=bench", "--data-dir="+filepath.Join(dir, "data"),
		"--listen-client-urls="+client.String(), "--advertise-client-urls="+client.String(),
		"--listen-peer-urls="+peer, "--initial-advertise-peer-urls="+peer, "--initial-cluster=bench="+peer,
		"--quota-backend-bytes=8589934592", "--logger=zap", "--log-level=error")
	if err != nil {
		return nil, nil, err
	}
	s.endpoint = client.Host
	out, _ := exec.Command(bin, "--version").Output()
	s.version, _, _ = strings.Cut(strings.TrimPrefix(string(out), "etcd Version: "), "\n")
	cli, err := s.client()
	if err != nil {
		s.close()
		return nil, nil, err
	}
	return s, cli, nil
}

// startProxy starts `bin grpc-proxy start` in front of the etcd at endpoint.
func startProxy(dir, bin, endpoint string) (*server, *clientv3.Client, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, nil, err
	}
	addr := l.Addr().String()
	l.Close()
	s, err := spawn(dir, bin, "grpc-proxy", "start", "--endpoints="+endpoint, "--listen-addr="+addr,
		"--advertise-client-url="+addr, "--data-dir="+filepath.Join(dir, "data"))
	if err != nil {
		return nil, nil, err
	}
	s.endpoint, s.version = addr, "grpc-proxy"
	cli, err := s.client()
	if err != nil {
		s.close()
		return nil, nil, err
	}
	return s, cli, nil
}

func spawn(dir, bin string, args ...string) (*server, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	log, err := os.Create(filepath.Join(dir, "log"))
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = log, log
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		log.Close()
		return nil, err
	}
	return &server{cmd: cmd, log: log}, nil
}

// client waits until the server answers a read, up to 30 s.
func (s *server) client() (*clientv3.Client, error) {
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{s.endpoint}, Logger: zap.NewNop()})
	if err != nil {
		return nil, err
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, err := cli.Get(ctx, "/bench-ready")
		cancel()
		if err == nil {
			return cli, nil
		}
		if time.Now().After(deadline) {
			cli.Close()
			b, _ := os.ReadFile(s.log.Name())
			return nil, fmt.Errorf("%s not ready after 30 s: %v\n%s", s.endpoint, err, b)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// pid is the process to read CPU time from (ourselves when etcd runs in-process).
func (s *server) pid() int {
	if s.cmd == nil {
		return os.Getpid()
	}
	return s.cmd.Process.Pid
}

func (s *server) close() {
	if s.embedded != nil {
		s.embedded.Close()
		return
	}
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { _ = s.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		_ = s.cmd.Process.Kill()
		<-done
	}
	s.log.Close()
}

// watchGauges reads etcd's watch stream and watcher gauges from its /metrics.
func watchGauges(endpoint string) (streams, watchers int, err error) {
	resp, err := http.Get("http://" + endpoint + "/metrics")
	if err != nil {
		return 0, 0, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, 0, err
	}
	found := 0
	for _, line := range bytes.Split(b, []byte("\n")) {
		name, value, ok := strings.Cut(string(line), " ")
		if !ok {
			continue
		}
		v, _ := strconv.ParseFloat(value, 64)
		switch name {
		case "etcd_debugging_mvcc_watch_stream_total":
			streams, found = int(v), found+1
		case "etcd_debugging_mvcc_watcher_total":
			watchers, found = int(v), found+1
		}
	}
	if found < 2 {
		return 0, 0, errors.New("no watch gauges in etcd's /metrics")
	}
	return streams, watchers, nil
}
