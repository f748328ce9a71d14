package writer

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// etcd returns a nil value for an empty one: nil is a value, an empty file, in every path.
func TestEmptyValueIsAnEmptyFile(t *testing.T) {
	empty := func(key string) Change { return Change{Key: key} } // Value nil, as etcd sends ""
	for _, layout := range layouts {
		t.Run(layout.String(), func(t *testing.T) {
			w, dir := open(t, layout)
			// First sync.
			res, err := w.Apply(Batch{Revision: 1, Full: true, Changes: []Change{empty("e"), put("secret", "s3cr3t"), put("a", "A")}})
			if err != nil {
				t.Fatalf("first sync with an empty value: %v", err)
			}
			if res.Written != 3 {
				t.Errorf("first sync: %+v", res)
			}
			assertTree(t, "after the first sync", visible(t, dir), tree{"e": "", "secret": "s3cr3t", "a": "A"})

			// A later batch clears the secret: its bytes must go.
			res = mustApply(t, w, batch(2, empty("secret")))
			if !res.Changed || res.Written != 1 {
				t.Errorf("clearing a value: %+v, want one file written", res)
			}
			assertTree(t, "after clearing", visible(t, dir), tree{"e": "", "secret": "", "a": "A"})
			assertFiles(t, w, tree{"e": "", "secret": "", "a": "A"})
			if res := mustApply(t, w, batch(3, empty("secret"))); res.Changed {
				t.Errorf("clearing again changed something: %+v", res)
			}

			// Other keys still apply in the next batches.
			mustApply(t, w, batch(4, put("a", "A2"), empty("new")))
			assertTree(t, "later", visible(t, dir), tree{"e": "", "secret": "", "a": "A2", "new": ""})

			// An empty key shadowed by a directory comes back empty.
			mustApply(t, w, batch(5, put("e/x", "X")))
			mustApply(t, w, batch(6, del("e/x")))
			assertTree(t, "shadowed and back", visible(t, dir), tree{"e": "", "secret": "", "a": "A2", "new": ""})

			// After a restart, the same Full batch changes nothing.
			w.Close()
			w = openAt(t, Options{Dir: dir, Layout: layout, UID: -1, GID: -1})
			if res := mustApply(t, w, Batch{Revision: 7, Full: true, Changes: []Change{empty("e"), empty("secret"), put("a", "A2"), empty("new")}}); res.Changed {
				t.Errorf("after a restart: %+v, want no change", res)
			}
		})
	}
	t.Run("plain/foreign file", func(t *testing.T) {
		w, dir := open(t, Plain)
		writeFile(t, filepath.Join(dir, "f"), "foreign content")
		mustApply(t, w, Batch{Revision: 1, Full: true, Changes: []Change{empty("f")}})
		if got := readFile(t, filepath.Join(dir, "f")); got != "" {
			t.Errorf("f = %q, want empty", got)
		}
	})
}

// A second writer on a target in use is refused with the holder's pid; the kernel drops the
// lock when the holder closes or dies.
func TestSecondWriterOnATargetIsRefused(t *testing.T) {
	for _, layout := range layouts {
		t.Run(layout.String(), func(t *testing.T) {
			w, dir := open(t, layout)
			mustApply(t, w, full(1, tree{"x": "X"}))
			_, err := Open(Options{Dir: dir, Layout: layout, UID: -1, GID: -1, Logger: testLogger(t)})
			if err == nil {
				t.Fatal("a second writer opened the same target")
			}
			for _, want := range []string{dir, "pid " + strconv.Itoa(os.Getpid())} {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q does not name %q", err, want)
				}
			}
			assertTree(t, "the first writer's files", visible(t, dir), tree{"x": "X"})
			w.Close()
			w2 := openAt(t, Options{Dir: dir, Layout: layout, UID: -1, GID: -1})
			mustApply(t, w2, full(2, tree{"y": "Y"}))
			assertTree(t, "after the first closed", visible(t, dir), tree{"y": "Y"})
		})
	}
}

