package writer

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
)

// applyStream applies b as a streamed full batch, page changes at a time, spooling every
// value (none is held in memory).
func applyStream(t testing.TB, w *Writer, b Batch, page int) (Result, error) {
	t.Helper()
	return applyStreamHolding(t, w, b, page, 0)
}

func applyStreamHolding(t testing.TB, w *Writer, b Batch, page, holdMax int) (Result, error) {
	t.Helper()
	s, err := streamPages(w, b, page, holdMax)
	if err != nil {
		return Result{}, err
	}
	return s.Commit()
}

// streamPages begins a stream of full batch b and adds its changes in pages of page keys,
// holding at most holdMax bytes before the workers start: all but the Commit.
func streamPages(w *Writer, b Batch, page, holdMax int) (*Stream, error) {
	s, err := w.BeginFull(b.Revision)
	if err != nil {
		return nil, err
	}
	s.holdMax = holdMax
	s.Expect(len(b.Changes))
	for c := range slices.Chunk(b.Changes, page) {
		if err := s.Add(c); err != nil {
			return nil, err
		}
	}
	return s, nil
}

func mustStream(t testing.TB, w *Writer, b Batch, page int) Result {
	t.Helper()
	res, err := applyStream(t, w, b, page)
	if err != nil {
		t.Fatalf("streamed full batch (rev %d): %v", b.Revision, err)
	}
	return res
}

// streamDirs are the directories a stream writes its values into.
func streamDirs(s *Stream) []string {
	if !s.direct {
		return []string{s.name}
	}
	var dirs []string
	for _, o := range s.objs {
		dirs = append(dirs, o.name)
	}
	return dirs
}

// assertNoSpool fails if a spool (or any other leftover but the previous version) is in dir.
func assertNoSpool(t *testing.T, w *Writer, dir string) {
	t.Helper()
	w.waitSweep()
	w.waitPrune() // the version before the previous one goes in the background
	kept := map[string]bool{}
	if w.opts.Layout == Atomic {
		kept = reachable(t, dir)
	}
	for _, obj := range w.retired {
		kept[obj] = true
	}
	for _, n := range names(t, dir) {
		if versionName.MatchString(n) && !kept[n] || strings.HasPrefix(n, tmpPrefix) {
			t.Errorf("leftover %s", n)
		}
	}
}

// TestStreamIsOneApply checks that a full batch streamed in pages has the effect of one Apply
// of it, for a first sync and for a resync that changes, removes, shadows and skips keys.
func TestStreamIsOneApply(t *testing.T) {
	first := tree{"a": "A1", "sub/b": "B1", "gone": "G", "dir/x": "X", "sub/deep/y": "Y", "keep/deep/k": "K", "e": ""}
	next := tree{"a": "A2", "sub/b": "B1", "new/c": "C", "sub/n": "N", "dir": "a file now", "keep/deep/k": "K", "e": ""}
	for _, layout := range layouts {
		t.Run(layout.String(), func(t *testing.T) {
			w, dir := open(t, layout)
			ref, refDir := open(t, layout)
			for i, want := range []tree{first, next} {
				b := full(int64(i+1), want)
				b.Changes = append(b.Changes, put("../evil", "x"), put("next/shadowed", "S"), put("next/shadowed/k", "K2"),
					put("twice", "T1"), put("twice", "T2"), put("dropped", "D"), put("dir/dropped", "D"),
					del("dropped"), del("dir/dropped"), put("top", "first"), put("top/k", "below"),
					put("again", "1"), put("again", "2"), del("again"))
				got := mustStream(t, w, b, 2)
				exp := mustApply(t, ref, b)
				got.Version, exp.Version = "", "" // two targets: their objects' names differ
				if got != exp {
					t.Errorf("batch %d: streamed Result %+v, Apply's %+v", i+1, got, exp)
				}
				assertTree(t, "streamed", visible(t, dir), visible(t, refDir))
				assertFiles(t, w, visible(t, refDir))
				assertNoSpool(t, w, dir)
			}
			// The shadowed key comes back from memory when the key below it goes.
			mustApply(t, w, batch(3, del("next/shadowed/k")))
			if got := readFile(t, filepath.Join(dir, "next/shadowed")); got != "S" {
				t.Errorf("next/shadowed = %q, want S", got)
			}
			// The same full batch again changes nothing.
			b := full(4, next)
			b.Changes = append(b.Changes, put("next/shadowed", "S"), put("twice", "T2"), put("top", "first"), put("top/k", "below"))
			if res := mustStream(t, w, b, 3); res.Changed {
				t.Errorf("an unchanged streamed full batch changed something: %+v", res)
			}
			// The writer is free again for ordinary batches.
			mustApply(t, w, batch(5, put("a", "A3")))
			if got := readFile(t, filepath.Join(dir, "a")); got != "A3" {
				t.Errorf("a = %q, want A3", got)
			}
		})
	}
}

