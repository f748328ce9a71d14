package writer

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"syscall"
	"testing"
	"time"
)

// TestAtomicOneKeyChangeInAWideFlatTreeCostsLittle counts the entries a one-key change
// creates among 10000 top-level keys: the top level is bucketed, so a change makes the few
// objects on the key's bucket path, not a root of 10000 names.
func TestAtomicOneKeyChangeInAWideFlatTreeCostsLittle(t *testing.T) {
	w, _ := open(t, Atomic)
	w.opts.NoSync = true
	mustApply(t, w, flatBatch(10000, 16))
	entries := 0
	w.step = func(step string) {
		if step == "staging" {
			entries++
		}
	}
	mustApply(t, w, batch(2, put("k00007", "changed")))
	if entries > 100 {
		t.Errorf("a one-key change among 10000 flat keys created %d entries, want at most 100", entries)
	}
	w.step = nil
	mustApply(t, w, batch(3, put("k10000", "new"), del("k00008")))
	got := visible(t, w.absDir)
	if len(got) != 10000 || got["k00007"] != "changed" || got["k10000"] != "new" || got["k00009"] != fmt.Sprint("vvvvvvvvvvvvvvvv") {
		t.Errorf("after the changes: %d keys, k00007=%q k10000=%q", len(got), got["k00007"], got["k10000"])
	}
}

// TestAtomicOpenOfAFlatWideTargetBucketsIt opens a wide target written flat (as versions
// before bucketing did): the next batch switches it to buckets, every name stays reachable,
// and later changes cost little.
func TestAtomicOpenOfAFlatWideTargetBucketsIt(t *testing.T) {
	w, dir := open(t, Atomic)
	w.bucketAbove = 1 << 30 // the old writer: always flat
	want := tree{"sub/x": "X"}
	for i := range 300 {
		want[fmt.Sprintf("k%03d", i)] = fmt.Sprint("v", i)
	}
	mustApply(t, w, full(1, want))
	if w.bucketed {
		t.Fatal("the old-style target is bucketed")
	}
	w.Close()

	w = openAt(t, Options{Dir: dir, UID: -1, GID: -1})
	if res := mustApply(t, w, full(2, want)); res.Written != 0 || res.Removed != 0 {
		t.Errorf("Result = %+v, want nothing written", res)
	}
	if !w.bucketed {
		t.Error("a top level of 301 names is still flat")
	}
	assertTree(t, "visible", visible(t, dir), want)
	assertFiles(t, w, want)
	if target, err := os.Readlink(filepath.Join(dir, "k007")); err != nil || target != "..data/"+bucketDir("k007")+"/k007" {
		t.Errorf("k007 -> %q, %v; want a link into its bucket", target, err)
	}
	entries := 0
	w.step = func(step string) {
		if step == "staging" {
			entries++
		}
	}
	want["k007"] = "changed"
	mustApply(t, w, batch(3, put("k007", "changed")))
	if entries > 60 {
		t.Errorf("a one-key change created %d entries, want at most 60", entries)
	}
	w.step = nil
	assertTree(t, "visible after a change", visible(t, dir), want)
	if res := mustApply(t, w, full(4, want)); res.Changed {
		t.Errorf("a second Full batch changed something: %+v", res)
	}
}

