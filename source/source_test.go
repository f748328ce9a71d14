package source

import (
	"context"
	"fmt"
	"maps"
	"sync"
	"testing"
	"time"

	"github.com/etcd-config-dispenser/etcd-config-dispenser/internal/etcdtest"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// mirror is what a writer would hold: the keys as the batches left them.
type mirror struct {
	mu      sync.Mutex
	keys    map[string]string
	batches []Batch
	block   chan struct{} // if set, the first apply waits for it
	entered chan struct{} // closed when the first apply starts, if set
}

func (m *mirror) apply(ctx context.Context, b Batch) error {
	if err := b.Collect(ctx); err != nil {
		return err
	}
	if m.block != nil {
		close(m.entered)
		<-m.block
		m.block = nil
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if b.Full || m.keys == nil {
		m.keys = map[string]string{}
	}
	for _, c := range b.Changes {
		if c.Delete {
			delete(m.keys, c.Key)
		} else {
			m.keys[c.Key] = string(c.Value)
		}
	}
	m.batches = append(m.batches, b)
	return nil
}

func (m *mirror) snapshot() (map[string]string, []Batch) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return maps.Clone(m.keys), append([]Batch(nil), m.batches...)
}

// equals reports whether the mirror holds exactly want.
func (m *mirror) equals(want map[string]string) error {
	got, _ := m.snapshot()
	if !maps.Equal(got, want) {
		return fmt.Errorf("mirror %v, want %v", got, want)
	}
	return nil
}

func run(t *testing.T, opts Options, m *mirror) *Source {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	s := New(opts)
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx, m.apply) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run returned %v after cancel", err)
			}
		case <-time.After(10 * time.Second):
			t.Errorf("Run did not return after cancel")
		}
	})
	return s
}

func put(t *testing.T, c *clientv3.Client, kv ...string) int64 {
	t.Helper()
	return etcdtest.Txn(t, c, kv...)
}

func TestSnapshotIsPaginatedAtOneRevisionAndStopsAtThePrefixBoundary(t *testing.T) {
	e := etcdtest.Start(t)
	c := e.Client()
	want := map[string]string{}
	for i := range 1234 {
		k := fmt.Sprintf("k%04d", i)
		put(t, c, "/app/"+k, k)
		want[k] = k
	}
	put(t, c, "/app2/x", "not mine", "/app", "not mine either")
	s := New(Options{Client: c, Prefix: "/app", PageSize: 100})
	b, err := s.Snapshot(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, ch := range b.Changes {
		got[ch.Key] = string(ch.Value)
	}
	if !b.Full || !maps.Equal(got, want) {
		t.Fatalf("snapshot has %d keys (full=%v), want %d", len(got), b.Full, len(want))
	}
}

func TestTransactionArrivesAsOneBatch(t *testing.T) {
	e := etcdtest.Start(t)
	c := e.Client()
	put(t, c, "/p/a", "1")
	m := &mirror{}
	run(t, Options{Client: c, Prefix: "/p/"}, m)
	etcdtest.Eventually(t, 10*time.Second, func() error { return m.equals(map[string]string{"a": "1"}) })

	rev := put(t, c, "/p/a", "", "/p/b", "2", "/p/c/d", "3", "/q/x", "outside")
	want := map[string]string{"b": "2", "c/d": "3"}
	etcdtest.Eventually(t, 10*time.Second, func() error { return m.equals(want) })
	_, batches := m.snapshot()
	last := batches[len(batches)-1]
	if last.Full || last.Revision != rev || len(last.Changes) != 3 {
		t.Fatalf("last batch %+v, want the 3 changes of revision %d in one batch", last, rev)
	}
}

func TestCompactionWhileBehindResyncsAndDropsVanishedKeys(t *testing.T) {
	etcdtest.EachVersion(t, testCompactionWhileBehindResyncsAndDropsVanishedKeys)
}

func testCompactionWhileBehindResyncsAndDropsVanishedKeys(t *testing.T, e *etcdtest.Server) {
	c := e.Client()
	put(t, c, "/p/a", "1", "/p/b", "1")
	m := &mirror{block: make(chan struct{}), entered: make(chan struct{})}
	run(t, Options{Client: c, Prefix: "/p"}, m)
	<-m.entered
	// While the snapshot is being applied, the key vanishes and the history
	// that would tell so is compacted away.
	put(t, c, "/p/a", "")
	put(t, c, "/p/c", "3")
	e.Compact(context.Background())
	close(m.block)

	etcdtest.Eventually(t, 10*time.Second, func() error { return m.equals(map[string]string{"b": "1", "c": "3"}) })
	_, batches := m.snapshot()
	if n := len(batches); n != 2 || !batches[1].Full {
		t.Fatalf("batches %+v, want the snapshot then one full resync", batches)
	}
}

func TestRestartOfEtcdResumesWithoutResync(t *testing.T) {
	etcdtest.EachVersion(t, testRestartOfEtcdResumesWithoutResync)
}

func testRestartOfEtcdResumesWithoutResync(t *testing.T, e *etcdtest.Server) {
	c := e.Client()
	put(t, c, "/p/a", "1")
	m := &mirror{}
	s := run(t, Options{Client: c, Prefix: "/p"}, m)
	etcdtest.Eventually(t, 10*time.Second, func() error { return m.equals(map[string]string{"a": "1"}) })
	e.Restart()
	put(t, c, "/p/b", "2")
	etcdtest.Eventually(t, 10*time.Second, func() error { return m.equals(map[string]string{"a": "1", "b": "2"}) })
	if s.Resyncs() != 0 {
		t.Fatalf("%d resyncs after a plain restart, want 0", s.Resyncs())
	}
}

func TestWipedEtcdIsDetectedAndResynced(t *testing.T) {
	e := etcdtest.Start(t)
	c := e.Client()
	for i := range 20 {
		put(t, c, fmt.Sprintf("/p/old%d", i), "x")
	}
	m := &mirror{}
	s := run(t, Options{Client: c, Prefix: "/p", CheckInterval: 100 * time.Millisecond, RequestTimeout: time.Second}, m)
	etcdtest.Eventually(t, 10*time.Second, func() error {
		if got, _ := m.snapshot(); len(got) != 20 {
			return fmt.Errorf("%d keys", len(got))
		}
		return nil
	})
	e.Wipe()
	put(t, c, "/p/new", "y")
	etcdtest.Eventually(t, 20*time.Second, func() error { return m.equals(map[string]string{"new": "y"}) })
	if s.Resyncs() == 0 {
		t.Fatal("no resync recorded after the wipe")
	}
}

func TestUnreachableEtcdIsRetriedUntilItComes(t *testing.T) {
	e := etcdtest.Start(t)
	c := e.Client()
	put(t, c, "/p/a", "1")
	e.Stop()
	m := &mirror{}
	run(t, Options{Client: c, Prefix: "/p", RequestTimeout: 500 * time.Millisecond}, m)
	e.Restart()
	etcdtest.Eventually(t, 20*time.Second, func() error { return m.equals(map[string]string{"a": "1"}) })
}
