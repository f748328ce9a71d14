package e2e

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
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

// Real nginx started on a rendered config, the obvious --check-cmd 'nginx -t -c {{staged}}'
// checking each new rendering: a good change reaches nginx after its SIGHUP, a broken one is
// refused and nginx keeps serving the old one.
func TestNginxOnARenderedConfigCheckedWithStaged(t *testing.T) {
	needNginx(t)
	e := etcdtest.Start(t)
	c := e.Client()
	src, dest := templateFiles(t, nginxConf)
	t.Setenv("NGINX_PID", filepath.Join(filepath.Dir(src), "nginx.pid"))
	port := fmt.Sprint(freePort(t))
	txn(t, c, "/web/nginx/port", port, "/web/msg", "hello")
	d := start(t, e, "", "--prefix=/web", "--template="+src+":"+dest, "--check-cmd=/usr/sbin/nginx -t -c {{staged}}",
		"--", "/usr/sbin/nginx", "-c", dest, "-g", "daemon off;")
	get := func(want string) {
		t.Helper()
		etcdtest.Eventually(t, 30*time.Second, func() error {
			resp, err := http.Get("http://127.0.0.1:" + port + "/")
			if err != nil {
				return err
			}
			defer resp.Body.Close()
			b, _ := io.ReadAll(resp.Body)
			if string(b) != want {
				return fmt.Errorf("nginx answers %q, want %q", b, want)
			}
			return nil
		})
	}
	get("hello\n")
	txn(t, c, "/web/msg", "world")
	get("world\n")
	waitLog(t, d, "batch applied", "signal=")
	good, _ := os.ReadFile(dest)
	txn(t, c, "/web/nginx/port", "bogus")
	waitLog(t, d, "template refused by its check command", `invalid port`)
	if b, _ := os.ReadFile(dest); string(b) != string(good) {
		t.Fatalf("nginx.conf replaced by a refused one:\n%s", b)
	}
	get("world\n")
	if n := len(d.stderr.lines("batch applied", "signal=")); n != 1 {
		t.Fatalf("%d signals, want 1 (none for the refused config)", n)
	}
}

// haproxy -c -f {{staged}} refusing a rendering: no signal for it, though the mirrored key
// changed; the next good change signals once.
func TestRejectedHaproxyConfigSendsNoSignal(t *testing.T) {
	if _, err := os.Stat("/usr/sbin/haproxy"); err != nil {
		t.Skip("haproxy is not installed (apt-get install haproxy): " + err.Error())
	}
	e := etcdtest.Start(t)
	c := e.Client()
	src, dest := templateFiles(t, "global\n    master-worker\ndefaults\n    mode http\n    timeout connect 5s\n"+
		"    timeout client 30s\n    timeout server 30s\n"+haproxyTemplate)
	txn(t, c, "/svc/backends/web1", "10.0.0.1:80")
	d := start(t, e, "reader", "--prefix=/svc", "--template="+src+":"+dest, "--check-cmd=/usr/sbin/haproxy -c -f {{staged}}")
	d.waitEvent("start", func(ev event) bool { return ev.What == "start" })
	txn(t, c, "/svc/backends/web2", "10.0.0.2:99999")
	waitLog(t, d, "template refused by its check command", "invalid port")
	txn(t, c, "/svc/backends/web2", "10.0.0.2:80")
	d.waitEvent("web2", func(ev event) bool {
		return ev.What == "hangup" && strings.Contains(ev.Files["@rendered"], "server web2 10.0.0.2:80 check")
	})
	if n := d.finalSignals(); n != 1 {
		t.Fatalf("%d signals, want 1: none for the refused config", n)
	}
}

// Without --target nothing is mirrored; only the template's changes signal.
func TestTemplatesWithoutATarget(t *testing.T) {
	e := etcdtest.Start(t)
	c := e.Client()
	src, dest := templateFiles(t, `port {{get "port"}}`+"\n")
	txn(t, c, "/p/port", "80", "/p/other", "1")
	d := startAs(t, e, runOpts{NoTarget: true}, "reader", "--prefix=/p", "--template="+src+":"+dest)
	d.waitEvent("start", func(ev event) bool { return ev.What == "start" && ev.Files["@rendered"] == "port 80\n" })
	txn(t, c, "/p/other", "2")
	txn(t, c, "/p/port", "81")
	d.waitEvent("port 81", func(ev event) bool { return ev.What == "hangup" && ev.Files["@rendered"] == "port 81\n" })
	if n := d.finalSignals(); n != 1 {
		t.Fatalf("%d signals, want 1: a key no template renders changes nothing", n)
	}
	if _, err := os.Stat(d.target); err == nil {
		t.Fatal("a target directory was created without --target")
	}
}