// TestAtomicReadersNeverMissANameWhileTheTopLevelSwitchesForms reads every name that exists
// in all versions, through its top-level link, while the top level switches between flat and
// bucketed at each batch: no read may fail, and no version may mix two batches.
func TestAtomicReadersNeverMissANameWhileTheTopLevelSwitchesForms(t *testing.T) {
	w, dir := open(t, Atomic)
	w.opts.NoSync = true
	w.bucketAbove, w.flatBelow = 8, 6
	stable := []string{"s0", "s1", "s2", "s3", "sub/x"} // in every version, with the batch's number
	batchOf := func(n int) Batch {
		b := Batch{Revision: int64(n), Full: true}
		for _, k := range stable {
			b.Changes = append(b.Changes, put(k, fmt.Sprint(n)))
		}
		if n%2 == 0 { // wide: bucketed
			for i := range 8 {
				b.Changes = append(b.Changes, put(fmt.Sprintf("e%d", i), "E"))
			}
		}
		return b
	}
	mustApply(t, w, batchOf(1))

	stop := make(chan struct{})
	errs := make(chan error, 100)
	var wg sync.WaitGroup
	for range 2 {
		wg.Add(1)
		go func() { // reads each name through its top-level link
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				for _, k := range stable {
					if _, err := os.ReadFile(filepath.Join(dir, k)); err != nil {
						errs <- err
						return
					}
				}
			}
		}()
	}
	wg.Add(1)
	go func() { // resolves ..data once and reads a whole version
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			version, err := os.Readlink(filepath.Join(dir, "..data"))
			if err != nil {
				errs <- err
				return
			}
			seen := map[string]bool{}
			for _, k := range stable {
				data, err := os.ReadFile(filepath.Join(dir, version, k))
				if errors.Is(err, os.ErrNotExist) {
					data, err = os.ReadFile(filepath.Join(dir, version, bucketDir(topName(k)), k))
				}
				if err != nil {
					break // the version was retired meanwhile: a reader this slow must resolve again
				}
				seen[string(data)] = true
			}
			if len(seen) > 1 {
				errs <- fmt.Errorf("version %s mixes batches: %v", version, seen)
				return
			}
		}
	}()
	switches := 0
	for n := 2; n < 60; n++ {
		before := w.bucketed
		mustApply(t, w, batchOf(n))
		if w.bucketed != before {
			switches++
		}
	}
	close(stop)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if switches < 50 {
		t.Errorf("the top level switched forms %d times, want 58", switches)
	}
}

// TestAtomicCheckOfABucketedTopLevelSeesEveryName gives Check a directory where each
// top-level name resolves as in a flat version ({{staged}}/cert.pem), and removes it after.
func TestAtomicCheckOfABucketedTopLevelSeesEveryName(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "target")
	want := tree{"cert.pem": "C", "key.pem": "K", "sub/x": "X"}
	for i := range 10 {
		want[fmt.Sprintf("k%d", i)] = fmt.Sprint(i)
	}
	var checked string
	check := func(staged string) error {
		checked = staged
		for p, v := range want {
			if got, err := os.ReadFile(filepath.Join(staged, p)); err != nil || string(got) != v {
				t.Errorf("Check reads %s: %q, %v; want %q", p, got, err, v)
			}
		}
		return nil
	}
	w := openAt(t, Options{Dir: dir, UID: -1, GID: -1, Check: check})
	w.bucketAbove, w.flatBelow = 8, 6
	mustApply(t, w, full(1, want))
	if !w.bucketed {
		t.Fatal("13 top-level names with a threshold of 8 are not bucketed")
	}
	want["cert.pem"] = "C2"
	mustApply(t, w, batch(2, put("cert.pem", "C2")))
	if _, err := os.Lstat(checked); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the directory given to Check is still there: %v", err)
	}
	assertTree(t, "visible", visible(t, dir), want)
}

// TestAtomicBucketedNameFreedByTheUserIsLinkedAtTheNextChange: a foreign file took a
// top-level name; once the user removes it, the next change links the name, whichever bucket
// it changes.
func TestAtomicBucketedNameFreedByTheUserIsLinkedAtTheNextChange(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "target")
	writeFile(t, filepath.Join(dir, "cert.pem"), "foreign")
	w := openAt(t, Options{Dir: dir, UID: -1, GID: -1})
	w.bucketAbove, w.flatBelow = 8, 6
	want := tree{"cert.pem": "ours"}
	for i := range 20 {
		want[fmt.Sprintf("k%02d", i)] = "K"
	}
	mustApply(t, w, full(1, want))
	if got := readFile(t, filepath.Join(dir, "cert.pem")); got != "foreign" {
		t.Fatalf("cert.pem = %q", got)
	}
	if err := os.Remove(filepath.Join(dir, "cert.pem")); err != nil {
		t.Fatal(err)
	}
	other := "k00"
	for i := 0; bucketDir(other) == bucketDir("cert.pem"); i++ {
		other = fmt.Sprintf("k%02d", i)
	}
	want[other] = "changed"
	mustApply(t, w, batch(2, put(other, "changed")))
	assertTree(t, "visible", visible(t, dir), want)
}

