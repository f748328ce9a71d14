package writer

import (
	"bytes"
	"fmt"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
)

func TestLogsNameSkippedKeysButNeverValues(t *testing.T) {
	for _, layout := range layouts {
		t.Run(layout.String(), func(t *testing.T) {
			var buf bytes.Buffer
			log := slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
			dir := filepath.Join(t.TempDir(), "target")
			w := openAt(t, Options{Dir: dir, Layout: layout, UID: -1, GID: -1, Logger: log})
			secret := "s3cr3t-PRIVATE-KEY"
			mustApply(t, w, batch(1, put("a/../b", secret), put("key.pem", secret), put("key.pem/x", secret)))
			mustApply(t, w, batch(2, del("key.pem/x")))
			out := buf.String()
			if strings.Contains(out, secret) {
				t.Errorf("a value was logged:\n%s", out)
			}
			for _, want := range []string{`key \"a/../b\": segment \"..\" is not allowed`, `key \"key.pem\": keys below it exist`} {
				if !strings.Contains(out, want) {
					t.Errorf("log lacks %s:\n%s", want, out)
				}
			}
		})
	}
}

func TestOnlyShadowedOrPendingValuesStayInMemory(t *testing.T) {
	for _, layout := range layouts {
		t.Run(layout.String(), func(t *testing.T) {
			w, _ := open(t, layout)
			b := Batch{Revision: 1, Full: true}
			for i := range 1000 {
				b.Changes = append(b.Changes, put(fmt.Sprintf("d%d/k%d", i%10, i), "value"))
			}
			b.Changes = append(b.Changes, put("d3", "shadowed by d3/..."))
			mustApply(t, w, b)
			held := 0
			for p, e := range w.keys {
				if e.held {
					held++
					if p != "d3" {
						t.Errorf("value of %s is kept", p)
					}
				}
			}
			if held != 1 {
				t.Errorf("%d values kept, want only the shadowed one", held)
			}
		})
	}
}
