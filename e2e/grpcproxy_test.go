package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/etcd-config-dispenser/etcd-config-dispenser/internal/etcdtest"
)

// etcdBinary is Debian's etcd 3.4, whose `grpc-proxy start` is the proxy users run per host.
const etcdBinary = "/usr/bin/etcd"

// grpcProxy starts `etcd grpc-proxy start` in front of e (through its bridge, so that
// Bridge.Down cuts the proxy off etcd) and returns the proxy's address.
func grpcProxy(t *testing.T, e *etcdtest.Server) string {
	t.Helper()
	if _, err := os.Stat(etcdBinary); err != nil {
		t.Skipf("no %s for its grpc-proxy (apt-get install etcd-server): %v", etcdBinary, err)
	}
	addr := freeAddr(t)
	log := &syncBuffer{}
	// --advertise-client-url is what the proxy answers to MemberList: the client's endpoint
	// auto-sync (every 5 min) then keeps the dispenser on the proxy.
	cmd := exec.Command(etcdBinary, "grpc-proxy", "start", "--endpoints="+e.Endpoint(), "--listen-addr="+addr,
		"--advertise-client-url="+addr, "--data-dir="+t.TempDir())
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		_ = cmd.Wait()
		if t.Failed() {
			t.Logf("grpc-proxy output:\n%s", log.String())
		}
	})
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{addr}, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	etcdtest.Eventually(t, 30*time.Second, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_, err := cli.Get(ctx, "/ready")
		return err
	})
	return addr
}

// Through etcd's grpc-proxy, as on a host that runs many dispensers: transactions arrive whole,
// a lost etcd is noticed (RequireLeader, revision check) and the dispenser catches up without a
// signal for nothing, and a compaction while cut off and a wiped etcd are both resynced.
func TestThroughGRPCProxy(t *testing.T) {
	e := etcdtest.Start(t)
	c := e.Client()
	proxy := grpcProxy(t, e)
	txn(t, c, "/p/a", "1", "/p/b", "1")
	d := startAs(t, e, runOpts{Env: []string{"ETCD_ENDPOINTS=" + proxy}}, "reader", "--prefix=/p")
	d.waitEvent("start", func(ev event) bool { return ev.What == "start" && ev.Files["a"] == "1" })

	// A transaction is one version and one signal.
	txn(t, c, "/p/a", "2", "/p/b", "2")
	evs := d.waitEvent("a=2", func(ev event) bool { return ev.Files["a"] == "2" })
	for _, ev := range evs {
		if ev.What == "hangup" && ev.Files["a"] != ev.Files["b"] {
			t.Fatalf("a torn transaction through the proxy: %v", ev.Files)
		}
	}

	// etcd lost behind the proxy: the dispenser notices and says so, then catches up.
	e.Bridge.Down()
	etcdtest.Eventually(t, 30*time.Second, func() error {
		if len(d.stderr.lines("etcd unreachable")) == 0 {
			return fmt.Errorf("the dispenser has not noticed that etcd is gone behind the proxy")
		}
		return nil
	})
	txn(t, c, "/p/a", "3")
	e.Bridge.Up()
	d.waitEvent("a=3", func(ev event) bool { return ev.What == "hangup" && ev.Files["a"] == "3" })

	// Compacted while cut off: the vanished key's file goes.
	e.Bridge.Down()
	if _, err := c.Delete(context.Background(), "/p/b"); err != nil {
		t.Fatal(err)
	}
	txn(t, c, "/p/a", "4")
	e.Compact(context.Background())
	e.Bridge.Up()
	etcdtest.Eventually(t, 30*time.Second, equalTree(t, d.target, map[string]string{"a": "4"}))
	d.waitEvent("the compaction resync", func(ev event) bool {
		return ev.What == "hangup" && ev.Files["a"] == "4" && len(ev.Files) == 1
	})

	// Wiped: revisions restart low, the revision check sees it, everything is read again.
	e.Wipe()
	txn(t, c, "/p/new", "y")
	etcdtest.Eventually(t, 30*time.Second, equalTree(t, d.target, map[string]string{"new": "y"}))
	if len(d.stderr.lines("resync")) == 0 {
		t.Fatalf("no log line about the resync:\n%s", d.stderr.String())
	}
	d.waitEvent("the wipe resync", func(ev event) bool { return ev.What == "hangup" && ev.Files["new"] == "y" })
	if n := d.finalSignals(); n != 4 {
		t.Fatalf("%d signals, want 4: a=2, a=3, the compaction resync, the wipe resync; the child saw %+v", n, d.events())
	}
}

