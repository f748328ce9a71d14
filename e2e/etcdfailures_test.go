package e2e

import (
	"fmt"
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
