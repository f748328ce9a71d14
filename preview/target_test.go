package preview

import (
	"fmt"
	"path/filepath"
	"testing"

	"github.com/etcd-config-dispenser/etcd-config-dispenser/writer"
)

// TestLiveReadsABucketedTarget: a target with a wide top level keeps its names in buckets
// inside ..data (..X/..Y/..Z/NAME); Live shows them by their names.
func TestLiveReadsABucketedTarget(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "target")
	w, err := writer.Open(writer.Options{Dir: dir, UID: -1, GID: -1, NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	b := writer.Batch{Revision: 1, Full: true, Changes: []writer.Change{{Key: "sub/x", Value: []byte("X")}}}
	for i := range 300 {
		b.Changes = append(b.Changes, writer.Change{Key: fmt.Sprintf("k%03d", i), Value: []byte("v")})
	}
	if _, err := w.Apply(b); err != nil {
		t.Fatal(err)
	}
	got, err := Live(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 301 || string(got["sub/x"]) != "X" || string(got["k007"]) != "v" {
		t.Errorf("Live read %d files (sub/x %q, k007 %q), want 301", len(got), got["sub/x"], got["k007"])
	}
}
