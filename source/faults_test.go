package source

import (
	"context"
	"fmt"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/etcd-config-dispenser/etcd-config-dispenser/internal/etcdtest"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
)

// expected reads the prefix as etcd has it now.
func expected(t *testing.T, c *clientv3.Client, prefix string) map[string]string {
	t.Helper()
	return etcdtest.Read(t, c, prefix)
}

// ordered checks that the batches never went back in revision and never
// repeated one, outside full resyncs.
func ordered(batches []Batch) error {
	var last int64
	for _, b := range batches {
		if !b.Full && b.Revision <= last {
			return fmt.Errorf("batch at revision %d after %d", b.Revision, last)
		}
		last = b.Revision
	}
	return nil
}

// storm writes n puts and deletes, retrying each one through outages.
func storm(t *testing.T, c *clientv3.Client, n int) {
	t.Helper()
	for i := range n {
		for {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			var err error
			if i%5 == 4 {
				_, err = c.Delete(ctx, fmt.Sprintf("/p/k%d", i-2))
			} else {
				_, err = c.Put(ctx, fmt.Sprintf("/p/k%d", i%40), fmt.Sprint(i))
			}
			cancel()
			if err == nil {
				break
			}
		}
	}
}

func TestDroppedConnectionsLoseAndRepeatNothing(t *testing.T) {
	etcdtest.EachVersion(t, testDroppedConnectionsLoseAndRepeatNothing)
}

func testDroppedConnectionsLoseAndRepeatNothing(t *testing.T, e *etcdtest.Server) {
	c := e.Client()
	m := &mirror{}
	s := run(t, Options{Client: e.BridgedClient(), Prefix: "/p"}, m)
	var wg sync.WaitGroup
	stop := make(chan struct{})
	wg.Go(func() {
		for {
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
				e.Bridge.Drop()
			}
		}
	})
	storm(t, c, 400)
	close(stop)
	wg.Wait()
	want := expected(t, c, "/p/")
	etcdtest.Eventually(t, 30*time.Second, func() error { return m.equals(want) })
	_, batches := m.snapshot()
	if err := ordered(batches); err != nil {
		t.Fatal(err)
	}
	if s.Resyncs() != 0 {
		t.Fatalf("%d resyncs for dropped connections, want 0 (resume from the applied revision)", s.Resyncs())
	}
}

func TestEtcdRestartDuringAWriteStormConverges(t *testing.T) {
	etcdtest.EachVersion(t, testEtcdRestartDuringAWriteStormConverges)
}

func testEtcdRestartDuringAWriteStormConverges(t *testing.T, e *etcdtest.Server) {
	c := e.Client()
	m := &mirror{}
	run(t, Options{Client: e.BridgedClient(), Prefix: "/p", RequestTimeout: time.Second}, m)
	done := make(chan struct{})
	go func() { defer close(done); storm(t, c, 300) }()
	etcdtest.Eventually(t, 10*time.Second, func() error {
		if got, _ := m.snapshot(); len(got) < 5 {
			return fmt.Errorf("only %d keys so far", len(got))
		}
		return nil
	})
	e.Restart()
	<-done
	want := expected(t, c, "/p/")
	etcdtest.Eventually(t, 30*time.Second, func() error { return m.equals(want) })
	_, batches := m.snapshot()
	if err := ordered(batches); err != nil {
		t.Fatal(err)
	}
}

func TestDeleteRangeOf5000KeysIsOneBatch(t *testing.T) {
	t.Run("one response", func(t *testing.T) { testDeleteRangeOf5000KeysIsOneBatch(t, etcdtest.Start(t)) })
	// etcd splits a watch response larger than its request limit into fragments; the
	// source joins them into the one revision they are.
	t.Run("fragments", func(t *testing.T) {
		testDeleteRangeOf5000KeysIsOneBatch(t, etcdtest.Start(t, func(cfg *embed.Config, _ *etcdtest.Server) error {
			cfg.MaxRequestBytes = 16 << 10
			return nil
		}))
	})
}

