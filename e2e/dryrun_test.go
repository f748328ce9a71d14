package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/etcd-config-dispenser/etcd-config-dispenser/internal/etcdtest"
)

func TestDryRunTouchesNothing(t *testing.T) {
	e := etcdtest.Start(t)
	c := e.Client()
	src, dest := templateFiles(t, `pw={{get "pw"}}`+"\n")
	txn(t, c, "/p/pw", "old-secret", "/p/gone", "x")
	once := start(t, e, "", "--prefix=/p", "--once", "--template="+src+":"+dest)
	if code := once.wait(30 * time.Second); code != 0 {
		t.Fatalf("--once exit code %d", code)
	}
	txn(t, c, "/p/pw", "new-secret", "/p/gone", "", "/p/added", "a\n")
	before := snapshot(t, filepath.Dir(once.target), filepath.Dir(dest))

	for _, show := range []bool{false, true} {
		args := []string{"--prefix=/p", "--dry-run", "--target=" + once.target, "--template=" + src + ":" + dest}
		if show {
			args = append(args, "--show-values")
		}
		d := start(t, e, "", args...)
		if code := d.wait(30 * time.Second); code != 0 {
			t.Fatalf("--dry-run exit code %d", code)
		}
		out := d.stderr.String()
		if after := snapshot(t, filepath.Dir(once.target), filepath.Dir(dest)); after != before {
			t.Fatalf("--dry-run changed files:\nbefore %s\nafter  %s", before, after)
		}
		if !show && (strings.Contains(out, "secret") || !strings.Contains(out, "pw: changed, 10 -> 10 bytes") ||
			!strings.Contains(out, "gone: removed") || !strings.Contains(out, "added: new, 2 bytes")) {
			t.Fatalf("--dry-run output without --show-values:\n%s", out)
		}
		if show && (!strings.Contains(out, "-pw=old-secret\n+pw=new-secret\n") || !strings.Contains(out, "+a\n")) {
			t.Fatalf("--dry-run --show-values output:\n%s", out)
		}
	}
}

// snapshot lists every name, mode and content below the directories.
func snapshot(t *testing.T, dirs ...string) string {
	t.Helper()
	var sb strings.Builder
	for _, dir := range dirs {
		filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
			if err != nil {
				return err
			}
			b, _ := os.ReadFile(p)
			fmt.Fprintf(&sb, "%s %v %q %v;", p, fi.Mode(), b, fi.ModTime().UnixNano())
			return nil
		})
	}
	return sb.String()
}

// --dry-run fails when a template fails (missing data is an error, also through index) and
// prints absolute paths without doubled slashes.
func TestDryRunFailsOnAFailingTemplate(t *testing.T) {
	e := etcdtest.Start(t)
	c := e.Client()
	src, dest := templateFiles(t, `pw={{get "pw"}}`+"\n")
	bad := filepath.Join(filepath.Dir(src), "bad.tmpl")
	os.WriteFile(bad, []byte(`{{index . "missing"}}`), 0o644)
	txn(t, c, "/p/pw", "x")
	d := start(t, e, "", "--prefix=/p", "--dry-run", "--show-values", "--template="+src+":"+dest,
		"--template="+bad+":"+dest+".bad")
	if code := d.wait(30 * time.Second); code == 0 {
		t.Fatalf("--dry-run exit code 0 with a failing template:\n%s", d.stderr.String())
	}
	out := d.stderr.String()
	if !strings.Contains(out, `key "missing" does not exist`) || !strings.Contains(out, "+++ b"+dest+"\n") || strings.Contains(out, "a//") || strings.Contains(out, "b//") {
		t.Fatalf("--dry-run output:\n%s", out)
	}
}
