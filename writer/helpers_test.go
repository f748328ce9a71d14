package writer

import (
	"crypto/sha256"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

var layouts = []Layout{Atomic, Plain}

// tree is what a user of the target sees: relative path -> content.
type tree map[string]string

func put(key, value string) Change { return Change{Key: key, Value: []byte(value)} }
func del(key string) Change        { return Change{Key: key, Delete: true} }

func full(rev int64, t tree) Batch {
	b := Batch{Revision: rev, Full: true}
	for k, v := range t {
		b.Changes = append(b.Changes, put(k, v))
	}
	return b
}

func batch(rev int64, changes ...Change) Batch { return Batch{Revision: rev, Changes: changes} }

// testLogger discards logs unless the test runs with -v, where they help.
func testLogger(t testing.TB) *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug})).With("test", t.Name())
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// open opens a writer on a fresh directory "target" inside a temporary directory, so tests can
// check that nothing appears beside it.
func open(t testing.TB, layout Layout) (*Writer, string) {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "target")
	return openAt(t, Options{Dir: dir, Layout: layout, UID: -1, GID: -1}), dir
}

func openAt(t testing.TB, opts Options) *Writer {
	t.Helper()
	if opts.Logger == nil {
		opts.Logger = testLogger(t)
	}
	w, err := Open(opts)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { w.Close() })
	return w
}

func mustApply(t testing.TB, w *Writer, b Batch) Result {
	t.Helper()
	res, err := w.Apply(b)
	if err != nil {
		t.Fatalf("Apply(rev %d): %v", b.Revision, err)
	}
	return res
}

// visible reads the target the way a consumer does: every entry not starting with "..",
// following symlinks.
func visible(t testing.TB, dir string) tree {
	t.Helper()
	got := tree{}
	var walk func(abs, rel string)
	walk = func(abs, rel string) {
		entries, err := os.ReadDir(abs)
		if err != nil {
			t.Fatalf("reading %s: %v", abs, err)
		}
		for _, e := range entries {
			if rel == "" && strings.HasPrefix(e.Name(), "..") {
				continue
			}
			p := filepath.Join(rel, e.Name())
			fi, err := os.Stat(filepath.Join(abs, e.Name()))
			if err != nil {
				t.Fatalf("dangling entry %s: %v", p, err)
			}
			if fi.IsDir() {
				walk(filepath.Join(abs, e.Name()), p)
				continue
			}
			data, err := os.ReadFile(filepath.Join(abs, e.Name()))
			if err != nil {
				t.Fatalf("reading %s: %v", p, err)
			}
			got[p] = string(data)
		}
	}
	walk(dir, "")
	return got
}

// dataTree reads the version ..data points at (Atomic layout), resolving ..data once.
func dataTree(t testing.TB, dir string) (string, tree) {
	t.Helper()
	target, err := os.Readlink(filepath.Join(dir, "..data"))
	if err != nil {
		t.Fatalf("reading ..data: %v", err)
	}
	return target, versionTree(t, filepath.Join(dir, target))
}

// versionTree reads a version as a reader does: its subdirectories are symlinks to the
// directory objects it shares with other versions, followed.
func versionTree(t testing.TB, vdir string) tree {
	t.Helper()
	got := tree{}
	var walk func(abs, rel string)
	walk = func(abs, rel string) {
		entries, err := os.ReadDir(abs)
		if err != nil {
			t.Fatalf("reading %s: %v", abs, err)
		}
		for _, e := range entries {
			p, name := filepath.Join(rel, e.Name()), filepath.Join(abs, e.Name())
			switch {
			case e.Type()&fs.ModeSymlink != 0:
				target, err := os.Readlink(name)
				if err != nil || !strings.HasPrefix(target, "../..") {
					t.Errorf("%s: a symlink to %q in a version", name, target)
					continue
				}
				walk(name, p)
			case e.Type().IsRegular():
				data, err := os.ReadFile(name)
				if err != nil {
					t.Fatal(err)
				}
				got[p] = string(data)
			default:
				t.Errorf("%s: not a regular file or a directory link in a version", name)
			}
		}
	}
	walk(vdir, "")
	// A bucketed version holds NAME under ..X/..Y/..Z/NAME; a root with both forms (a
	// switch between them) holds each name twice, and both must agree.
	keys := tree{}
	for p, v := range got {
		k := keyOf(p)
		if old, ok := keys[k]; ok && old != v {
			t.Errorf("%s: %s holds %q, but another form holds %q", vdir, p, v, old)
		}
		keys[k] = v
	}
	return keys
}

