package source

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/etcd-config-dispenser/etcd-config-dispenser/internal/etcdtest"
)

// A key written while the connection is down always arrives, however the
// revision checks and their progress requests fall around the reconnect: etcd
// before the fix of etcd-io/etcd#15220 (3.4.23, 3.5.7) answers a progress
// request with its current revision while a reconnected watch is still
// catching up, and that answer must not make the source skip the missed event.
func TestKeysWrittenDuringShortDropsAllArrive(t *testing.T) {
	etcdtest.EachVersion(t, func(t *testing.T, e *etcdtest.Server) {
		c := e.Client()
		put(t, c, "/p/start", "0")
		m := &mirror{}
		// Checks (with their progress requests) all the time, so one falls
		// right after each reconnect.
		run(t, Options{Client: e.BridgedClient(), Prefix: "/p", CheckInterval: 20 * time.Millisecond}, m)
		want := map[string]string{"start": "0"}
		etcdtest.Eventually(t, 10*time.Second, func() error { return m.equals(want) })
		for i := range 8 {
			e.Bridge.Down()
			key := fmt.Sprintf("k%d", i)
			put(t, c, "/p/"+key, "written while down")
			put(t, c, "/elsewhere", fmt.Sprint(i)) // etcd's revision moves past the key's
			want[key] = "written while down"
			e.Bridge.Up()
			etcdtest.Eventually(t, 10*time.Second, func() error {
				if err := m.equals(want); err != nil {
					return fmt.Errorf("drop %d: %w", i, err)
				}
				return nil
			})
		}
	})
}

// A wiped or restored etcd keeps its cluster ID and starts its revisions
// again; once its revision passes the applied one, nothing in the revision
// says so. The keys-only fingerprint does: the mirror equals the new etcd
// within the check interval and a few seconds.
func TestWipedEtcdWhoseRevisionPassesOursIsResynced(t *testing.T) {
	etcdtest.EachVersion(t, func(t *testing.T, e *etcdtest.Server) {
		c := e.Client()
		for i := range 20 {
			put(t, c, fmt.Sprintf("/p/old%d", i), "x")
		}
		m := &mirror{}
		const check = 200 * time.Millisecond
		s := run(t, Options{Client: e.BridgedClient(), Prefix: "/p", CheckInterval: check, RequestTimeout: time.Second}, m)
		etcdtest.Eventually(t, 10*time.Second, func() error {
			if got, _ := m.snapshot(); len(got) != 20 {
				return fmt.Errorf("%d keys", len(got))
			}
			return nil
		})
		e.Wipe()
		put(t, c, "/p/new1", "first after the wipe")
		for i := range 300 {
			put(t, c, "/elsewhere", fmt.Sprint(i))
		}
		put(t, c, "/p/new2", "after the revision passed ours")
		want := map[string]string{"new1": "first after the wipe", "new2": "after the revision passed ours"}
		etcdtest.Eventually(t, check+5*time.Second, func() error { return m.equals(want) })
		if s.Resyncs() == 0 {
			t.Fatal("no resync recorded after the wipe")
		}
	})
}

// etcd hands over an empty value as nil: it is a value (an empty file), not a
// deletion, in the snapshot and in the watch, on every version.
func TestEmptyValueIsAChangeNotADeletion(t *testing.T) {
	etcdtest.EachVersion(t, func(t *testing.T, e *etcdtest.Server) {
		c := e.Client()
		ctx := context.Background()
		if _, err := c.Put(ctx, "/p/empty-at-start", ""); err != nil {
			t.Fatal(err)
		}
		m := &mirror{}
		run(t, Options{Client: e.BridgedClient(), Prefix: "/p"}, m)
		etcdtest.Eventually(t, 10*time.Second, func() error { return m.equals(map[string]string{"empty-at-start": ""}) })
		put(t, c, "/p/later", "x")
		if _, err := c.Put(ctx, "/p/later", ""); err != nil {
			t.Fatal(err)
		}
		etcdtest.Eventually(t, 10*time.Second, func() error {
			return m.equals(map[string]string{"empty-at-start": "", "later": ""})
		})
		_, batches := m.snapshot()
		changes := batches[len(batches)-1].Changes
		if last := changes[len(changes)-1]; last.Key != "later" || last.Delete || len(last.Value) != 0 {
			t.Fatalf("last change %+v, want the key set to an empty value", last)
		}
	})
}

// The check also runs when the connection comes back, not only every
// CheckInterval: a wiped etcd is noticed at the reconnect.
func TestWipedEtcdIsNoticedAtTheReconnect(t *testing.T) {
	etcdtest.EachVersion(t, func(t *testing.T, e *etcdtest.Server) {
		c := e.Client()
		for i := range 5 {
			put(t, c, fmt.Sprintf("/p/old%d", i), "x")
		}
		m := &mirror{}
		run(t, Options{Client: e.BridgedClient(), Prefix: "/p", CheckInterval: time.Hour, RequestTimeout: time.Second}, m)
		etcdtest.Eventually(t, 10*time.Second, func() error {
			if got, _ := m.snapshot(); len(got) != 5 {
				return fmt.Errorf("%d keys", len(got))
			}
			return nil
		})
		e.Wipe()
		put(t, c, "/p/new1", "first after the wipe")
		for i := range 100 {
			put(t, c, "/elsewhere", fmt.Sprint(i))
		}
		put(t, c, "/p/new2", "after the revision passed ours")
		want := map[string]string{"new1": "first after the wipe", "new2": "after the revision passed ours"}
		// Without the check at the reconnect, never (CheckInterval is an hour); with it,
		// as soon as grpc's reconnect backoff lets the connection come back.
		start := time.Now()
		etcdtest.Eventually(t, 30*time.Second, func() error { return m.equals(want) })
		t.Logf("mirrored again %v after the last write", time.Since(start).Round(time.Millisecond))
	})
}
