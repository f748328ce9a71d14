package writer

import (
	"bytes"
	"fmt"
	"path/filepath"
	"testing"
)

// bigBatch is 10000 keys in 100 directories, with values of size bytes.
func bigBatch(size int) Batch {
	b := Batch{Revision: 1, Full: true}
	value := bytes.Repeat([]byte("v"), size)
	for i := range 10000 {
		b.Changes = append(b.Changes, Change{Key: fmt.Sprintf("d%02d/k%04d", i%100, i), Value: value})
	}
	return b
}

func BenchmarkApplyOneKey10000(b *testing.B) {
	for _, layout := range layouts {
		b.Run(layout.String(), func(b *testing.B) {
			dir := filepath.Join(b.TempDir(), "target")
			w := openAt(b, Options{Dir: dir, Layout: layout, UID: -1, GID: -1, NoSync: true})
			mustApply(b, w, bigBatch(64))
			i := 0
			for b.Loop() {
				i++
				res := mustApply(b, w, batch(int64(i+1), Change{Key: "d07/k0007", Value: fmt.Appendf(nil, "value %d", i)}))
				if !res.Changed || res.Written != 1 {
					b.Fatalf("Result = %+v", res)
				}
			}
		})
	}
}

func BenchmarkFullSync10000(b *testing.B) {
	full := bigBatch(1024)
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