// A holder killed by SIGKILL leaves the lock file, but not the lock: the kernel drops it.
func TestLockOfAKilledHolderIsFree(t *testing.T) {
	if dir := os.Getenv("WRITER_HOLD_LOCK"); dir != "" {
		if _, err := Open(Options{Dir: dir, UID: -1, GID: -1}); err != nil {
			fmt.Println("error:", err)
			os.Exit(1)
		}
		fmt.Println("locked")
		time.Sleep(time.Hour) // until the test kills it
	}
	dir := filepath.Join(t.TempDir(), "target")
	cmd := exec.Command(os.Args[0], "-test.run=^TestLockOfAKilledHolderIsFree$")
	cmd.Env = append(os.Environ(), "WRITER_HOLD_LOCK="+dir)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	line, _ := bufio.NewReader(out).ReadString('\n')
	if line != "locked\n" {
		cmd.Process.Kill()
		cmd.Wait()
		t.Fatalf("the holder said %q", line)
	}
	_, err = Open(Options{Dir: dir, UID: -1, GID: -1, Logger: testLogger(t)})
	if err == nil || !strings.Contains(err.Error(), "pid "+strconv.Itoa(cmd.Process.Pid)) {
		t.Errorf("Open while another process holds the target: %v, want its pid %d named", err, cmd.Process.Pid)
	}
	cmd.Process.Kill()
	cmd.Wait()
	openAt(t, Options{Dir: dir, UID: -1, GID: -1})
}

// Keys deeper than maxDepth are skipped like other unsafe keys, and cost nothing later.
func TestTooDeepKeyIsSkippedAndCounted(t *testing.T) {
	for _, layout := range layouts {
		t.Run(layout.String(), func(t *testing.T) {
			w, dir := open(t, layout)
			deep := strings.Repeat("a/", 1999) + "a"
			limit := strings.Repeat("b/", maxDepth-1) + "b"
			start := time.Now()
			res := mustApply(t, w, Batch{Revision: 1, Full: true, Changes: []Change{put(deep, "D"), put(limit, "L"), put("x", "X")}})
			if res.Skipped != 1 || res.Written != 2 {
				t.Errorf("Result = %+v, want the 2000-level key skipped, the others written", res)
			}
			assertTree(t, "visible", visible(t, dir), tree{limit: "L", "x": "X"})
			mustApply(t, w, batch(2, put("x", "X2")))
			if d := time.Since(start); d > 5*time.Second {
				t.Errorf("two applies took %v", d)
			}
		})
	}
}

// Directories stay usable by the writer whatever the mode; files get exactly the mode.
func TestEveryModeLeavesDirectoriesWritable(t *testing.T) {
	for _, mode := range []os.FileMode{0o400, 0o440, 0o200, 0o600, 0o644, 0o664} {
		for _, layout := range layouts {
			t.Run(fmt.Sprintf("%s/%04o", layout, mode), func(t *testing.T) {
				dir := filepath.Join(t.TempDir(), "target")
				w := openAt(t, Options{Dir: dir, Layout: layout, Mode: mode, UID: -1, GID: -1})
				mustApply(t, w, full(1, tree{"a": "A", "sub/b": "B"}))
				mustApply(t, w, batch(2, put("sub/c", "C")))
				walkOurs(t, dir, func(p string, fi fs.FileInfo) {
					switch {
					case fi.IsDir():
						if fi.Mode().Perm()&0o700 != 0o700 {
							t.Errorf("%s: directory mode %04o, not usable by its owner", p, fi.Mode().Perm())
						}
						if fi.Mode().Perm()&0o022 != 0 {
							t.Errorf("%s: directory mode %04o is writable by others", p, fi.Mode().Perm())
						}
					case fi.Mode().IsRegular() && !strings.HasPrefix(fi.Name(), ".."):
						if fi.Mode().Perm() != mode {
							t.Errorf("%s: mode %04o, want %04o", p, fi.Mode().Perm(), mode)
						}
					}
				})
			})
		}
	}
}

