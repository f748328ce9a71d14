package e2e

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/etcd-config-dispenser/etcd-config-dispenser/internal/etcdtest"
)

// With a username and password, etcd unreachable at start is retried with
// backoff as without: clientv3 authenticates when the client is created, and
// that must not turn into an exit after its 15 s dial timeout.
func TestAuthWithEtcdUnreachableAtStartIsRetried(t *testing.T) {
	e := etcdtest.Start(t)
	user, password := e.EnableAuth("/p/")
	txn(t, e.Client(), "/p/a", "1")
	e.Bridge.Down()
	d := startAs(t, e, runOpts{Env: []string{"ETCD_USERNAME=" + user, "ETCD_PASSWORD=" + password}},
		"reader", "--prefix=/p")
	etcdtest.Eventually(t, 10*time.Second, func() error {
		if len(d.stderr.lines("etcd unreachable", "retrying")) == 0 {
			return fmt.Errorf("no line saying etcd is unreachable and retried:\n%s", d.stderr.String())
		}
		return nil
	})
	// Past clientv3's dial timeout of 15 s: still waiting for etcd.
	select {
	case <-d.done:
		t.Fatalf("exited with %d while etcd was unreachable:\n%s", d.cmd.ProcessState.ExitCode(), d.stderr.String())
	case <-time.After(17 * time.Second):
	}
	e.Bridge.Up()
	d.waitEvent("start", func(ev event) bool { return ev.What == "start" && ev.Files["a"] == "1" })
}

// A check that fails is the target's problem: named as such in the log, the
// metrics, /readyz and the final line, never as etcd's; and the connection,
// which works, is announced once.
func TestAFailingCheckIsNotBlamedOnEtcd(t *testing.T) {
	e := etcdtest.Start(t)
	txn(t, e.Client(), "/p/a", "1")
	addr := freeAddr(t)
	d := start(t, e, "reader", "--prefix=/p", "--check-cmd=/bin/false", "--listen="+addr, "--start-timeout=4s")
	base := "http://" + addr
	etcdtest.Eventually(t, 15*time.Second, func() error {
		resp, err := http.Get(base + "/readyz")
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != 503 || !strings.Contains(string(body), "applying to the target failed") {
			return fmt.Errorf("/readyz %d %q, want 503 naming the apply failure", resp.StatusCode, body)
		}
		return nil
	})
	metrics := scrape(t, base)
	if metrics["etcd_config_dispenser_etcd_errors_total"] != 0 {
		t.Errorf("etcd_errors_total %v for a failing check", metrics["etcd_config_dispenser_etcd_errors_total"])
	}
	if code := d.wait(30 * time.Second); code != 1 {
		t.Fatalf("exit code %d, want 1", code)
	}
	log := d.stderr.String()
	if strings.Contains(log, "etcd unreachable") || strings.Contains(log, "last_error=<nil>") {
		t.Errorf("a failing check blamed on etcd:\n%s", log)
	}
	if n := strings.Count(log, "connected to etcd"); n != 1 {
		t.Errorf("%d lines 'connected to etcd', want 1:\n%s", n, log)
	}
	if len(d.stderr.lines("first sync did not succeed", "applying to the target failed")) != 1 {
		t.Errorf("the final line does not name the apply failure:\n%s", log)
	}
}

// Whatever is wrong with the connection, the final line says what, not only
// that time ran out.
func TestConnectionFailuresNameTheirCause(t *testing.T) {
	e := etcdtest.Start(t) // plaintext
	web := httptest.NewServer(http.NotFoundHandler())
	defer web.Close()
	for _, tc := range []struct {
		name  string
		env   []string
		cause string
	}{
		{"refused", []string{"ETCD_ENDPOINTS=http://" + freeAddr(t)}, "connection refused"},
		{"plain HTTP server", []string{"ETCD_ENDPOINTS=" + web.URL}, "HTTP/1.1"},
		{"TLS to plaintext etcd", []string{"ETCD_ENDPOINTS=https://" + e.Bridge.Addr(), "ETCD_INSECURE_SKIP_VERIFY=true"}, "handshake"},
		{"unknown host", []string{"ETCD_ENDPOINTS=http://etcd.invalid:2379"}, "etcd.invalid"},
		{"refused, with a password", []string{"ETCD_ENDPOINTS=http://" + freeAddr(t), "ETCD_USERNAME=u", "ETCD_PASSWORD=p"},
			"connection refused"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := startAs(t, e, runOpts{Env: tc.env}, "", "--prefix=/p", "--once", "--start-timeout=2s")
			if code := d.wait(30 * time.Second); code != 1 {
				t.Fatalf("exit code %d, want 1", code)
			}
			final := d.stderr.lines("first sync did not succeed")
			if len(final) != 1 || !strings.Contains(final[0], tc.cause) || !strings.Contains(final[0], "etcd") {
				t.Fatalf("final line %q, want etcd and the cause %q:\n%s", final, tc.cause, d.stderr.String())
			}
		})
	}
}