func testDeleteRangeOf5000KeysIsOneBatch(t *testing.T, e *etcdtest.Server) {
	c := e.Client()
	ctx := context.Background()
	for i := 0; i < 5000; i += 100 {
		var ops []clientv3.Op
		for j := i; j < i+100; j++ {
			ops = append(ops, clientv3.OpPut(fmt.Sprintf("/p/k%05d", j), "v"))
		}
		if _, err := c.Txn(ctx).Then(ops...).Commit(); err != nil {
			t.Fatal(err)
		}
	}
	c.Put(ctx, "/p/other", "outside the range") // not under /p/k: survives
	m := &mirror{}
	run(t, Options{Client: e.BridgedClient(), Prefix: "/p"}, m)
	etcdtest.Eventually(t, 30*time.Second, func() error {
		if got, _ := m.snapshot(); len(got) != 5001 {
			return fmt.Errorf("%d keys", len(got))
		}
		return nil
	})
	resp, err := c.Delete(ctx, "/p/k", clientv3.WithPrefix())
	if err != nil || resp.Deleted != 5000 {
		t.Fatalf("deleted %v, %v", resp, err)
	}
	etcdtest.Eventually(t, 30*time.Second, func() error { return m.equals(map[string]string{"other": "outside the range"}) })
	_, batches := m.snapshot()
	last := batches[len(batches)-1]
	if len(batches) != 2 || len(last.Changes) != 5000 || last.Revision != resp.Header.Revision {
		t.Fatalf("%d batches, the last with %d changes at %d; want the 5000 deletes in one batch at %d",
			len(batches), len(last.Changes), last.Revision, resp.Header.Revision)
	}
}

func TestABurstIsMergedIntoFewBatchesOfWholeRevisions(t *testing.T) {
	e := etcdtest.Start(t)
	c := e.Client()
	m := &mirror{}
	run(t, Options{Client: e.BridgedClient(), Prefix: "/p", Coalesce: 50 * time.Millisecond}, m)
	etcdtest.Eventually(t, 10*time.Second, func() error { return m.equals(map[string]string{}) })
	start := time.Now()
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Go(func() {
			for i := range 100 {
				put(t, c, fmt.Sprintf("/p/w%d", w), fmt.Sprint(i), fmt.Sprintf("/p/w%d-copy", w), fmt.Sprint(i))
			}
		})
	}
	wg.Wait()
	took := time.Since(start)
	want := expected(t, c, "/p/")
	etcdtest.Eventually(t, 10*time.Second, func() error { return m.equals(want) })
	_, batches := m.snapshot()
	// A burst is held to one batch per interval; a batch that finds the
	// source idle goes at once, so at most two per interval, however many
	// writes.
	if limit := 2*int(took/(50*time.Millisecond)) + 3; len(batches) > limit {
		t.Fatalf("%d batches for 800 transactions in %v, want at most %d", len(batches), took, limit)
	}
	for _, b := range batches[1:] {
		// Each transaction writes a key and its copy: a batch holding one
		// without the other would be a split revision.
		seen := map[string]int{}
		for _, ch := range b.Changes {
			seen[strings.TrimSuffix(ch.Key, "-copy")]++
		}
		for k, n := range seen {
			if n%2 != 0 {
				t.Fatalf("batch at %d splits a transaction on %s", b.Revision, k)
			}
		}
	}
}

// A listing at a past revision reads every page at that revision, not the first at it and
// the rest at etcd's current one (a read's header names the current revision): the check at
// the applied revision must see the keys as they were, or a prefix of more than one page
// that changed meanwhile looks wiped and is resynced for nothing.
func TestAListingAtAPastRevisionReadsEveryPageThere(t *testing.T) {
	e := etcdtest.Start(t)
	c := e.Client()
	ctx := context.Background()
	var rev int64
	for i := 0; i < 30; i++ {
		resp, err := c.Put(ctx, fmt.Sprintf("/p/k%02d", i), "v")
		if err != nil {
			t.Fatal(err)
		}
		rev = resp.Header.Revision
	}
	if _, err := c.Delete(ctx, "/p/k1", clientv3.WithPrefix()); err != nil { // k10..k19
		t.Fatal(err)
	}
	s := New(Options{Client: c, Prefix: "/p", PageSize: 5})
	n := 0
	if _, err := s.list(ctx, rev, true, func(*mvccpb.KeyValue) { n++ }); err != nil {
		t.Fatal(err)
	}
	if n != 30 {
		t.Fatalf("listed %d keys at revision %d, want the 30 that were there", n, rev)
	}
}