// TestStreamSpoolsOnlyPastHoldMax: with a spool (Plain), a small snapshot is held in memory and
// makes no spool; a bigger one holds its first values and spools the rest, with the same
// result. Written in place (Atomic), nothing is held: a held value would be written at Commit,
// after the last page, instead of while the pages arrive.
func TestStreamSpoolsOnlyPastHoldMax(t *testing.T) {
	want := tree{}
	for i := range 40 {
		want[fmt.Sprintf("d%d/k%02d", i%3, i)] = strings.Repeat(fmt.Sprint(i%10), 100)
	}
	for _, layout := range layouts {
		for _, hold := range []int{1 << 20, 1000} {
			t.Run(fmt.Sprintf("%s/hold %d", layout, hold), func(t *testing.T) {
				w, dir := open(t, layout)
				spooled := 0
				w.step = func(step string) {
					if step == "spooled" {
						spooled++
					}
				}
				if _, err := applyStreamHolding(t, w, full(1, want), 7, hold); err != nil {
					t.Fatal(err)
				}
				if layout == Atomic && spooled != 40 ||
					layout == Plain && (hold > 4000 && spooled != 0 || hold < 4000 && spooled != 40-10) {
					t.Errorf("holding %d bytes, %d values spooled", hold, spooled)
				}
				assertTree(t, "streamed", visible(t, dir), want)
				assertFiles(t, w, want)
				assertNoSpool(t, w, dir)
			})
		}
	}
}

// TestStreamFailureKeepsOldVersion breaks a streamed resync halfway (the spool disappears, as
// a write error would stop it; or the caller aborts, as a failed etcd read does): the old
// version stays live and whole, the writer's model is the old one (an ordinary batch applies
// on top of it), and the next full batch converges.
func TestStreamFailureKeepsOldVersion(t *testing.T) {
	old := tree{"a": "A1", "sub/b": "B1", "gone": "G"}
	next := tree{"a": "A2", "sub/b": "B2", "new/c": "C"}
	for _, layout := range layouts {
		for _, how := range []string{"write error", "abort"} {
			t.Run(layout.String()+"/"+how, func(t *testing.T) {
				w, dir := open(t, layout)
				mustApply(t, w, full(1, old))
				s, err := w.BeginFull(2)
				if err != nil {
					t.Fatal(err)
				}
				s.holdMax = 0
				if err := s.Add([]Change{put("a", "A2"), put("sub/b", "B2")}); err != nil {
					t.Fatal(err)
				}
				if how == "abort" {
					s.Abort()
				} else {
					// Let the first page be written, then take away where it went.
					s.stopWorkers()
					for _, d := range streamDirs(s) {
						if err := os.RemoveAll(filepath.Join(dir, d)); err != nil {
							t.Fatal(err)
						}
					}
					s.startWorkers()
					s.Add([]Change{put("new/c", "C")})
					if _, err := s.Commit(); err == nil {
						t.Fatal("Commit succeeded without its spool")
					} else {
						t.Logf("Commit: %v", err)
					}
				}
				assertTree(t, "after the failed stream", visible(t, dir), old)
				assertFiles(t, w, old)
				assertNoSpool(t, w, dir)
				if _, err := w.Apply(batch(2, put("z", "Z"))); err != nil {
					t.Fatal(err)
				}
				withZ := tree{"z": "Z"}
				for k, v := range old {
					withZ[k] = v
				}
				assertTree(t, "an ordinary batch after the failed stream", visible(t, dir), withZ)
				mustStream(t, w, full(3, next), 2)
				assertTree(t, "after the next full batch", visible(t, dir), next)
				assertFiles(t, w, next)
				assertNoSpool(t, w, dir)
			})
		}
	}
}

// TestStreamCheckRefusedKeepsModel: a check that refuses the streamed version keeps the old
// one live; the next Apply (an empty batch) publishes the new model, values read back from
// the spool included.
func TestStreamCheckRefusedKeepsModel(t *testing.T) {
	for _, layout := range layouts {
		t.Run(layout.String(), func(t *testing.T) {
			refuse := true
			dir := filepath.Join(t.TempDir(), "target")
			w := openAt(t, Options{Dir: dir, Layout: layout, UID: -1, GID: -1, Check: func(string) error {
				if refuse {
					return fmt.Errorf("refused")
				}
				return nil
			}})
			refuse = false
			mustApply(t, w, full(1, tree{"a": "A1"}))
			refuse = true
			next := tree{"a": "A2", "b/c": "C"}
			if _, err := applyStream(t, w, full(2, next), 1); err == nil {
				t.Fatal("a refused version was committed")
			}
			assertTree(t, "after the refusal", visible(t, dir), tree{"a": "A1"})
			assertNoSpool(t, w, dir)
			refuse = false
			mustApply(t, w, batch(3))
			assertTree(t, "after the next Apply", visible(t, dir), next)
		})
	}
}

