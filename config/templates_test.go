package config

import (
	"io"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/etcd-config-dispenser/etcd-config-dispenser/render"
)

func TestTemplatesAndCommands(t *testing.T) {
	c, err := Parse([]string{"-p", "/a", "-t", "/config", "--template", "h.tmpl:/etc/haproxy/haproxy.cfg",
		"--template=n.tmpl:/etc/nginx/up.conf", "--check-cmd", `haproxy -c -f '{{staged}}'`,
		"--reload-cmd", "sh -c 'kill -USR2 1'", "--command-timeout=5s"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	want := []render.Spec{{Src: "h.tmpl", Dest: "/etc/haproxy/haproxy.cfg"}, {Src: "n.tmpl", Dest: "/etc/nginx/up.conf"}}
	if !slices.EqualFunc(c.Templates, want, func(a, b render.Spec) bool { return a.Src == b.Src && a.Dest == b.Dest }) {
		t.Fatalf("templates %+v", c.Templates)
	}
	if !slices.Equal(c.Check.Argv, []string{"haproxy", "-c", "-f", "{{staged}}"}) || c.Check.Timeout != 5*time.Second {
		t.Fatalf("check %+v", c.Check)
	}
	if !slices.Equal(c.Reload.Argv, []string{"sh", "-c", "kill -USR2 1"}) || c.SignalOnReload {
		t.Fatalf("reload %+v, signal on reload %v", c.Reload, c.SignalOnReload)
	}
	c, _ = Parse([]string{"-p", "/a", "-t", "/config", "--reload-cmd", "x", "--signal=HUP"}, io.Discard)
	if !c.SignalOnReload {
		t.Fatal("--signal given explicitly is not remembered")
	}
}

func TestBadTemplateValuesNameTheFlag(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--template=nocolon"}, `--template "nocolon"`},
		{[]string{"--template=a:/config/x"}, `inside --target`},
		{[]string{"--template=a:/x", "--template=b:/x"}, `both render into /x`},
		{[]string{"--check-cmd", "nginx 'unterminated"}, `--check-cmd "nginx 'unterminated"`},
		{[]string{"--reload-cmd", " "}, `--reload-cmd`},
		{[]string{"--command-timeout=0s"}, `--command-timeout`},
		{[]string{"--wait=0s"}, `--wait "0s"`},
		{[]string{"--wait=2s:1s"}, `--wait "2s:1s"`},
		{[]string{"--wait=soon"}, `--wait "soon"`},
	} {
		_, err := Parse(append([]string{"-p", "/a", "-t", "/config"}, tc.args...), io.Discard)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: error %v, want it to mention %s", tc.args, err, tc.want)
		}
	}
}

func TestWait(t *testing.T) {
	for in, want := range map[string][2]time.Duration{"2s": {2 * time.Second, 8 * time.Second},
		"500ms:10s": {500 * time.Millisecond, 10 * time.Second}} {
		c, err := Parse([]string{"-p", "/a", "-t", "/b", "--wait", in}, io.Discard)
		if err != nil || c.Wait != want[0] || c.MaxWait != want[1] {
			t.Errorf("--wait %s: %v %v, %v", in, c.Wait, c.MaxWait, err)
		}
	}
}

func TestPrefixTwiceIsRefused(t *testing.T) {
	_, err := Parse([]string{"-p", "/a", "--prefix=/b", "-t", "/config"}, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "given twice (/a and /b)") {
		t.Fatalf("error %v", err)
	}
}

// Templates without a mirror: no --target, no --prefix; --check-cmd then checks each template,
// and --check-mirror-cmd is the mirror's.
func TestTemplatesWithoutMirrorAndTheTwoChecks(t *testing.T) {
	c, err := Parse([]string{"--template=a.tmpl:/etc/a", "--check-cmd=nginx -t -c {{staged}}"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if c.Target != "" || len(c.Check.Argv) != 4 || len(c.MirrorCheck.Argv) != 0 {
		t.Fatalf("%+v", c)
	}
	c, _ = Parse([]string{"-p", "/a", "-t", "/c", "--check-cmd=test -f {{staged}}/a"}, io.Discard)
	if len(c.MirrorCheck.Argv) != 3 || len(c.Check.Argv) != 0 {
		t.Fatalf("without templates --check-cmd checks the mirror: %+v", c.Templating)
	}
	c, _ = Parse([]string{"-p", "/a", "-t", "/c", "--template=a:/b", "--check-mirror-cmd=x {{staged}}", "--check-cmd=y"}, io.Discard)
	if c.MirrorCheck.Argv[0] != "x" || c.Check.Argv[0] != "y" {
		t.Fatalf("%+v", c.Templating)
	}
	if _, err := Parse([]string{"-p", "/a"}, io.Discard); err == nil || !strings.Contains(err.Error(), "--target is required") {
		t.Fatalf("no target and no template: %v", err)
	}
}

func TestReconfigOptionsAndGlobs(t *testing.T) {
	c, err := Parse([]string{"-p", "/a", "-t", "/c", "--onetime", "-n", "-d", "--host=etcd1", "--port=4001", "--ssl",
		"--ssl_cafile=/ca.pem", "--srv=example.com", "--include=*.pem", "--exclude=**/key.pem", "--prefix-warn-test"}, io.Discard)
	if err == nil {
		t.Fatal("an unknown flag was accepted")
	}
	c, err = Parse([]string{"-p", "a", "-t", "/c", "--onetime", "-n", "-d", "--host=etcd1", "--port=4001", "--ssl",
		"--ssl_cafile=/ca.pem", "--srv=example.com", "--include=*.pem", "--exclude=**/key.pem"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if !c.Once || !c.DryRun || c.LogLevel != "debug" || c.DiscoverySRV != "example.com" ||
		c.EtcdEnv["ETCD_ENDPOINTS"] != "https://etcd1:4001" || c.EtcdEnv["ETCD_SERVER_CA_FILE"] != "/ca.pem" {
		t.Fatalf("%+v", c)
	}
	if len(c.Warnings) != 1 || !strings.Contains(c.Warnings[0], `--prefix "a" does not begin with /`) {
		t.Fatalf("warnings %q", c.Warnings)
	}
	for _, bad := range []string{"[", "a**", "--ssl_passphrase=x"} {
		arg := "--include=" + bad
		if strings.HasPrefix(bad, "--") {
			arg = bad
		}
		if _, err := Parse([]string{"-p", "/a", "-t", "/c", arg}, io.Discard); err == nil {
			t.Errorf("%s accepted", arg)
		}
	}
}
