package source

import (
	"context"
	"fmt"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"github.com/etcd-config-dispenser/etcd-config-dispenser/internal/etcdtest"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Changes that arrive one by one while a batch is being applied are applied together
// afterwards, not one batch each: a burst causes few signals. With Coalesce 0 the merge takes
// only what clientv3 holds when the apply ends, and on a loaded machine etcd's delivery of
// the backlog lags behind the puts (a CI run saw [1 5 2 4 7 32 7 4 36 7 49 18 4 25]
// revisions per batch), so that case is not asserted here: how receiveNow takes a backlog
// is TestLoneResponseIsNotHeldForGoroutinesToRun's.
func TestBacklogIsMergedIntoFewBatches(t *testing.T) {
	for _, coalesce := range []time.Duration{50 * time.Millisecond} {
		t.Run(fmt.Sprint("coalesce=", coalesce), func(t *testing.T) {
			e := etcdtest.Start(t)
			c := e.Client()
			put(t, c, "/p/a", "0")
			m := &mirror{}
			gate, entered := make(chan struct{}), make(chan struct{})
			var n atomic.Int32
			apply := func(ctx context.Context, b Batch) error {
				if n.Add(1) == 2 { // the first change after the snapshot
					close(entered)
					<-gate
				}
				return m.apply(ctx, b)
			}
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() { done <- New(Options{Client: c, Prefix: "/p/", Coalesce: coalesce}).Run(ctx, apply) }()
			t.Cleanup(func() { cancel(); <-done })

			etcdtest.Eventually(t, 10*time.Second, func() error { return m.equals(map[string]string{"a": "0"}) })
			put(t, c, "/p/a", "1")
			<-entered
			// 200 revisions, each delivered in its own watch response while the apply waits.
			for i := 2; i <= 201; i++ {
				put(t, c, "/p/a", fmt.Sprint(i))
			}
			close(gate)
			etcdtest.Eventually(t, 10*time.Second, func() error { return m.equals(map[string]string{"a": "201"}) })
			if _, batches := m.snapshot(); len(batches) > 10 {
				t.Fatalf("%d batches for a backlog of 200 revisions, want it merged", len(batches))
			}
		})
	}
}

// A lone response goes to the apply without letting other goroutines run first; in a backlog
// the source yields once, so that clientv3's goroutine can hand over the next response.
func TestLoneResponseIsNotHeldForGoroutinesToRun(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1)) // a new goroutine runs only when we yield
	wch := make(chan clientv3.WatchResponse, 1)
	sent := make(chan struct{})
	go func() { wch <- clientv3.WatchResponse{}; close(sent) }()
	if _, _, got := receiveNow(wch, false); got {
		t.Fatal("a lone response waited for another goroutine to run")
	}
	if _, _, got := receiveNow(wch, true); !got {
		t.Fatal("in a backlog, the response another goroutine was about to send was not taken")
	}
	<-sent
}
