package writer

import (
	"bytes"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
)

// bigBatch is n keys in n/100 directories (100 files each), with values of size bytes.
func bigBatch(n, size int) Batch {
	b := Batch{Revision: 1, Full: true}
	value := bytes.Repeat([]byte("v"), size)
	for i := range n {
		b.Changes = append(b.Changes, Change{Key: fmt.Sprintf("d%03d/k%05d", i%(n/100), i), Value: value})
	}
	return b
}

// flatBatch is n keys at the top level, as most users keep a prefix, with values of size bytes.
func flatBatch(n, size int) Batch {
	b := Batch{Revision: 1, Full: true}
	value := bytes.Repeat([]byte("v"), size)
	for i := range n {
		b.Changes = append(b.Changes, Change{Key: fmt.Sprintf("k%05d", i), Value: value})
	}
	return b
}

func BenchmarkApplyOneKey10000(b *testing.B) { benchOneKey(b, 10000) }
func BenchmarkApplyOneKey50000(b *testing.B) { benchOneKey(b, 50000) }

// benchOneKey measures a one-key change with n files present.
func benchOneKey(b *testing.B, n int) {
	for _, layout := range layouts {
		b.Run(layout.String(), func(b *testing.B) { benchChange(b, layout, bigBatch(n, 64), "d007/k00007") })
	}
}

func BenchmarkApplyOneKeyFlat(b *testing.B) {
	for _, n := range []int{10, 300, 1000, 10000, 50000} {
		b.Run(fmt.Sprint(n), func(b *testing.B) { benchChange(b, Atomic, flatBatch(n, 64), "k00007") })
	}
}

// BenchmarkApplyTenKeysFlat is BenchmarkApplyOneKeyFlat with each change on the next of ten
// keys, in turn (as the fleet benchmark's writer puts them), and Tidy after each change, as the
// caller does after its signal: the directories a change touches differ from the last one's.
func BenchmarkApplyTenKeysFlat(b *testing.B) {
	for _, n := range []int{10, 10000, 50000} {
		keys := make([]string, 10)
		for i := range keys {
			keys[i] = fmt.Sprintf("k%05d", i)
		}
		b.Run(fmt.Sprint(n), func(b *testing.B) { benchChangeTidy(b, Atomic, flatBatch(n, 64), keys, true) })
	}
}

// benchChange measures changes of key after a first sync of full.
func benchChange(b *testing.B, layout Layout, full Batch, key string) {
	benchChangeTidy(b, layout, full, []string{key}, false)
}

// benchChangeTidy measures changes of keys, one per Apply in turn, after a first sync of full,
// calling Tidy after each if tidy.
func benchChangeTidy(b *testing.B, layout Layout, full Batch, keys []string, tidy bool) {
	dir := filepath.Join(b.TempDir(), "target")
	w := openAt(b, Options{Dir: dir, Layout: layout, UID: -1, GID: -1, NoSync: true})
	mustApply(b, w, full)
	i := 0
	for b.Loop() {
		i++
		key := keys[i%len(keys)]
		res := mustApply(b, w, batch(int64(i+1), Change{Key: key, Value: fmt.Appendf(nil, "value %d", i)}))
		if !res.Changed || res.Written != 1 {
			b.Fatalf("Result = %+v", res)
		}
		if tidy {
			w.Tidy()
		}
	}
}

func BenchmarkFullSync10000(b *testing.B) {
	for _, layout := range layouts {
		b.Run(layout.String(), func(b *testing.B) { benchFullSync(b, layout, bigBatch(10000, 1024), false) })
	}
}

// BenchmarkFullSyncStreamed10000 is BenchmarkFullSync10000 streamed in pages of 500, as the
// source delivers a snapshot: values written on every core as they arrive.
func BenchmarkFullSyncStreamed10000(b *testing.B) {
	for _, layout := range layouts {
		b.Run(layout.String(), func(b *testing.B) { benchFullSync(b, layout, bigBatch(10000, 1024), true) })
	}
}

// BenchmarkFullSyncFlat10000 is a first sync of 10000 top-level keys of 1 KiB (bucketed).
func BenchmarkFullSyncFlat10000(b *testing.B) {
	benchFullSync(b, Atomic, flatBatch(10000, 1024), false)
}

// BenchmarkFullSyncStreamedFlat10000 is BenchmarkFullSyncFlat10000 streamed in pages of 500:
// each value is written into its bucket's object as it arrives.
func BenchmarkFullSyncStreamedFlat10000(b *testing.B) {
	benchFullSync(b, Atomic, flatBatch(10000, 1024), true)
}