// TestStreamDiskFullConvergesAtTheNextResync: a streamed resync that finds the disk full
// (the previous version still takes room, kept for its readers) fails and keeps the live
// version; it frees the previous version, so the next resync fits.
func TestStreamDiskFullConvergesAtTheNextResync(t *testing.T) {
	mnt := mountTmpfs(t, "size=1m")
	dir := filepath.Join(mnt, "target")
	w := openAt(t, Options{Dir: dir, UID: -1, GID: -1})
	value := func(c byte) string { return strings.Repeat(string(c), 200_000) }
	mustApply(t, w, full(1, tree{"a": value('1'), "b": value('1')}))
	mustApply(t, w, batch(2, put("a", value('2')), put("b", value('2'))))
	next := tree{"a": value('3'), "b": value('3')}
	_, err := applyStream(t, w, full(3, next), 1)
	if err != nil {
		if !errors.Is(err, syscall.ENOSPC) {
			t.Fatalf("the failed resync's error does not say no space left: %v", err)
		}
		assertTree(t, "after the failed resync", visible(t, dir), tree{"a": value('2'), "b": value('2')})
		assertNoSpool(t, w, dir)
		_, err = applyStream(t, w, full(4, next), 1)
	}
	if err != nil {
		t.Fatalf("the resync after a full disk did not fit, although it would without the previous version: %v", err)
	}
	assertTree(t, "after the resync", visible(t, dir), next)
}

// TestStreamAbortLeavesTargetAsItWas: a streamed full batch aborted after its values were
// written (an etcd read failed halfway), with new top-level names, leaves every entry of the
// target as it was: no link made for a new name, no directory.
func TestStreamAbortLeavesTargetAsItWas(t *testing.T) {
	old := tree{"a": "A1", "sub/b": "B1"}
	next := tree{"a": "A2", "sub/b": "B2", "new": "N", "new2/c": "C", "z": "Z"}
	for _, layout := range layouts {
		for _, first := range []bool{true, false} {
			t.Run(fmt.Sprintf("%s/first sync %v", layout, first), func(t *testing.T) {
				w, dir := open(t, layout)
				if !first {
					mustApply(t, w, full(1, old))
				}
				before := listing(t, dir)
				s, err := w.BeginFull(2)
				if err != nil {
					t.Fatal(err)
				}
				s.holdMax = 0
				if err := s.Add(full(2, next).Changes); err != nil {
					t.Fatal(err)
				}
				s.stopWorkers() // every value written, every early link made
				s.startWorkers()
				s.Abort()
				if after := listing(t, dir); !slices.Equal(before, after) {
					t.Errorf("the target after the aborted stream:\n%q\nbefore it:\n%q", after, before)
				}
				want := old
				if first {
					want = tree{}
				}
				assertFiles(t, w, want)
				mustStream(t, w, full(3, next), 2)
				assertTree(t, "after the next full batch", visible(t, dir), next)
			})
		}
	}
}

// listing is every entry at the top of dir, with its symlink target.
func listing(t *testing.T, dir string) []string {
	t.Helper()
	var out []string
	for _, n := range names(t, dir) {
		if target, err := os.Readlink(filepath.Join(dir, n)); err == nil {
			n += " -> " + target
		}
		out = append(out, n)
	}
	return out
}

// TestStreamWritesEachValueOnce: with the Atomic layout a streamed first sync writes each value
// straight into the new version: when it is staged, every file has one link (a spool would
// hold a second), and Commit leaves nothing to remove.
func TestStreamWritesEachValueOnce(t *testing.T) {
	want := tree{}
	for i := range 50 {
		want[fmt.Sprintf("k%02d", i)] = fmt.Sprint(i)
		want[fmt.Sprintf("d%d/k%02d", i%3, i)] = fmt.Sprint(i)
	}
	w, dir := open(t, Atomic)
	checked := 0
	w.step = func(step string) {
		if step == "staged" {
			checked += filesWrittenOnce(t, dir)
		}
	}
	mustStream(t, w, full(1, want), 7)
	if checked != len(want) {
		t.Errorf("%d files staged, want %d", checked, len(want))
	}
	if w.sweeping != nil {
		t.Error("a spool is being removed after the commit")
	}
	assertTree(t, "streamed", visible(t, dir), want)
	assertNoSpool(t, w, dir)
}