// walkOurs calls fn for everything under dir except dir itself, without following symlinks.
func walkOurs(t *testing.T, dir string, fn func(p string, fi fs.FileInfo)) {
	t.Helper()
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if p == dir {
			return nil
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		fn(p, fi)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// Tightening the mode leaves nothing under the target more readable, from the first sync on.
func TestTighterModeLeavesNothingMoreReadable(t *testing.T) {
	for _, layout := range layouts {
		t.Run(layout.String(), func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "target")
			w := openAt(t, Options{Dir: dir, Layout: layout, Mode: 0o644, UID: -1, GID: -1})
			mustApply(t, w, full(1, tree{"a": "A", "sub/b": "B"}))
			mustApply(t, w, batch(2, put("a", "A2"))) // a previous version exists
			w.Close()
			w = openAt(t, Options{Dir: dir, Layout: layout, Mode: 0o600, UID: -1, GID: -1})
			mustApply(t, w, full(3, tree{"a": "A2", "sub/b": "B"}))
			walkOurs(t, dir, func(p string, fi fs.FileInfo) {
				if fi.Mode()&fs.ModeSymlink != 0 {
					return
				}
				if perm := fi.Mode().Perm(); perm&0o077 != 0 {
					t.Errorf("%s: mode %04o is readable by others after tightening to 0600", p, perm)
				}
			})
			assertTree(t, "visible", visible(t, dir), tree{"a": "A2", "sub/b": "B"})
		})
	}
}

// A target removed while running is recreated at the next Apply; until the next Full batch
// fills it, Apply fails.
func TestRemovedTargetIsRecreated(t *testing.T) {
	for _, layout := range layouts {
		t.Run(layout.String(), func(t *testing.T) {
			w, dir := open(t, layout)
			mustApply(t, w, full(1, tree{"a": "A", "sub/b": "B"}))
			if err := os.RemoveAll(dir); err != nil {
				t.Fatal(err)
			}
			if _, err := w.Apply(batch(2, put("c", "C"))); err != nil {
				t.Logf("the batch after the removal: %v", err)
				if !strings.Contains(err.Error(), "removed") {
					t.Errorf("the error does not say the target was removed: %v", err)
				}
			}
			if _, err := os.Stat(dir); err != nil {
				t.Errorf("the target was not recreated at the next batch: %v", err)
			}
			want := tree{"a": "A", "sub/b": "B", "c": "C"}
			mustApply(t, w, full(3, want))
			assertTree(t, "after the resync", visible(t, dir), want)
			assertFiles(t, w, want)
			mustApply(t, w, batch(4, put("a", "A4")))
			want["a"] = "A4"
			assertTree(t, "later", visible(t, dir), want)
			// Another writer is still refused.
			if w2, err := Open(Options{Dir: dir, Layout: layout, UID: -1, GID: -1, Logger: testLogger(t)}); err == nil {
				w2.Close()
				t.Error("the recreated target is not locked")
			}
		})
	}
}

// On a full disk the writer removes what is not live and tries again at once.
func TestDiskFullRemovesWhatIsNotLiveAndRetries(t *testing.T) {
	mnt := mountTmpfs(t, "size=1m")
	var logs bytes.Buffer
	dir := filepath.Join(mnt, "target")
	w := openAt(t, Options{Dir: dir, UID: -1, GID: -1,
		Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	value := func(c byte) string { return strings.Repeat(string(c), 200_000) }
	mustApply(t, w, full(1, tree{"a": value('1'), "b": value('1')}))
	mustApply(t, w, batch(2, put("a", value('2')), put("b", value('2'))))
	// Two versions of 400 KB: the third does not fit beside them.
	res, err := w.Apply(batch(3, put("a", value('3')), put("b", value('3'))))
	if err != nil {
		t.Fatalf("the third version did not fit although it would without the previous one: %v", err)
	}
	if !res.Changed {
		t.Errorf("Result = %+v", res)
	}
	assertTree(t, "visible", visible(t, dir), tree{"a": value('3'), "b": value('3')})
	if !strings.Contains(logs.String(), "no space left") {
		t.Errorf("no log line says no space left:\n%s", logs.String())
	}
	for _, n := range names(t, dir) {
		if strings.HasPrefix(n, "..tmp") {
			t.Errorf("leftover %s", n)
		}
	}
	var err2 error
	if _, err2 = w.Apply(batch(4, put("a", value('4')), put("b", strings.Repeat("x", 900_000)))); err2 == nil {
		t.Fatal("a version larger than the disk was applied")
	}
	if !strings.Contains(err2.Error(), "no space left") || !errors.Is(err2, syscall.ENOSPC) {
		t.Errorf("the error does not say no space left: %v", err2)
	}
	assertTree(t, "visible after the failure", visible(t, dir), tree{"a": value('3'), "b": value('3')})
}