// TestAtomicChangeDoesNotWaitForTheSpoolRemoval: the spool of a big streamed start is removed
// in the background (50000 unlinks take a few hundred ms); a change right after the start
// goes live without waiting for it.
func TestAtomicChangeDoesNotWaitForTheSpoolRemoval(t *testing.T) {
	w, dir := open(t, Atomic)
	mustStream(t, w, full(1, tree{"a": "A"}), 1)
	w.waitSweep()
	sweeping := make(chan struct{}) // a removal that has not ended yet
	w.sweeping = sweeping
	defer close(sweeping)
	applied := make(chan error, 1)
	go func() {
		_, err := w.Apply(batch(2, put("a", "A2")))
		applied <- err
	}()
	select {
	case err := <-applied:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Apply waited for the spool's removal")
	}
	assertTree(t, "visible", visible(t, dir), tree{"a": "A2"})
}

// streamWith applies b as a streamed full batch in pages of page keys, telling the stream
// expect keys (none if 0).
func streamWith(t *testing.T, w *Writer, b Batch, page, expect int) Result {
	t.Helper()
	s, err := w.BeginFull(b.Revision)
	if err != nil {
		t.Fatal(err)
	}
	if expect > 0 {
		s.Expect(expect)
	}
	for c := range slices.Chunk(b.Changes, page) {
		if err := s.Add(c); err != nil {
			t.Fatal(err)
		}
	}
	res, err := s.Commit()
	if err != nil {
		t.Fatalf("streamed full batch (rev %d): %v", b.Revision, err)
	}
	return res
}

// TestStreamWideFirstSyncIsStagedBucketed: a streamed first sync of more than bucketAbove flat
// keys writes each value straight into its bucket's object, which the stage adopts (each
// file has one link when staged), and goes live bucketed with no switch; a streamed resync
// down to a few names then ends flat, every name reachable throughout.
func TestStreamWideFirstSyncIsStagedBucketed(t *testing.T) {
	want := tree{"sub/x": "X", "sub/deeper/y": "Y"}
	for i := range 600 {
		want[fmt.Sprintf("k%03d", i)] = fmt.Sprint("v", i)
	}
	w, dir := open(t, Atomic)
	switches, files := 0, 0
	w.step = func(step string) {
		switch step {
		case "switch-staged":
			switches++
		case "staged":
			files += filesWrittenOnce(t, dir)
		}
	}
	b := full(1, want)
	streamWith(t, w, b, 100, len(b.Changes))
	w.step = nil
	if switches != 0 {
		t.Errorf("the streamed first sync switched forms %d times, want none", switches)
	}
	if files != len(want) {
		t.Errorf("%d files staged, want %d", files, len(want))
	}
	if !w.bucketed {
		t.Error("a first sync of 601 top-level names is flat")
	}
	assertTree(t, "visible", visible(t, dir), want)
	assertFiles(t, w, want)
	assertNoSpool(t, w, dir)
	if target, err := os.Readlink(filepath.Join(dir, "k007")); err != nil || target != "..data/"+bucketDir("k007")+"/k007" {
		t.Errorf("k007 -> %q, %v; want a link into its bucket", target, err)
	}

	few := tree{"k001": "changed", "k002": "v2", "sub/x": "X2", "new": "N"}
	b = full(2, few)
	streamWith(t, w, b, 2, len(b.Changes))
	if w.bucketed {
		t.Error("a resync down to 4 top-level names left the top level bucketed")
	}
	assertTree(t, "visible after the resync", visible(t, dir), few)
	assertFiles(t, w, few)
	if target, err := os.Readlink(filepath.Join(dir, "new")); err != nil || target != "..data/new" {
		t.Errorf("new -> %q, %v; want a flat link", target, err)
	}
	w.waitPrune()
	assertNoSpool(t, w, dir)
}

