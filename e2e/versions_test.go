package e2e

import (
	"fmt"
	"maps"
	"testing"
	"time"

	"github.com/etcd-config-dispenser/etcd-config-dispenser/internal/etcdtest"
)

// The fault tests that etcd's version matters for, run against etcd 3.4
// (Debian's), 3.5.7 and 3.6, with the real binary.

// A key written while the dispenser's connection is down reaches the target,
// whatever the checks (and their progress requests) do around the reconnect.
func TestVersionsKeysWrittenDuringDropsReachTheTarget(t *testing.T) {
	etcdtest.EachVersion(t, func(t *testing.T, e *etcdtest.Server) {
		c := e.Client()
		txn(t, c, "/p/start", "0")
		d := start(t, e, "reader", "--prefix=/p", "--check-interval=50ms")
		d.waitEvent("start", func(ev event) bool { return ev.What == "start" })
		want := map[string]string{"start": "0"}
		for i := range 6 {
			e.Bridge.Down()
			key := fmt.Sprintf("k%d", i)
			txn(t, c, "/p/"+key, "written while down")
			txn(t, c, "/elsewhere", fmt.Sprint(i))
			want[key] = "written while down"
			e.Bridge.Up()
			etcdtest.Eventually(t, 15*time.Second, equalTree(t, d.target, want))
		}
	})
}

// After a wipe whose new revisions pass the applied one, the target equals
// etcd again within the check interval and a few seconds.
func TestVersionsWipedEtcdPastOurRevisionIsMirroredAgain(t *testing.T) {
	etcdtest.EachVersion(t, func(t *testing.T, e *etcdtest.Server) {
		c := e.Client()
		for i := range 10 {
			txn(t, c, fmt.Sprintf("/p/old%d", i), "x")
		}
		d := start(t, e, "reader", "--prefix=/p", "--check-interval=4s")
		d.waitEvent("start", func(ev event) bool { return ev.What == "start" && len(ev.Files) == 10 })
		e.Wipe()
		txn(t, c, "/p/new1", "first")
		for i := range 300 {
			txn(t, c, "/elsewhere", fmt.Sprint(i))
		}
		txn(t, c, "/p/new2", "second")
		want := map[string]string{"new1": "first", "new2": "second"}
		etcdtest.Eventually(t, 4*time.Second+5*time.Second, equalTree(t, d.target, want))
		d.waitEvent("the resync", func(ev event) bool { return ev.What == "hangup" && maps.Equal(ev.Files, want) })
	})
}
