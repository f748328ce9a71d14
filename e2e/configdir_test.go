package e2e

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/etcd-config-dispenser/etcd-config-dispenser/internal/etcdtest"
)

// A --config-dir binding renders its template into its target, and its own reload command
// runs when the target changed; with --on-change=none the command gets no signal for the
// mirrored files either.
func TestConfigDirBindingRendersItsTarget(t *testing.T) {
	e := etcdtest.Start(t)
	c := e.Client()
	src, dest := templateFiles(t, `host={{get "db/host"}} name={{getdefault "name" "-"}}`+"\n")
	marker := filepath.Join(t.TempDir(), "reloads")
	binding, _ := json.Marshal(map[string]any{"key": "/app/db/", "source": src, "target": dest, "mode": "0640",
		"reloadcmd": "sh -c 'echo reload >> " + marker + "'", "keys": []string{"/app/name"}})
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "db.json"), binding, 0o644); err != nil {
		t.Fatal(err)
	}
	txn(t, c, "/app/db/host", "h1", "/app/name", "n1")
	d := start(t, e, "reader", "--prefix=/app", "--config-dir="+dir, "--on-change=none")
	evs := d.waitEvent("start", func(ev event) bool { return ev.What == "start" })
	if want := "host=h1 name=n1\n"; evs[0].Files["@rendered"] != want {
		t.Fatalf("the child started with %q rendered, want %q", evs[0].Files["@rendered"], want)
	}
	if st, err := os.Stat(dest); err != nil || st.Mode().Perm() != 0o640 {
		t.Fatalf("rendered file: %v %v, want mode 0640", st, err)
	}
	txn(t, c, "/app/db/host", "h2")
	etcdtest.Eventually(t, 30*time.Second, func() error {
		b, _ := os.ReadFile(marker)
		if strings.Count(string(b), "reload") != 1 {
			return os.ErrNotExist
		}
		return nil
	})
	if b, _ := os.ReadFile(dest); string(b) != "host=h2 name=n1\n" {
		t.Fatalf("rendered %q after the change", b)
	}
	if n := d.finalSignals(); n != 0 {
		t.Fatalf("%d signals with --on-change=none", n)
	}
}