// TestStreamWrongFormGuessConverges: the form a streamed first sync guesses from its first
// page can be wrong (no key count given, or one that overstates the batch): the version goes
// live in the guessed form and is switched after, every name reachable. Many keys under few
// names are guessed flat, with no switch.
func TestStreamWrongFormGuessConverges(t *testing.T) {
	wide := tree{}
	for i := range 300 {
		wide[fmt.Sprintf("k%03d", i)] = fmt.Sprint("v", i)
	}
	narrow := tree{"a": "A", "b/c": "C", "d": "D"}
	nested := tree{"a": "A"}
	for i := range 600 {
		nested[fmt.Sprintf("app/k%03d", i)] = fmt.Sprint("v", i)
	}
	for _, tc := range []struct {
		name         string
		want         tree
		expect       int
		switches     int
		wantBucketed bool
	}{
		{"guessed flat, is wide", wide, 0, 1, true},
		{"guessed bucketed, is narrow", narrow, 100000, 1, false},
		// Many keys under few names: the first page shows few names, so flat at once.
		{"many keys, few names", nested, len(nested), 0, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w, dir := open(t, Atomic)
			switches := 0
			w.step = func(step string) {
				if step == "switch-staged" {
					switches++
				}
			}
			streamWith(t, w, full(1, tc.want), 50, tc.expect)
			w.step = nil
			if switches != tc.switches {
				t.Errorf("%d switches, want %d", switches, tc.switches)
			}
			if w.bucketed != tc.wantBucketed {
				t.Errorf("bucketed: %v, want %v", w.bucketed, tc.wantBucketed)
			}
			assertTree(t, "visible", visible(t, dir), tc.want)
			assertFiles(t, w, tc.want)
			// A change after it costs what it costs in that form, and stays visible.
			tc.want["a"] = "changed"
			mustApply(t, w, batch(2, put("a", "changed")))
			assertTree(t, "visible after a change", visible(t, dir), tc.want)
			w.waitPrune()
			assertNoSpool(t, w, dir)
		})
	}
}

// TestAtomicUnchangedBucketLinksAreSharedAndReopenCleanly: a change shares the symlinks of the
// buckets it does not touch with the previous version (hard links, as unchanged files are),
// each still pointing at its object; a writer opened on the target afterwards finds nothing
// to rebuild and converges with no change.
func TestAtomicUnchangedBucketLinksAreSharedAndReopenCleanly(t *testing.T) {
	w, dir := open(t, Atomic)
	w.opts.NoSync = true
	mustApply(t, w, flatBatch(300, 16))
	if !w.bucketed {
		t.Fatal("300 flat keys are not bucketed")
	}
	for i := range 3 {
		mustApply(t, w, batch(int64(i+2), put("k00007", fmt.Sprint("changed ", i))))
	}
	root := filepath.Join(dir, w.version)
	shared := 0
	for _, name := range names(t, root) {
		fi, err := os.Lstat(filepath.Join(root, name))
		if err != nil || fi.Mode()&os.ModeSymlink == 0 {
			t.Fatalf("%s in the root: %v, mode %v", name, err, fi.Mode())
		}
		target, err := os.Readlink(filepath.Join(root, name))
		if err != nil || target != "../"+w.dirObj[name] {
			t.Errorf("%s -> %q (%v), want ../%s", name, target, err, w.dirObj[name])
		}
		if fi.Sys().(*syscall.Stat_t).Nlink > 1 {
			shared++
		}
	}
	if shared == 0 {
		t.Error("no bucket link of the root is shared with the previous version")
	}
	want := visible(t, dir)
	w.Close()
	w2 := openAt(t, Options{Dir: dir, Layout: Atomic, UID: -1, GID: -1, NoSync: true})
	if w2.rebuild || len(w2.fix) > 0 {
		t.Fatalf("reopened: rebuild %v, %d files to fix", w2.rebuild, len(w2.fix))
	}
	b := flatBatch(300, 16)
	for i := range b.Changes {
		if b.Changes[i].Key == "k00007" {
			b.Changes[i].Value = []byte("changed 2")
		}
	}
	if res := mustApply(t, w2, b); res.Changed {
		t.Errorf("the same tree again: %+v", res)
	}
	assertTree(t, "after reopening", visible(t, dir), want)
}