// benchFullSync measures a first sync of full into an empty target, in one Apply or streamed
// in pages of 500. A flat one of more than 256 names must go live bucketed.
func benchFullSync(b *testing.B, layout Layout, full Batch, streamed bool) {
	b.SetBytes(int64(len(full.Changes) * len(full.Changes[0].Value)))
	wide := layout == Atomic && !hasSubdirs(full)
	for b.Loop() {
		b.StopTimer()
		dir := filepath.Join(b.TempDir(), "target")
		w := openAt(b, Options{Dir: dir, Layout: layout, UID: -1, GID: -1, NoSync: true})
		b.StartTimer()
		var res Result
		var err error
		if streamed {
			res, err = applyStreamHolding(b, w, full, 500, holdMax)
		} else {
			res, err = w.Apply(full)
		}
		if err != nil || res.Written != len(full.Changes) || wide && !w.bucketed {
			b.Fatalf("Result = %+v, %v, bucketed %v", res, err, w.bucketed)
		}
		b.StopTimer()
		w.Close()
		b.StartTimer()
	}
}

func hasSubdirs(full Batch) bool {
	for _, c := range full.Changes {
		if strings.Contains(c.Key, "/") {
			return true
		}
	}
	return false
}

// BenchmarkStreamedStartTail measures what a streamed first start costs after its last page
// (Commit: stage, sync, link, swap, publish), with the pages added untimed before: on the way
// to the child's start, nothing else runs then. 10000 flat keys of 1 KiB is the bench's
// "start, 10000 keys"; 50000 of 100 B its "start, 50000 keys".
func BenchmarkStreamedStartTail(b *testing.B) {
	for _, c := range []struct{ n, size int }{{10000, 1024}, {50000, 100}} {
		full := flatBatch(c.n, c.size)
		b.Run(fmt.Sprint(c.n), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				b.StopTimer()
				dir := filepath.Join(b.TempDir(), "target")
				w := openAt(b, Options{Dir: dir, Layout: Atomic, UID: -1, GID: -1, NoSync: true})
				s, err := streamPages(w, full, 477, holdMax)
				if err != nil {
					b.Fatal(err)
				}
				s.stopWorkers() // the writes overlap the pages; Commit's own wait is not its cost
				b.StartTimer()
				res, err := s.Commit()
				b.StopTimer()
				if err != nil || res.Written != len(full.Changes) || !w.bucketed {
					b.Fatalf("Result = %+v, %v, bucketed %v", res, err, w.bucketed)
				}
				w.Close()
				b.StartTimer()
			}
		})
	}
}

// BenchmarkStreamedStartPages measures the pages of a streamed first start (Add, while the
// workers write), which pace etcd's pages, up to the end of the writes, without Commit.
func BenchmarkStreamedStartPages(b *testing.B) {
	full := flatBatch(10000, 1024)
	b.ReportAllocs()
	for b.Loop() {
		b.StopTimer()
		dir := filepath.Join(b.TempDir(), "target")
		w := openAt(b, Options{Dir: dir, Layout: Atomic, UID: -1, GID: -1, NoSync: true})
		b.StartTimer()
		s, err := streamPages(w, full, 477, holdMax)
		if err != nil {
			b.Fatal(err)
		}
		s.stopWorkers()
		b.StopTimer()
		s.Abort()
		w.Close()
		b.StartTimer()
	}
}

// BenchmarkApplyColdFlat measures what the bench's "one-key change with N keys present" costs
// the writer: after a streamed first start (untimed), five one-key changes to five different
// keys, each with Tidy after it (untimed: the caller tidies after its signal). None of them
// finds a spare for its leaf bucket, and the first two none for the buckets above it either
// (recycle.go): each makes new objects for the directories on the key's path and hard-links
// their unchanged entries, after listing the leaf (a streamed start's objects have no
// manifest). ns/change is the figure; each iteration's setup is a whole start, so run it with
// a count, e.g. -benchtime=20x.
func BenchmarkApplyColdFlat(b *testing.B) {
	for _, c := range []struct{ n, size int }{{10000, 1024}, {50000, 100}} {
		full := flatBatch(c.n, c.size)
		b.Run(fmt.Sprint(c.n), func(b *testing.B) {
			const changes = 5
			var changed int
			for b.Loop() {
				b.StopTimer()
				dir := filepath.Join(b.TempDir(), "target")
				w := openAt(b, Options{Dir: dir, Layout: Atomic, UID: -1, GID: -1, NoSync: true})
				if res, err := applyStreamHolding(b, w, full, 500, holdMax); err != nil || !w.bucketed {
					b.Fatalf("Result = %+v, %v, bucketed %v", res, err, w.bucketed)
				}
				for i := range changes {
					key := fmt.Sprintf("k%05d", i)
					b.StartTimer()
					res := mustApply(b, w, batch(int64(i+2), Change{Key: key, Value: fmt.Appendf(nil, "value %d", i)}))
					b.StopTimer()
					if !res.Changed || res.Written != 1 {
						b.Fatalf("Result = %+v", res)
					}
					w.Tidy()
					changed++
				}
				w.Close()
				b.StartTimer()
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(changed), "ns/change")
		})
	}
}