// A destination bind-mounted into the container (docker run -v ./nginx.conf:/etc/nginx/nginx.conf)
// cannot be renamed over: it is written in place, with one warning, and keeps its mode.
func TestBindMountedDestinationIsWrittenInPlace(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("mount --bind needs root")
	}
	e := etcdtest.Start(t)
	c := e.Client()
	src, dest := templateFiles(t, `port {{get "port"}}`+"\n")
	host := filepath.Join(t.TempDir(), "host.conf")
	os.WriteFile(host, []byte("port 1\n"), 0o644)
	os.MkdirAll(filepath.Dir(dest), 0o755)
	os.WriteFile(dest, nil, 0o600)
	if err := syscall.Mount(host, dest, "", syscall.MS_BIND, ""); err != nil {
		t.Skipf("cannot bind-mount here: %v", err)
	}
	t.Cleanup(func() { syscall.Unmount(dest, syscall.MNT_DETACH) })
	txn(t, c, "/p/port", "80")
	d := start(t, e, "reader", "--prefix=/p", "--template="+src+":"+dest)
	d.waitEvent("start", func(ev event) bool { return ev.What == "start" && ev.Files["@rendered"] == "port 80\n" })
	txn(t, c, "/p/port", "81")
	d.waitEvent("port 81", func(ev event) bool { return ev.What == "hangup" && ev.Files["@rendered"] == "port 81\n" })
	if b, _ := os.ReadFile(host); string(b) != "port 81\n" {
		t.Fatalf("the host's file holds %q", b)
	}
	if st, _ := os.Stat(host); st.Mode().Perm() != 0o644 {
		t.Fatalf("mode %v, want the file's own 0644", st.Mode())
	}
	if n := len(d.stderr.lines("written in place")); n != 1 {
		t.Fatalf("%d warnings about writing in place, want 1", n)
	}
}

// An existing destination keeps its mode and owner unless --mode (or --owner) says otherwise.
func TestDestinationKeepsItsModeAndOwner(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("chown needs root")
	}
	e := etcdtest.Start(t)
	c := e.Client()
	src, dest := templateFiles(t, `port {{get "port"}}`+"\n")
	os.MkdirAll(filepath.Dir(dest), 0o755)
	os.WriteFile(dest, []byte("old\n"), 0o644)
	os.Chown(dest, 65534, 65534)
	txn(t, c, "/p/port", "80")
	d := start(t, e, "", "--prefix=/p", "--once", "--template="+src+":"+dest)
	if code := d.wait(30 * time.Second); code != 0 {
		t.Fatalf("exit %d", code)
	}
	st, _ := os.Stat(dest)
	if sys := st.Sys().(*syscall.Stat_t); st.Mode().Perm() != 0o644 || sys.Uid != 65534 || sys.Gid != 65534 {
		t.Fatalf("mode %v owner %d:%d, want 0644 65534:65534 kept", st.Mode(), sys.Uid, sys.Gid)
	}
	txn(t, c, "/p/port", "81")
	d = start(t, e, "", "--prefix=/p", "--once", "--mode=0640", "--owner=0", "--template="+src+":"+dest)
	if code := d.wait(30 * time.Second); code != 0 {
		t.Fatalf("exit %d", code)
	}
	st, _ = os.Stat(dest)
	if sys := st.Sys().(*syscall.Stat_t); st.Mode().Perm() != 0o640 || sys.Uid != 0 {
		t.Fatalf("mode %v owner %d, want --mode 0640 and --owner 0", st.Mode(), sys.Uid)
	}
}

// A template that fails at start while its destination holds a previous good file: the
// command starts on that file, with a warning naming the template.
func TestStartsOnThePreviousGoodFileWithAWarning(t *testing.T) {
	e := etcdtest.Start(t)
	c := e.Client()
	src, dest := templateFiles(t, `port {{get "port"}}`+"\n")
	os.MkdirAll(filepath.Dir(dest), 0o755)
	os.WriteFile(dest, []byte("port 79\n"), 0o644)
	txn(t, c, "/p/other", "1")
	d := start(t, e, "reader", "--prefix=/p", "--template="+src+":"+dest)
	d.waitEvent("start", func(ev event) bool { return ev.What == "start" && ev.Files["@rendered"] == "port 79\n" })
	waitLog(t, d, "starting on the previous file", "template="+src, `key \"port\" does not exist`)
}
