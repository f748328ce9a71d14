package writer

import (
	"os"
	"path/filepath"
	"slices"
	"testing"
)

// TestRemoveObject removes objects on the target's descriptor: with the names the writer
// knows, with fewer names than the object holds, and with a real subdirectory (a version
// made before directories were shared), never following a symlink out of the target.
func TestRemoveObject(t *testing.T) {
	outside := t.TempDir()
	writeFile(t, filepath.Join(outside, "keep"), "not ours")
	for _, tc := range []struct {
		name  string
		known []string // nil: the writer does not know them
	}{
		{"listed", nil},
		{"known", []string{"a", "b", "out", "sub"}},
		{"fewer known", []string{"a"}},
		{"known, some gone", []string{"a", "b", "out", "sub", "gone"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w, dir := open(t, Atomic)
			obj := filepath.Join(dir, "..2026_01_01_00_00_00.000000000")
			if err := os.Mkdir(obj, 0o700); err != nil {
				t.Fatal(err)
			}
			writeFile(t, filepath.Join(obj, "a"), "a")
			writeFile(t, filepath.Join(obj, "b"), "b")
			if err := os.Symlink(outside, filepath.Join(obj, "out")); err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink("../..2026_01_01_00_00_00.000000001", filepath.Join(obj, "sub")); err != nil {
				t.Fatal(err)
			}
			if !slices.Contains(tc.known, "b") {
				// A real subdirectory, which only a listing finds.
				writeFile(t, filepath.Join(obj, "real", "deep", "c"), "c")
			}
			if err := removeObject(w.root, w.topFd, filepath.Base(obj), tc.known); err != nil {
				t.Fatalf("removeObject: %v", err)
			}
			if _, err := os.Lstat(obj); !os.IsNotExist(err) {
				t.Errorf("the object is still there: %v", err)
			}
			if got := readFile(t, filepath.Join(outside, "keep")); got != "not ours" {
				t.Errorf("the file behind a symlink changed: %q", got)
			}
			if err := removeObject(w.root, w.topFd, filepath.Base(obj), tc.known); err != nil {
				t.Errorf("removing it again: %v", err)
			}
		})
	}
}
