package writer

import (
	"bytes"
	"fmt"
	"path/filepath"
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

func BenchmarkApplyOneKey10000(b *testing.B) { benchOneKey(b, 10000) }
func BenchmarkApplyOneKey50000(b *testing.B) { benchOneKey(b, 50000) }

// benchOneKey measures a one-key change with n files present.
func benchOneKey(b *testing.B, n int) {
	for _, layout := range layouts {
		b.Run(layout.String(), func(b *testing.B) {
			dir := filepath.Join(b.TempDir(), "target")
			w := openAt(b, Options{Dir: dir, Layout: layout, UID: -1, GID: -1, NoSync: true})
			mustApply(b, w, bigBatch(n, 64))
			i := 0
			for b.Loop() {
				i++
				res := mustApply(b, w, batch(int64(i+1), Change{Key: "d007/k00007", Value: fmt.Appendf(nil, "value %d", i)}))
				if !res.Changed || res.Written != 1 {
					b.Fatalf("Result = %+v", res)
				}
			}
		})
	}
}

func BenchmarkFullSync10000(b *testing.B) {
	full := bigBatch(10000, 1024)
	for _, layout := range layouts {
		b.Run(layout.String(), func(b *testing.B) {
			b.SetBytes(int64(len(full.Changes) * 1024))
			for b.Loop() {
				b.StopTimer()
				dir := filepath.Join(b.TempDir(), "target")
				w := openAt(b, Options{Dir: dir, Layout: layout, UID: -1, GID: -1, NoSync: true})
				b.StartTimer()
				if res := mustApply(b, w, full); res.Written != 10000 {
					b.Fatalf("Result = %+v", res)
				}
				b.StopTimer()
				w.Close()
				b.StartTimer()
			}
		})
	}
}

// BenchmarkFullSyncStreamed10000 is BenchmarkFullSync10000 streamed in pages of 500, as the
// source delivers a snapshot: values spooled on every core, then linked into the version.
func BenchmarkFullSyncStreamed10000(b *testing.B) {
	full := bigBatch(10000, 1024)
	for _, layout := range layouts {
		b.Run(layout.String(), func(b *testing.B) {
			b.SetBytes(int64(len(full.Changes) * 1024))
			for b.Loop() {
				b.StopTimer()
				dir := filepath.Join(b.TempDir(), "target")
				w := openAt(b, Options{Dir: dir, Layout: layout, UID: -1, GID: -1, NoSync: true})
				b.StartTimer()
				res, err := applyStreamHolding(b, w, full, 500, holdMax)
				if err != nil || res.Written != 10000 {
					b.Fatalf("Result = %+v, %v", res, err)
				}
				b.StopTimer()
				w.Close()
				b.StartTimer()
			}
		})
	}
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

func BenchmarkApplyOneKeyFlat(b *testing.B) {
	for _, n := range []int{1000, 10000, 50000} {
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			dir := filepath.Join(b.TempDir(), "target")
			w := openAt(b, Options{Dir: dir, Layout: Atomic, UID: -1, GID: -1, NoSync: true})
			mustApply(b, w, flatBatch(n, 64))
			i := 0
			for b.Loop() {
				i++
				res := mustApply(b, w, batch(int64(i+1), Change{Key: "k00007", Value: fmt.Appendf(nil, "value %d", i)}))
				if !res.Changed || res.Written != 1 {
					b.Fatalf("Result = %+v", res)
				}
			}
		})
	}
}

// BenchmarkFullSyncFlat10000 is a first sync of 10000 top-level keys of 1 KiB (bucketed).
func BenchmarkFullSyncFlat10000(b *testing.B) {
	full := flatBatch(10000, 1024)
	b.SetBytes(int64(len(full.Changes) * 1024))
	for b.Loop() {
		b.StopTimer()
		dir := filepath.Join(b.TempDir(), "target")
		w := openAt(b, Options{Dir: dir, Layout: Atomic, UID: -1, GID: -1, NoSync: true})
		b.StartTimer()
		if res := mustApply(b, w, full); res.Written != 10000 {
			b.Fatalf("Result = %+v", res)
		}
		b.StopTimer()
		w.Close()
		b.StartTimer()
	}
}

// BenchmarkFullSyncStreamedFlat10000 is BenchmarkFullSyncFlat10000 streamed in pages of 500:
// each value is written into its bucket's object as it arrives.
func BenchmarkFullSyncStreamedFlat10000(b *testing.B) {
	full := flatBatch(10000, 1024)
	b.SetBytes(int64(len(full.Changes) * 1024))
	for b.Loop() {
		b.StopTimer()
		dir := filepath.Join(b.TempDir(), "target")
		w := openAt(b, Options{Dir: dir, Layout: Atomic, UID: -1, GID: -1, NoSync: true})
		b.StartTimer()
		res, err := applyStreamHolding(b, w, full, 500, holdMax)
		if err != nil || res.Written != 10000 || !w.bucketed {
			b.Fatalf("Result = %+v, %v, bucketed %v", res, err, w.bucketed)
		}
		b.StopTimer()
		w.Close()
		b.StartTimer()
	}
}
