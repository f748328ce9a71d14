package writer

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func TestPlainWritesFilesInPlace(t *testing.T) {
	w, dir := open(t, Plain)
	want := tree{"cert.pem": "C", "sub/a": "A"}
	mustApply(t, w, full(1, want))
	for _, name := range []string{"cert.pem", "sub", "sub/a"} {
		fi, err := os.Lstat(filepath.Join(dir, name))
		if err != nil || fi.Mode()&os.ModeSymlink != 0 {
			t.Errorf("%s: %v %v, want a real file or directory", name, fi.Mode(), err)
		}
	}
	fi1, _ := os.Stat(filepath.Join(dir, "cert.pem"))
	mustApply(t, w, batch(2, put("cert.pem", "C2")))
	fi2, _ := os.Stat(filepath.Join(dir, "cert.pem"))
	if os.SameFile(fi1, fi2) {
		t.Error("cert.pem was modified in place, not replaced by a rename")
	}
	if got := names(t, dir); !slices.Equal(got, []string{lockName, manifestName, "cert.pem", "sub"}) {
		t.Errorf("target holds %v", got)
	}
}

func TestPlainNeverDeletesForeignFiles(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "target")
	writeFile(t, filepath.Join(dir, "foreign"), "F")
	writeFile(t, filepath.Join(dir, "theirs/file"), "T")
	w := openAt(t, Options{Dir: dir, Layout: Plain, UID: -1, GID: -1})
	mustApply(t, w, full(1, tree{"ours/a": "A", "theirs/b": "B", "top": "T"}))
	// Someone drops a file into a directory we created.
	writeFile(t, filepath.Join(dir, "ours/dropped"), "D")
	w.Close()

	w = openAt(t, Options{Dir: dir, Layout: Plain, UID: -1, GID: -1})
	res := mustApply(t, w, full(2, tree{}))
	if res.Removed != 3 {
		t.Errorf("Result = %+v, want 3 removed", res)
	}
	assertTree(t, "left", visible(t, dir), tree{"foreign": "F", "theirs/file": "T", "ours/dropped": "D"})
}

func TestPlainKeyOverwritesForeignFileWhichThenIsOurs(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "target")
	writeFile(t, filepath.Join(dir, "nginx.conf"), "hand-written")
	w := openAt(t, Options{Dir: dir, Layout: Plain, UID: -1, GID: -1})
	mustApply(t, w, batch(1, put("nginx.conf", "from etcd")))
	assertTree(t, "visible", visible(t, dir), tree{"nginx.conf": "from etcd"})
	w.Close()
	w = openAt(t, Options{Dir: dir, Layout: Plain, UID: -1, GID: -1})
	mustApply(t, w, batch(2, del("nginx.conf")))
	assertTree(t, "visible", visible(t, dir), tree{})
}

func TestPlainForeignDirectoryInTheWayIsReported(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "target")
	writeFile(t, filepath.Join(dir, "conf/inside"), "theirs")
	writeFile(t, filepath.Join(dir, "file"), "theirs")
	w := openAt(t, Options{Dir: dir, Layout: Plain, UID: -1, GID: -1})
	res := mustApply(t, w, full(1, tree{"conf": "ours", "file/below": "ours", "ok": "ok"}))
	if res.Skipped != 2 || res.Written != 1 {
		t.Errorf("Result = %+v, want 2 skipped and 1 written", res)
	}
	assertTree(t, "visible", visible(t, dir), tree{"conf/inside": "theirs", "file": "theirs", "ok": "ok"})
	assertFiles(t, w, tree{"ok": "ok"})

	// Once the obstacle is gone, the next batch writes the key.
	if err := os.RemoveAll(filepath.Join(dir, "conf")); err != nil {
		t.Fatal(err)
	}
	res = mustApply(t, w, batch(2))
	if res.Written != 1 || res.Skipped != 1 {
		t.Errorf("Result = %+v, want conf written and file/below still skipped", res)
	}
	if got := readFile(t, filepath.Join(dir, "conf")); got != "ours" {
		t.Errorf("conf = %q", got)
	}
}

