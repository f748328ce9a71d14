package e2e

import (
	"testing"
	"time"

	"github.com/etcd-config-dispenser/etcd-config-dispenser/internal/etcdtest"
)

// letsencrypt-with-etcd's account key kept out of nginx: --include '*.pem'.
func TestIncludeKeepsOnlyTheCertificates(t *testing.T) {
	e := etcdtest.Start(t)
	c := e.Client()
	txn(t, c, "/letsencrypt-with-etcd/account", "ACCOUNT KEY", "/letsencrypt-with-etcd/example.com-fullchain.pem", "CERT",
		"/letsencrypt-with-etcd/example.com-key.pem", "KEY")
	d := start(t, e, "reader", "--prefix=/letsencrypt-with-etcd", "--include", "*.pem")
	d.waitEvent("start", func(ev event) bool { return ev.What == "start" })
	txn(t, c, "/letsencrypt-with-etcd/account", "NEW ACCOUNT KEY")
	txn(t, c, "/letsencrypt-with-etcd/example.com-fullchain.pem", "CERT2")
	d.waitEvent("cert2", func(ev event) bool { return ev.What == "hangup" && ev.Files["example.com-fullchain.pem"] == "CERT2" })
	etcdtest.Eventually(t, 10*time.Second, equalTree(t, d.target,
		map[string]string{"example.com-fullchain.pem": "CERT2", "example.com-key.pem": "KEY"}))
	if n := d.finalSignals(); n != 1 {
		t.Fatalf("%d signals, want 1: the account key is not mirrored", n)
	}
}

// A second --prefix is refused (exit 2), never silently dropped; a prefix without a leading /
// and one that matches no key get a warning.
func TestPrefixMistakes(t *testing.T) {
	e := etcdtest.Start(t)
	d := start(t, e, "", "--prefix=/a", "--prefix=/b")
	if code := d.wait(30 * time.Second); code != 2 {
		t.Fatalf("exit %d, want 2", code)
	}
	if len(d.stderr.lines("--prefix", "given twice (/a and /b)")) != 1 {
		t.Fatalf("output:\n%s", d.stderr.String())
	}
	d = start(t, e, "", "--prefix=nothing-here", "--once")
	if code := d.wait(30 * time.Second); code != 0 {
		t.Fatalf("exit %d", code)
	}
	for _, words := range [][]string{{"WARN", `does not begin with /`}, {"WARN", "matches no key"}} {
		if len(d.stderr.lines(words...)) != 1 {
			t.Errorf("no line with %q in:\n%s", words, d.stderr.String())
		}
	}
}
