package e2e

import (
	"fmt"
	"testing"

	"github.com/etcd-config-dispenser/etcd-config-dispenser/internal/etcdtest"
)

func TestWaitCoalescesABurstIntoOneSignal(t *testing.T) {
	e := etcdtest.Start(t)
	c := e.Client()
	txn(t, c, "/p/n", "0")
	d := start(t, e, "reader", "--prefix=/p", "--wait=2s:30s")
	d.waitEvent("start", func(ev event) bool { return ev.What == "start" && ev.Files["n"] == "0" })
	for i := 1; i <= 100; i++ {
		txn(t, c, "/p/n", fmt.Sprint(i), fmt.Sprintf("/p/k%d", i), "x")
	}
	evs := d.waitEvent("n=100", func(ev event) bool { return ev.What == "hangup" && ev.Files["n"] == "100" })
	if n := d.finalSignals(); n != 1 {
		t.Fatalf("%d signals for a burst of 100 puts with --wait, want 1: %+v", n, evs)
	}
	if got := len(tree(t, d.target)); got != 101 {
		t.Fatalf("%d files, want 101", got)
	}
}
