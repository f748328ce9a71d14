package e2e

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/etcd-config-dispenser/etcd-config-dispenser/internal/etcdtest"
)

const haproxyTemplate = `backend web
{{- range entries "backends"}}
    server {{base .Key}} {{.Value}} check
{{- end}}
`

// templateFiles writes the template and returns its path and the destination to render into,
// and makes the test child report the destination's content as "@rendered".
func templateFiles(t *testing.T, text string) (src, dest string) {
	t.Helper()
	dir := t.TempDir()
	src = filepath.Join(dir, "haproxy.cfg.tmpl")
	if err := os.WriteFile(src, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	dest = filepath.Join(dir, "etc", "haproxy.cfg")
	t.Setenv("E2E_RENDERED", dest)
	return src, dest
}

// A backend list re-rendered as servers register with a lease and go when it is revoked.
func TestTemplateFollowsServersRegisteringAndExpiring(t *testing.T) {
	e := etcdtest.Start(t)
	c := e.Client()
	src, dest := templateFiles(t, haproxyTemplate)
	txn(t, c, "/svc/backends/web1", "10.0.0.1:80")
	d := start(t, e, "reader", "--prefix=/svc", "--mode=0640", "--template="+src+":"+dest)
	evs := d.waitEvent("start", func(ev event) bool { return ev.What == "start" })
	if want := "backend web\n    server web1 10.0.0.1:80 check\n"; evs[0].Files["@rendered"] != want {
		t.Fatalf("the child started with %q rendered, want %q", evs[0].Files["@rendered"], want)
	}
	if st, err := os.Stat(dest); err != nil || st.Mode().Perm() != 0o640 {
		t.Fatalf("rendered file: %v %v, want mode 0640", st, err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	lease, err := c.Grant(ctx, 60)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Put(ctx, "/svc/backends/web2", "10.0.0.2:80", clientv3.WithLease(lease.ID)); err != nil {
		t.Fatal(err)
	}
	d.waitEvent("web2 registered", func(ev event) bool {
		return ev.What == "hangup" && strings.Contains(ev.Files["@rendered"], "server web2 10.0.0.2:80 check")
	})
	if _, err := c.Revoke(ctx, lease.ID); err != nil {
		t.Fatal(err)
	}
	evs = d.waitEvent("web2 gone", func(ev event) bool {
		return ev.What == "hangup" && !strings.Contains(ev.Files["@rendered"], "web2") && ev.Files["backends/web1"] != ""
	})
	if n := d.finalSignals(); n != 2 {
		t.Fatalf("%d signals, want 2 (one per change): %+v", n, evs)
	}
	if got, _ := os.ReadFile(dest); string(got) != evs[0].Files["@rendered"] {
		t.Fatalf("rendered file %q, want the first version back", got)
	}
	leftovers, _ := filepath.Glob(filepath.Join(filepath.Dir(dest), ".*"))
	if len(leftovers) > 0 {
		t.Fatalf("temporary files left beside the destination: %v", leftovers)
	}
}

// A template whose output does not change sends nothing, even when a key it reads changes
// to the same rendering; one that fails keeps the old file and sends nothing.
func TestTemplateFailureKeepsTheOldFile(t *testing.T) {
	e := etcdtest.Start(t)
	c := e.Client()
	src, dest := templateFiles(t, `port {{get "port"}}`+"\n")
	txn(t, c, "/p/port", "80")
	d := start(t, e, "reader", "--prefix=/p", "--template="+src+":"+dest, "--layout=plain")
	d.waitEvent("start", func(ev event) bool { return ev.What == "start" && ev.Files["@rendered"] == "port 80\n" })
	txn(t, c, "/p/port", "")
	etcdtest.Eventually(t, 30*time.Second, func() error {
		if len(d.stderr.lines("template not rendered", `key \"port\" does not exist`)) == 0 {
			return os.ErrNotExist
		}
		return nil
	})
	if got, _ := os.ReadFile(dest); string(got) != "port 80\n" {
		t.Fatalf("rendered file %q after a failed render, want the old one", got)
	}
	txn(t, c, "/p/port", "81")
	d.waitEvent("port 81", func(ev event) bool { return ev.Files["@rendered"] == "port 81\n" })
	// Two signals: the deleted key removed the file "port" (a change), and port 81.
	for _, ev := range d.events() {
		if ev.What == "hangup" && ev.Files["@rendered"] != "port 80\n" && ev.Files["@rendered"] != "port 81\n" {
			t.Fatalf("the child saw %q rendered", ev.Files["@rendered"])
		}
	}
}