func TestPlainOpenCleansTemporaryFiles(t *testing.T) {
	w, dir := open(t, Plain)
	mustApply(t, w, full(1, tree{"a": "A", "sub/b": "B"}))
	w.Close()
	writeFile(t, filepath.Join(dir, "..tmpABC"), "half")
	writeFile(t, filepath.Join(dir, "sub/..tmpDEF"), "half")
	writeFile(t, filepath.Join(dir, "..tmpcheckXYZ/a"), "staged")
	w = openAt(t, Options{Dir: dir, Layout: Plain, UID: -1, GID: -1})
	for _, d := range []string{dir, filepath.Join(dir, "sub")} {
		for _, n := range names(t, d) {
			if strings.HasPrefix(n, "..tmp") {
				t.Errorf("leftover %s in %s", n, d)
			}
		}
	}
	assertFiles(t, w, tree{"a": "A", "sub/b": "B"})
}

func TestPlainManifestOfMissingFilesIsForgiven(t *testing.T) {
	w, dir := open(t, Plain)
	mustApply(t, w, full(1, tree{"a": "A", "sub/b": "B"}))
	w.Close()
	if err := os.RemoveAll(filepath.Join(dir, "sub")); err != nil {
		t.Fatal(err)
	}
	w = openAt(t, Options{Dir: dir, Layout: Plain, UID: -1, GID: -1})
	assertFiles(t, w, tree{"a": "A"})
	res := mustApply(t, w, full(2, tree{"a": "A", "sub/b": "B"}))
	if !res.Changed || res.Written != 1 {
		t.Errorf("Result = %+v, want sub/b written again", res)
	}
	assertTree(t, "visible", visible(t, dir), tree{"a": "A", "sub/b": "B"})
}

func TestPlainCorruptManifestStopsOpen(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, manifestName), "not ours")
	_, err := Open(Options{Dir: dir, Layout: Plain, UID: -1, GID: -1, Logger: testLogger(t)})
	if err == nil || !strings.Contains(err.Error(), "not a manifest") {
		t.Errorf("Open = %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, manifestName)); errors.Is(err, os.ErrNotExist) {
		t.Error("the file was removed")
	}
}

// The manifest is a journal: a new or removed key appends a record instead of rewriting the
// list of everything (a change costs what changed); it is compacted when records pile up, and
// a record torn by a crash is ignored.
func TestPlainManifestIsAppendedAndCompacted(t *testing.T) {
	w, dir := open(t, Plain)
	all := tree{}
	for i := range 1000 {
		all[fmt.Sprintf("d%d/k%d", i%10, i)] = "v"
	}
	mustApply(t, w, full(1, all))
	manifest := filepath.Join(dir, manifestName)
	before, _ := os.Stat(manifest)
	mustApply(t, w, batch(2, put("new/key", "N")))
	mustApply(t, w, batch(3, del("d0/k0")))
	if after, _ := os.Stat(manifest); !os.SameFile(before, after) || after.Size()-before.Size() > 100 {
		t.Errorf("the manifest was rewritten (or grew by %d bytes) for two keys", after.Size()-before.Size())
	}
	// A torn record at the end, as a crash during an append leaves it.
	f, err := os.OpenFile(manifest, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString("fd1/k1-torn")
	f.Close()
	w.Close()
	w = openAt(t, Options{Dir: dir, Layout: Plain, UID: -1, GID: -1})
	delete(all, "d0/k0")
	all["new/key"] = "N"
	assertFiles(t, w, all)
	// What the journal says is ours is removed when its key goes.
	mustApply(t, w, batch(4, del("new/key")))
	if _, err := os.Lstat(filepath.Join(dir, "new")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("new/ survived its last key: %v", err)
	}
	for i := range 3000 {
		mustApply(t, w, batch(int64(5+i), put(fmt.Sprintf("churn/%d", i), "c")))
		mustApply(t, w, batch(int64(5+i), del(fmt.Sprintf("churn/%d", i))))
	}
	if fi, _ := os.Stat(manifest); fi.Size() > 3*before.Size() {
		t.Errorf("the manifest grew to %d bytes (from %d): never compacted", fi.Size(), before.Size())
	}
	w.Close()
	w = openAt(t, Options{Dir: dir, Layout: Plain, UID: -1, GID: -1})
	delete(all, "new/key")
	assertFiles(t, w, all)
}