// The proxy answers MemberList with its own --advertise-client-url, so the etcd client's
// endpoint auto-sync keeps dispensers on the proxy. Without that flag it answers with etcd's
// members, and auto-sync would move every dispenser off the proxy within 5 minutes.
func TestGRPCProxyMemberListNamesTheProxy(t *testing.T) {
	e := etcdtest.Start(t)
	proxy := grpcProxy(t, e)
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{proxy}, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	ml, err := cli.MemberList(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var urls []string
	for _, m := range ml.Members {
		urls = append(urls, m.ClientURLs...)
	}
	if strings.Join(urls, ",") != proxy {
		t.Fatalf("MemberList through the proxy names %v, want only the proxy %s", urls, proxy)
	}
}

// Progress requests through the proxy: etcd's grpc-proxy (3.4 to 3.6) drops them, so writes
// outside the prefix leave the watch lag metric above 0 until the next change under the prefix
// (or etcd's own progress notification, every 10 minutes by default). That must not make the
// dispenser unready, and the next change brings the lag back to 0.
func TestGRPCProxyWatchLagAfterWritesOutsideThePrefix(t *testing.T) {
	e := etcdtest.Start(t)
	c := e.Client()
	proxy := grpcProxy(t, e)
	txn(t, c, "/p/a", "1")
	addr := freeAddr(t)
	base := "http://" + addr
	d := startAs(t, e, runOpts{Env: []string{"ETCD_ENDPOINTS=" + proxy}}, "reader", "--prefix=/p", "--listen="+addr)
	d.waitEvent("start", func(ev event) bool { return ev.What == "start" })
	var rev int64
	for i := range 5 {
		rev = txn(t, c, fmt.Sprintf("/other/%d", i), "x")
	}
	etcdtest.Eventually(t, 10*time.Second, func() error {
		if seen := scrape(t, base)["etcd_config_dispenser_etcd_revision"]; seen < float64(rev) {
			return fmt.Errorf("the dispenser has seen etcd revision %v, not yet %d", seen, rev)
		}
		return nil
	})
	if err := expectStatus(base+"/readyz", 200); err != nil {
		t.Fatalf("a lag from writes outside the prefix made the dispenser unready: %v", err)
	}
	rev = txn(t, c, "/p/a", "2")
	etcdtest.Eventually(t, 10*time.Second, func() error {
		m := scrape(t, base)
		if lag := m["etcd_config_dispenser_watch_lag_revisions"]; lag != 0 || m["etcd_config_dispenser_applied_revision"] < float64(rev) {
			return fmt.Errorf("watch lag %v revisions (etcd %v, applied %v)", lag, m["etcd_config_dispenser_etcd_revision"],
				m["etcd_config_dispenser_applied_revision"])
		}
		return nil
	})
}

// Snapshot pages above 1.5 MiB (the proxy's documented --max-send-bytes default) pass through
// the proxy: 600 keys of 4 KiB, a certificate chain each, are read 500 keys (2 MB) to a page.
func TestGRPCProxyLargePages(t *testing.T) {
	e := etcdtest.Start(t)
	c := e.Client()
	proxy := grpcProxy(t, e)
	want := map[string]string{}
	for i := 0; i < 600; i += 100 {
		var kv []string
		for j := i; j < i+100; j++ {
			k := fmt.Sprintf("cert%03d.pem", j)
			want[k] = strings.Repeat(fmt.Sprintf("%03d", j), 4096/3)
			kv = append(kv, "/p/"+k, want[k])
		}
		txn(t, c, kv...)
	}
	d := startAs(t, e, runOpts{Env: []string{"ETCD_ENDPOINTS=" + proxy}}, "reader", "--prefix=/p")
	etcdtest.Eventually(t, 30*time.Second, equalTree(t, d.target, want))
}

// Quorum lost behind the proxy: the member the proxy talks to is up but has no leader. The
// dispenser notices, keeps its files, and follows again once quorum is back. Directly, the watch
// ends with "no leader" (RequireLeader) within seconds; through etcd 3.4's proxy it did not within
// 30 s (tried with --check-interval=1h), so here the revision check is what notices.
func TestGRPCProxyQuorumLost(t *testing.T) {
	c := etcdtest.StartCluster(t, 3)
	cli := c.Client()
	txn(t, cli, "/p/a", "1")
	proxy := grpcProxy(t, c.Members[0])
	d := startAs(t, c.Members[0], runOpts{Env: []string{"ETCD_ENDPOINTS=" + proxy}}, "reader", "--prefix=/p")
	d.waitEvent("start", func(ev event) bool { return ev.What == "start" })

	c.Members[1].Stop()
	c.Members[2].Stop()
	etcdtest.Eventually(t, 30*time.Second, func() error {
		if len(d.stderr.lines("etcd unreachable")) == 0 {
			return fmt.Errorf("the dispenser has not noticed the lost quorum behind the proxy")
		}
		return nil
	})
	if got := tree(t, d.target); got["a"] != "1" {
		t.Fatalf("files changed during the outage: %v", got)
	}
	c.Members[1].Restart()
	c.Members[2].Restart()
	txn(t, cli, "/p/a", "2")
	d.waitEvent("a=2", func(ev event) bool { return ev.What == "hangup" && ev.Files["a"] == "2" })
	if n := d.finalSignals(); n != 1 {
		t.Fatalf("%d signals, want 1: for the change, none for the outage", n)
	}
	t.Logf("how the loss was noticed: %q", d.stderr.lines("etcd unreachable"))
}
