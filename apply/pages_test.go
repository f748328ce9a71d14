package apply

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/etcd-config-dispenser/etcd-config-dispenser/source"
)

// paged splits a Full batch into pages of one change; failAt, if > 0, makes the read of that
// page (1-based) fail as etcd would.
func paged(b source.Batch, failAt int) source.Batch {
	rest := b.Changes[1:]
	b.Changes = b.Changes[:1]
	n := 1
	b.Next = func(context.Context) ([]source.Change, error) {
		n++
		if n == failAt {
			return nil, errEtcd
		}
		if len(rest) == 0 {
			return nil, nil
		}
		page := rest[:1]
		rest = rest[1:]
		return page, nil
	}
	return b
}

var errEtcd = errors.New("etcd: reading prefix: connection lost")

// A snapshot that arrives in pages becomes the same files and templates as a whole one; a
// resync whose page etcd fails to deliver changes nothing, returns etcd's error (not a
// *Error of the apply path), and the next resync converges.
func TestPagedSnapshotAppliesWholeAndAFailedPageChangesNothing(t *testing.T) {
	p, child, cfg := setup(t, nil)
	ctx := context.Background()
	if err := p.Apply(ctx, paged(batch(5, true, "a", "1", "b", "x", "c/d", "y"), 0)); err != nil {
		t.Fatal(err)
	}
	if err := <-p.Started(); err != nil {
		t.Fatal(err)
	}
	for k, v := range map[string]string{"a": "1", "b": "x", "c/d": "y"} {
		if got := read(t, filepath.Join(cfg.Target, k)); got != v {
			t.Errorf("target %s = %q, want %q", k, got, v)
		}
	}
	if got := read(t, cfg.Templates[0].Dest); got != "a=1" {
		t.Errorf("rendered %q", got)
	}

	err := p.Apply(ctx, paged(batch(6, true, "b", "changed", "a", "2", "c/d", "y"), 3))
	var pe *Error
	if !errors.Is(err, errEtcd) || errors.As(err, &pe) {
		t.Fatalf("failed page: Apply returned %v, want etcd's error as is", err)
	}
	if got := read(t, filepath.Join(cfg.Target, "b")); got != "x" {
		t.Errorf("after the failed page, target b = %q, want the old x", got)
	}

	if err := p.Apply(ctx, paged(batch(7, true, "a", "3", "b", "z"), 0)); err != nil {
		t.Fatal(err)
	}
	if got := read(t, filepath.Join(cfg.Target, "b")); got != "z" {
		t.Errorf("after the resync, target b = %q, want z", got)
	}
	if _, err := os.Lstat(filepath.Join(cfg.Target, "c")); !os.IsNotExist(err) {
		t.Errorf("after the resync, target c: %v, want it gone", err)
	}
	if got := read(t, cfg.Templates[0].Dest); got != "a=3" {
		t.Errorf("rendered %q after the resync", got)
	}
	if got := strings.Join(child.Calls(), ","); got != "start,signal hangup" {
		t.Errorf("calls %s, want start, then one signal (the failed page sends nothing)", got)
	}
}

// A first start whose snapshot fails halfway (etcd lost after some pages were written, their
// top-level names linked) leaves the target exactly as it was, and starts nothing.
func TestStartWhoseSnapshotFailsHalfwayLeavesTheTargetAsItWas(t *testing.T) {
	p, child, cfg := setup(t, nil)
	before := targetListing(t, cfg.Target)
	err := p.Apply(context.Background(), paged(batch(5, true, "a", "1", "b", "2", "c/d", "3", "e", "4"), 4))
	if !errors.Is(err, errEtcd) {
		t.Fatalf("Apply returned %v, want etcd's error", err)
	}
	if after := targetListing(t, cfg.Target); strings.Join(after, "\n") != strings.Join(before, "\n") {
		t.Errorf("the target after the failed start:\n%s\nbefore it:\n%s", strings.Join(after, "\n"), strings.Join(before, "\n"))
	}
	if calls := child.Calls(); len(calls) != 0 {
		t.Errorf("calls %v, want none", calls)
	}
}

// targetListing is every entry of dir, with its symlink target.
func targetListing(t *testing.T, dir string) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(dir, func(name string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if target, err := os.Readlink(name); err == nil {
			name += " -> " + target
		}
		out = append(out, name)
		return nil
	})
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	return out
}
