package e2e

import (
	"encoding/json"
	"fmt"
	"net"
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
	binding, _ := json.Marshal(map[string]any{"key": "/db/", "source": src, "target": dest, "mode": "0640",
		"reloadcmd": "sh -c 'echo reload >> " + marker + "'", "keys": []string{"/name"}})
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

// nginxConf is an nginx configuration that listens on the port key and answers the msg key.
const nginxConf = `error_log stderr;
pid {{getenv "NGINX_PID"}};
events {}
http {
    access_log off;
    server {
        listen 127.0.0.1:{{get "nginx/port"}};
        location / { return 200 "{{get "msg"}}\n"; }
    }
}
`

func needNginx(t *testing.T) {
	t.Helper()
	if _, err := os.Stat("/usr/sbin/nginx"); err != nil {
		t.Skip("nginx is not installed (apt-get install nginx): " + err.Error())
	}
}

// A reconfig config dir as its README lays it out: conf.d/*.json and templates/, absolute keys
// with -p prepended, a recursive binding with its reload command and splay, a single-key one
// with altkeys and a checkcmd naming its target (nginx -t -c /etc/...), no --target.
func TestReconfigConfigDirAsItsReadmeLaysItOut(t *testing.T) {
	needNginx(t)
	e := etcdtest.Start(t)
	c := e.Client()
	dir, out := t.TempDir(), t.TempDir()
	test1, nginx, marker := filepath.Join(out, "test1.conf"), filepath.Join(out, "nginx.conf"), filepath.Join(out, "reloads")
	t.Setenv("NGINX_PID", filepath.Join(out, "nginx.pid"))
	t.Setenv("E2E_RENDERED", test1)
	write := func(name string, v any) {
		b, ok := v.([]byte)
		if !ok {
			b, _ = json.MarshalIndent(v, "", "  ")
		}
		os.MkdirAll(filepath.Dir(filepath.Join(dir, name)), 0o755)
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("conf.d/test1.json", map[string]any{"id": "test1", "source": "test1.conf.tmpl", "target": test1,
		"key": "/test1", "recursive": true, "splay": 1, "reloadcmd": "sh -c 'echo reload >> " + marker + "'"})
	write("conf.d/nginx.json", map[string]any{"id": "nginx", "key": "/nginx/port", "recursive": false,
		"source": "nginx.conf.tmpl", "target": nginx, "altkeys": map[string]string{"msg": "/app/msg"},
		"checkcmd": "/usr/sbin/nginx -t -c " + nginx})
	write("templates/test1.conf.tmpl", []byte("{{range $k, $v := .Data}}KEY {{$k}} has VALUE {{$v}}\n{{end}}"))
	write("templates/nginx.conf.tmpl", []byte(nginxConf))

	txn(t, c, "/app/test1/b", "2", "/app/test1/a", "1", "/app/test10/x", "not below /test1",
		"/app/nginx/port", "18081", "/app/msg", "hello")
	d := startAs(t, e, runOpts{NoTarget: true}, "reader", "-p", "/app", "--cfgdir", dir)
	evs := d.waitEvent("start", func(ev event) bool { return ev.What == "start" })
	if want := "KEY /app/test1/a has VALUE 1\nKEY /app/test1/b has VALUE 2\n"; evs[0].Files["@rendered"] != want {
		t.Fatalf("the child started with %q rendered, want %q", evs[0].Files["@rendered"], want)
	}
	good, _ := os.ReadFile(nginx)
	if !strings.Contains(string(good), "listen 127.0.0.1:18081;") || !strings.Contains(string(good), `return 200 "hello\n"`) {
		t.Fatalf("nginx.conf rendered as\n%s", good)
	}

	txn(t, c, "/app/test1/c", "3")
	etcdtest.Eventually(t, 30*time.Second, func() error {
		b, _ := os.ReadFile(marker)
		if strings.Count(string(b), "reload") != 1 {
			return fmt.Errorf("reload command ran %d times, want 1", strings.Count(string(b), "reload"))
		}
		return nil
	})
	if b, _ := os.ReadFile(test1); !strings.Contains(string(b), "KEY /app/test1/c has VALUE 3") {
		t.Fatalf("test1.conf %q", b)
	}
	waitLog(t, d, "reload command of a binding waits its splay", "binding=test1")

	// nginx -t -c <the target itself> sees the new file, refuses it, and the old one comes back.
	txn(t, c, "/app/nginx/port", "bogus")
	waitLog(t, d, "template refused by its check command", "template=nginx")
	if b, _ := os.ReadFile(nginx); string(b) != string(good) {
		t.Fatalf("nginx.conf after a refused check:\n%s\nwant the old one back", b)
	}
	if n := d.finalSignals(); n != 0 {
		t.Fatalf("%d signals: test1 has its own reload command, nginx's change was refused", n)
	}
}

// Every problem of a config dir is reported at once, each with file:line, and an ERB template
// is refused with a pointer to the README; exit 2, nothing touched.
func TestConfigDirProblemsAreAllReported(t *testing.T) {
	e := etcdtest.Start(t)
	dir := t.TempDir()
	os.MkdirAll(filepath.Join(dir, "conf.d"), 0o755)
	os.MkdirAll(filepath.Join(dir, "templates"), 0o755)
	os.WriteFile(filepath.Join(dir, "templates", "test1.conf.erb"), []byte(`<%= @reconfig["watched"] %>`), 0o644)
	os.WriteFile(filepath.Join(dir, "conf.d", "test1.json"),
		[]byte("{\n\"id\": \"test1\",\n\"source\": \"test1.conf.erb\",\n\"target\": \"/tmp/never\",\n\"key\": \"/test1\",\n\"owner\": \"www\",\n\"perms\": 420\n}\n"), 0o644)
	d := startAs(t, e, runOpts{NoTarget: true}, "", "--cfgdir", dir)
	if code := d.wait(30 * time.Second); code != 2 {
		t.Fatalf("exit code %d, want 2", code)
	}
	out := d.stderr.String()
	file := filepath.Join(dir, "conf.d", "test1.json")
	for _, want := range []string{file + `:6: unknown field "owner"`, file + `:7: unknown field "perms"`,
		file + ":3: source " + filepath.Join(dir, "templates", "test1.conf.erb") + " is an ERB template",
		`"Coming from confd / consul-template / reconfig"`} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	if _, err := os.Stat("/tmp/never"); err == nil {
		t.Fatal("a refused binding's target was written")
	}
}

// reconfig's own command line: --onetime, --host and --port (over a wrong ETCD_ENDPOINTS),
// -p, --cfgdir with a flat directory of bindings, and a --notreally run before it.
func TestReconfigCommandLine(t *testing.T) {
	e := etcdtest.Start(t)
	c := e.Client()
	host, port, err := net.SplitHostPort(strings.TrimPrefix(e.Endpoint(), "http://"))
	if err != nil {
		t.Skipf("endpoint %s: %v", e.Endpoint(), err)
	}
	dir, out := t.TempDir(), filepath.Join(t.TempDir(), "out.conf")
	os.WriteFile(filepath.Join(dir, "t.tmpl"), []byte(`{{range $k, $v := .Data}}{{$k}}={{$v}} {{end}}`), 0o644)
	b, _ := json.Marshal(map[string]any{"key": "/svc", "recursive": true, "source": "t.tmpl", "target": out})
	os.WriteFile(filepath.Join(dir, "svc.json"), b, 0o644)
	txn(t, c, "/app/svc/a", "1", "/app/svc/b", "2")
	for _, flag := range []string{"--notreally", "--onetime"} {
		d := startAs(t, e, runOpts{NoTarget: true, Env: []string{"ETCD_ENDPOINTS=127.0.0.1:1"}}, "",
			flag, "--host", host, "--port", port, "-p", "/app", "--cfgdir", dir)
		if code := d.wait(60 * time.Second); code != 0 {
			t.Fatalf("%s: exit %d:\n%s", flag, code, d.stderr.String())
		}
		got, _ := os.ReadFile(out)
		if flag == "--notreally" && (len(got) != 0 || !strings.Contains(d.stderr.String(), out+": new, 26 bytes")) {
			t.Fatalf("--notreally wrote %q; output:\n%s", got, d.stderr.String())
		}
		if flag == "--onetime" && string(got) != "/app/svc/a=1 /app/svc/b=2 " {
			t.Fatalf("--onetime rendered %q", got)
		}
	}
}
