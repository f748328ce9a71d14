package source

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/etcd-config-dispenser/etcd-config-dispenser/internal/etcdtest"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// TestSnapshotStreamsPagesAndAFailedPageConverges runs the source with one key per page. The
// first snapshot's apply gets one page, then etcd compacts away the snapshot's revision: the
// next page fails with etcd's error (not an apply error), nothing counts as applied, and the
// resync that follows delivers the whole prefix at the new revision, page by page.
func TestSnapshotStreamsPagesAndAFailedPageConverges(t *testing.T) {
	e := etcdtest.Start(t)
	c := e.Client()
	want := map[string]string{}
	for i := range 5 {
		k := fmt.Sprintf("k%d", i)
		put(t, c, "/app/"+k, k)
		want[k] = k
	}
	var (
		mu       sync.Mutex
		calls    int
		pageErr  error
		got      map[string]string
		gotRev   int64
		maxPages int
	)
	apply := func(ctx context.Context, b Batch) error {
		mu.Lock()
		defer mu.Unlock()
		calls++
		if !b.Full || b.Next == nil {
			return fmt.Errorf("batch %d: want a paged Full batch, got Full=%v Next=%v", calls, b.Full, b.Next != nil)
		}
		if len(b.Changes) != 1 {
			return fmt.Errorf("first page holds %d keys, want 1", len(b.Changes))
		}
		keys := map[string]string{}
		pages := 0
		for page := b.Changes; page != nil; {
			pages++
			for _, ch := range page {
				keys[ch.Key] = string(ch.Value)
			}
			if calls == 1 && pages == 1 {
				resp, err := c.Put(ctx, "/app/k5", "k5")
				if err != nil {
					return err
				}
				if _, err := c.Compact(ctx, resp.Header.Revision); err != nil {
					return err
				}
			}
			var err error
			if page, err = b.Next(ctx); err != nil {
				pageErr = err
				return fmt.Errorf("page %d: %w", pages+1, err)
			}
		}
		got, gotRev, maxPages = keys, b.Revision, max(maxPages, pages)
		return nil
	}
	s := New(Options{Client: c, Prefix: "/app", PageSize: 1})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx, apply) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()
	want["k5"] = "k5"
	etcdtest.Eventually(t, 10*time.Second, func() error {
		mu.Lock()
		defer mu.Unlock()
		if !maps.Equal(got, want) {
			return fmt.Errorf("applied %v, want %v (%d calls)", got, want, calls)
		}
		return nil
	})
	mu.Lock()
	defer mu.Unlock()
	if !errors.Is(pageErr, rpctypes.ErrCompacted) {
		t.Errorf("the page after the compaction failed with %v, want %v", pageErr, rpctypes.ErrCompacted)
	}
	if calls != 2 {
		t.Errorf("%d applies, want 2 (the failed one and the resync)", calls)
	}
	if maxPages != 6 {
		t.Errorf("the resync came in %d pages, want 6", maxPages)
	}
	if s.Applied() != gotRev {
		t.Errorf("applied revision %d, want the resync's %d", s.Applied(), gotRev)
	}
}

// TestSnapshotPagesShrinkWithBigValues: pages after the first hold about 512 KiB, not
// PageSize keys, so big values do not make the pages in flight big.
func TestSnapshotPagesShrinkWithBigValues(t *testing.T) {
	e := etcdtest.Start(t)
	c := e.Client()
	value := strings.Repeat("v", 16<<10)
	for i := range 300 {
		put(t, c, fmt.Sprintf("/app/k%03d", i), value)
	}
	s := New(Options{Client: c, Prefix: "/app"})
	ctx := context.Background()
	b, pg, err := s.snapshot(ctx)
	if err != nil {
		t.Fatal(err)
	}
	pages, keys, biggest := readPages(t, ctx, b)
	if keys != 300 || pg.keys != 300 {
		t.Fatalf("read %d keys (pager %d), want 300", keys, pg.keys)
	}
	if len(b.Changes) != firstPage || biggest > 32 || pages < 7 {
		t.Errorf("%d pages, the first of %d keys, later ones up to %d keys of 16 KiB: want %d, then about 512 KiB a page",
			pages, len(b.Changes), biggest, firstPage)
	}
}

// TestSnapshotPagesGrowWithSmallValues: with small values a page holds thousands of keys, not
// a fixed few hundred: each page costs etcd a walk over the rest of the range (it counts what
// remains), so 50000 keys in pages of 500 cost 100 round trips and a quadratic amount of work.
func TestSnapshotPagesGrowWithSmallValues(t *testing.T) {
	e := etcdtest.Start(t)
	c := e.Client()
	ctx := context.Background()
	for i := 0; i < 6000; i += 128 {
		var ops []clientv3.Op
		for j := i; j < min(6000, i+128); j++ {
			ops = append(ops, clientv3.OpPut(fmt.Sprintf("/app/k%05d", j), "0123456789"))
		}
		if _, err := c.Txn(ctx).Then(ops...).Commit(); err != nil {
			t.Fatal(err)
		}
	}
	s := New(Options{Client: c, Prefix: "/app"})
	b, pg, err := s.snapshot(ctx)
	if err != nil {
		t.Fatal(err)
	}
	pages, _, _ := readPages(t, ctx, b)
	if pg.keys != 6000 || b.Keys != 6000 {
		t.Fatalf("read %d keys, the batch announced %d, want 6000", pg.keys, b.Keys)
	}
	if pages > 3 {
		t.Errorf("6000 keys of 10 bytes came in %d pages, want at most 3 (the first of %d keys, then thousands a page)",
			pages, firstPage)
	}
}

// readPages reads the rest of snapshot b: how many pages it had (its first included), how many
// keys, and the most keys of a page after the first.
func readPages(t *testing.T, ctx context.Context, b Batch) (pages, keys, biggest int) {
	t.Helper()
	pages, keys = 1, len(b.Changes)
	for {
		page, err := b.Next(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if page == nil {
			return pages, keys, biggest
		}
		pages++
		keys += len(page)
		biggest = max(biggest, len(page))
	}
}