// TestOpenChecksLinksOnlyWhenThereAreAny: a target with no entry but ours (a first start) has
// no link to check, so the first batch does not read back every link it made; a link a crash
// left (made early by a stream) is still removed by the first batch.
func TestOpenChecksLinksOnlyWhenThereAreAny(t *testing.T) {
	w, _ := open(t, Atomic)
	if w.relink {
		t.Error("an empty target is to be checked for stale links")
	}
	dir := filepath.Join(t.TempDir(), "target")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("..data/stale", filepath.Join(dir, "stale")); err != nil {
		t.Fatal(err)
	}
	w = openAt(t, Options{Dir: dir, UID: -1, GID: -1})
	if !w.relink {
		t.Error("a target with a link in it is not checked for stale links")
	}
	mustStream(t, w, full(1, tree{"a": "A"}), 1)
	assertTree(t, "after the first sync", visible(t, dir), tree{"a": "A"})
}

// TestStreamKeyWrittenThenRemovedLeavesNoLink: a top-level key written (and linked) while the
// stream arrived, given again and then removed in a later page, leaves no link behind, after
// Commit or Abort.
func TestStreamKeyWrittenThenRemovedLeavesNoLink(t *testing.T) {
	for _, commit := range []bool{true, false} {
		t.Run(fmt.Sprintf("commit %v", commit), func(t *testing.T) {
			w, dir := open(t, Atomic)
			s, err := w.BeginFull(1)
			if err != nil {
				t.Fatal(err)
			}
			for _, page := range [][]Change{{put("x", "X"), put("again", "1")}, {put("again", "2")}, {del("again")}} {
				if err := s.Add(page); err != nil {
					t.Fatal(err)
				}
				s.stopWorkers() // each page written and linked before the next
				s.startWorkers()
			}
			if !commit {
				s.Abort()
				mustApply(t, w, batch(2)) // a link the abort could not name goes at the next batch
				assertTree(t, "after the aborted stream and a batch", visible(t, dir), tree{})
				return
			}
			if _, err := s.Commit(); err != nil {
				t.Fatal(err)
			}
			assertTree(t, "after the stream", visible(t, dir), tree{"x": "X"})
		})
	}
}

// TestStreamFirstSyncNameTakenMeanwhile: a file that is not ours takes a top-level name while
// a first sync streams in, so the stream cannot link it early. The commit must still treat
// the name as one to link (and log it), not as linked: once the file is gone, the next change
// links it.
func TestStreamFirstSyncNameTakenMeanwhile(t *testing.T) {
	w, dir := open(t, Atomic)
	s, err := w.BeginFull(1)
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(dir, "b"), "foreign")
	for _, page := range [][]Change{{put("a", "A"), put("b", "B")}, {put("c", "C")}} {
		if err := s.Add(page); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.Commit(); err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]string{"a": "A", "b": "foreign", "c": "C", "..data/b": "B"} {
		if got := readFile(t, filepath.Join(dir, name)); got != want {
			t.Errorf("%s = %q, want %q", name, got, want)
		}
	}
	if err := os.Remove(filepath.Join(dir, "b")); err != nil {
		t.Fatal(err)
	}
	mustApply(t, w, batch(2, put("a", "A2")))
	if got := readFile(t, filepath.Join(dir, "b")); got != "B" {
		t.Errorf("b = %q once the foreign file is gone, want B", got)
	}
}

// TestFirstSyncKeepsNoValue: after a first sync large enough that its live tree is made on
// the other core (parallelLive), streamed or in one Apply, the writer holds a sum per key
// and no value, as after any Apply; the live tree is every key.
func TestFirstSyncKeepsNoValue(t *testing.T) {
	b := flatBatch(parallelLive+100, 10)
	b.Changes = append(b.Changes, put("dir/a", "A"), put("dir/b", "B"))
	for _, streamed := range []bool{false, true} {
		t.Run(fmt.Sprint("streamed=", streamed), func(t *testing.T) {
			w, _ := open(t, Atomic)
			if streamed {
				mustStream(t, w, b, 100)
			} else {
				mustApply(t, w, b)
			}
			for p, e := range w.keys {
				if e.held || e.value != nil || e.spool != "" {
					t.Fatalf("key %s: held %v, value %q, spool %q after the sync", p, e.held, e.value, e.spool)
				}
				if w.live[p] != e.sum {
					t.Fatalf("key %s: live sum differs from the model's", p)
				}
			}
			if len(w.live) != len(b.Changes) {
				t.Errorf("%d live paths, want %d", len(w.live), len(b.Changes))
			}
		})
	}
}
