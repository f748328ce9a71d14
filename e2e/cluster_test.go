package e2e

import (
	"fmt"
	"testing"
	"time"

	"github.com/etcd-config-dispenser/etcd-config-dispenser/internal/etcdtest"
)

// On a 3-member cluster: the leader moves, then quorum is lost and restored.
// The dispenser follows without resync, misses nothing, and signals only for
// real changes.
func TestLeaderMovedAndQuorumLostThenRestored(t *testing.T) {
	c := etcdtest.StartCluster(t, 3)
	cli := c.Client()
	txn(t, cli, "/p/a", "1")
	d := startAs(t, c.Members[0], runOpts{Env: []string{"ETCD_ENDPOINTS=" + c.Endpoints()}}, "reader", "--prefix=/p")
	d.waitEvent("start", func(ev event) bool { return ev.What == "start" })

	c.MoveLeader((c.Leader() + 1) % 3)
	txn(t, cli, "/p/a", "2")
	d.waitEvent("a=2", func(ev event) bool { return ev.Files["a"] == "2" })

	// Quorum lost: two members down. Nothing can change meanwhile.
	c.Members[1].Stop()
	c.Members[2].Stop()
	etcdtest.Eventually(t, 30*time.Second, func() error {
		if len(d.stderr.lines("etcd unreachable")) == 0 {
			return fmt.Errorf("the dispenser has not noticed the lost quorum")
		}
		return nil
	})
	c.Members[1].Restart()
	c.Members[2].Restart()
	txn(t, cli, "/p/a", "3", "/p/b", "new")
	d.waitEvent("a=3", func(ev event) bool { return ev.Files["a"] == "3" && ev.Files["b"] == "new" })
	if n := d.finalSignals(); n != 2 {
		t.Fatalf("%d signals, want 2: one per change, none for the outage", n)
	}
	if got := tree(t, d.target); fmt.Sprint(got) != fmt.Sprint(map[string]string{"a": "3", "b": "new"}) {
		t.Fatalf("target %v", got)
	}
}