func sums(t tree) map[string][32]byte {
	m := make(map[string][32]byte, len(t))
	for p, v := range t {
		m[p] = sha256.Sum256([]byte(v))
	}
	return m
}

func equalTrees(a, b tree) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

func assertTree(t testing.TB, what string, got, want tree) {
	t.Helper()
	if !equalTrees(got, want) {
		t.Errorf("%s:\n got %q\nwant %q", what, got, want)
	}
}

func assertFiles(t testing.TB, w *Writer, want tree) {
	t.Helper()
	got, ws := w.Files(), sums(want)
	if len(got) != len(ws) {
		t.Errorf("Files() has %d paths, want %d: %v", len(got), len(ws), keysOf(got))
		return
	}
	for p, s := range ws {
		if got[p] != s {
			t.Errorf("Files()[%q] is wrong or missing", p)
		}
	}
}

func keysOf[V any](m map[string]V) []string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	return ks
}

// names lists a directory.
func names(t testing.TB, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var ns []string
	for _, e := range entries {
		ns = append(ns, e.Name())
	}
	return ns
}

func writeFile(t testing.TB, name, data string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(name), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(name, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
}

func readFile(t testing.TB, name string) string {
	t.Helper()
	data, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	return string(data)
}

// copyTree copies src to dst, keeping symlinks as symlinks; hard links become copies. It is
// the state a kill -9 at this instant would leave on disk.
func copyTree(t testing.TB, src, dst string) {
	t.Helper()
	err := filepath.WalkDir(src, func(name string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, name)
		to := filepath.Join(dst, rel)
		fi, err := d.Info()
		if err != nil {
			return err
		}
		switch {
		case d.IsDir():
			return os.Mkdir(to, fi.Mode().Perm())
		case d.Type()&fs.ModeSymlink != 0:
			target, err := os.Readlink(name)
			if err != nil {
				return err
			}
			return os.Symlink(target, to)
		default:
			data, err := os.ReadFile(name)
			if err != nil {
				return err
			}
			return os.WriteFile(to, data, fi.Mode().Perm())
		}
	})
	if err != nil {
		t.Fatalf("copying %s: %v", src, err)
	}
}

// filesWrittenOnce counts the regular files under dir (the lock aside) and reports each that
// has more than one link: a value written in place has one, a spooled one linked in has two.
func filesWrittenOnce(t *testing.T, dir string) (files int) {
	t.Helper()
	filepath.WalkDir(dir, func(name string, d os.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() || filepath.Base(name) == lockName {
			return err
		}
		fi, err := os.Lstat(name)
		if err != nil {
			return err
		}
		files++
		if n := fi.Sys().(*syscall.Stat_t).Nlink; n != 1 {
			t.Errorf("%s has %d links: not written in place", name, n)
		}
		return nil
	})
	return files
}

// mountTmpfs mounts a tmpfs with the given options (a small one, for a full disk) on a new
// directory, unmounted at the end of the test. It skips the test where mounting cannot work.
func mountTmpfs(t *testing.T, options string) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("mounting a tmpfs needs root")
	}
	mnt := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", options, "tmpfs", mnt).CombinedOutput(); err != nil {
		t.Skipf("cannot mount a tmpfs (%s): %v: %s", options, err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", mnt).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v: %s", mnt, err, out)
		}
	})
	return mnt
}
