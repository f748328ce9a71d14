package e2e

import (
	"bytes"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// Every bad flag value or environment variable is refused at once: exit 2, one line naming
// the flag or variable and the value (never a secret's), before anything is touched: the
// target is not created and etcd is not contacted.
func TestBadInputIsRefusedBeforeAnythingIsTouched(t *testing.T) {
	// A listener standing in for etcd, to see that nobody connects.
	etcd, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer etcd.Close()
	var contacted atomic.Int32
	go func() {
		for {
			c, err := etcd.Accept()
			if err != nil {
				return
			}
			contacted.Add(1)
			c.Close()
		}
	}()
	dir := t.TempDir()
	file := filepath.Join(dir, "a-file")
	if err := os.WriteFile(file, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	badTmpl := filepath.Join(dir, "bad.tmpl")
	if err := os.WriteFile(badTmpl, []byte("{{ .x "), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name  string
		flags []string // besides --prefix and --target
		env   []string
		want  []string // in the one line
		never string   // a secret that must not be printed
	}{
		{"endpoints garbage", nil, []string{"ETCD_ENDPOINTS=garbage!!"}, []string{"ETCD_ENDPOINTS", `"garbage!!"`}, ""},
		{"endpoints only commas", nil, []string{"ETCD_ENDPOINTS=,,,"}, []string{"ETCD_ENDPOINTS", `",,,"`}, ""},
		{"endpoint without port", nil, []string{"ETCD_ENDPOINTS=etcd1"}, []string{"ETCD_ENDPOINTS", `"etcd1"`}, ""},
		{"endpoint bad port", nil, []string{"ETCD_ENDPOINTS=etcd1:99999"}, []string{"ETCD_ENDPOINTS", `"etcd1:99999"`}, ""},
		{"endpoint bad scheme", nil, []string{"ETCD_ENDPOINTS=ftp://etcd1:2379"}, []string{"ETCD_ENDPOINTS", `"ftp://etcd1:2379"`}, ""},
		{"endpoint no host", nil, []string{"ETCD_ENDPOINTS=https://:2379"}, []string{"ETCD_ENDPOINTS", `"https://:2379"`}, ""},
		{"endpoint newline", nil, []string{"ETCD_ENDPOINTS=127.0.0.1:2379\n"}, []string{"ETCD_ENDPOINTS", `"127.0.0.1:2379\n"`}, ""},
		{"endpoints file missing", nil, []string{"ETCD_ENDPOINTS=", "ETCD_ENDPOINTS_FILE=/no/such/file"}, []string{"ETCD_ENDPOINTS_FILE", "/no/such/file"}, ""},
		{"endpoints twice", nil, []string{"ETCD_ENDPOINTS_FILE=" + file}, []string{"ETCD_ENDPOINTS", "ETCD_ENDPOINTS_FILE"}, ""},
		{"skip verify", nil, []string{"ETCD_INSECURE_SKIP_VERIFY=maybe"}, []string{"ETCD_INSECURE_SKIP_VERIFY", `"maybe"`}, ""},
		{"user and password", nil, []string{"ETCD_USERNAME_AND_PASSWORD=hunter2"}, []string{"ETCD_USERNAME_AND_PASSWORD"}, "hunter2"},
		{"user without password", nil, []string{"ETCD_USERNAME=alice"}, []string{"ETCD_USERNAME", `"alice"`, "ETCD_PASSWORD"}, ""},
		{"password without user", nil, []string{"ETCD_PASSWORD=hunter2"}, []string{"ETCD_PASSWORD", "ETCD_USERNAME"}, "hunter2"},
		{"server ca", nil, []string{"ETCD_SERVER_CA=not a certificate"}, []string{"ETCD_SERVER_CA"}, ""},
		{"client cert alone", nil, []string{"ETCD_CLIENT_CERT=x"}, []string{"ETCD_CLIENT_CERT", "ETCD_CLIENT_KEY"}, ""},
		{"client key bad", nil, []string{"ETCD_CLIENT_CERT=x", "ETCD_CLIENT_KEY=secret-key"}, []string{"ETCD_CLIENT_CERT", "ETCD_CLIENT_KEY"}, "secret-key"},
		{"discovery domain", nil, []string{"ETCD_ENDPOINTS=", "ETCD_DISCOVERY_SRV=bad domain!!"}, []string{"ETCD_DISCOVERY_SRV", `"bad domain!!"`}, ""},
		{"discovery and endpoints", nil, []string{"ETCD_DISCOVERY_SRV=example.com"}, []string{"ETCD_ENDPOINTS", "ETCD_DISCOVERY_SRV"}, ""},
		{"discovery dns", nil, []string{"ETCD_ENDPOINTS=", "ETCD_DISCOVERY_SRV=example.com", "ETCD_DISCOVERY_DNS=nowhere"}, []string{"ETCD_DISCOVERY_DNS", `"nowhere"`}, ""},

		{"mode setuid", []string{"--mode=4755"}, nil, []string{"--mode", `"4755"`}, ""},
		{"mode digits", []string{"--mode=0999"}, nil, []string{"--mode", `"0999"`}, ""},
		{"mode zero", []string{"--mode=0"}, nil, []string{"--mode", `"0"`}, ""},
		{"listen bogus", []string{"--listen=bogus"}, nil, []string{"--listen", `"bogus"`}, ""},
		{"listen port", []string{"--listen=:99999"}, nil, []string{"--listen", `":99999"`}, ""},
		{"listen host", []string{"--listen=bad host!!:9090"}, nil, []string{"--listen", `"bad host!!:9090"`}, ""},
		{"template missing", []string{"--template=/no/such.tmpl:" + filepath.Join(dir, "out")}, nil, []string{"--template", "/no/such.tmpl"}, ""},
		{"template broken", []string{"--template=" + badTmpl + ":" + filepath.Join(dir, "out")}, nil, []string{"--template", badTmpl}, ""},
		{"template no dest", []string{"--template=" + badTmpl}, nil, []string{"--template", badTmpl}, ""},
		{"signal", []string{"--signal=SIGFOO"}, nil, []string{"--signal", `"SIGFOO"`}, ""},
		{"owner", []string{"--owner=no-such-user-here"}, nil, []string{"--owner", `"no-such-user-here"`}, ""},
		{"group", []string{"--group=no-such-group-here"}, nil, []string{"--group", `"no-such-group-here"`}, ""},
		{"layout", []string{"--layout=fancy"}, nil, []string{"--layout", `"fancy"`}, ""},
		{"on-change", []string{"--on-change=reboot"}, nil, []string{"--on-change", `"reboot"`}, ""},
		{"log-format", []string{"--log-format=xml"}, nil, []string{"--log-format", `"xml"`}, ""},
		{"log-level", []string{"--log-level=loud"}, nil, []string{"--log-level", `"loud"`}, ""},
		{"kill-timeout", []string{"--kill-timeout=-1s"}, nil, []string{"--kill-timeout", "-1s"}, ""},
		{"start-timeout", []string{"--start-timeout=-1s"}, nil, []string{"--start-timeout", "-1s"}, ""},
		{"check-interval", []string{"--check-interval=0s"}, nil, []string{"--check-interval", "0s"}, ""},
		{"coalesce", []string{"--coalesce=-5ms"}, nil, []string{"--coalesce", "-5ms"}, ""},
		{"settle", []string{"--settle=-1s"}, nil, []string{"--settle", "-1s"}, ""},
		{"settle unit", []string{"--settle=5"}, nil, []string{"--settle", `"5"`}, ""},
		{"command-timeout", []string{"--command-timeout=0s"}, nil, []string{"--command-timeout", "0s"}, ""},
		{"wait", []string{"--wait=soon"}, nil, []string{"--wait", `"soon"`}, ""},
		{"check-cmd quote", []string{"--check-cmd='unterminated"}, nil, []string{"--check-cmd", `"'unterminated"`}, ""},
		{"check-cmd missing", []string{"--check-cmd=/no/such/checker {{staged}}"}, nil, []string{"--check-cmd", "/no/such/checker"}, ""},
		{"reload-cmd missing", []string{"--reload-cmd=no-such-reloader-here"}, nil, []string{"--reload-cmd", "no-such-reloader-here"}, ""},
		{"config-dir", []string{"--config-dir=/no/such/dir"}, nil, []string{"--config-dir", "/no/such/dir"}, ""},
		{"discovery-srv", []string{"--discovery-srv=bad domain!!"}, []string{"ETCD_ENDPOINTS="}, []string{"--discovery-srv", `"bad domain!!"`}, ""},
		{"bool", []string{"--fsync=maybe"}, nil, []string{"--fsync", `"maybe"`}, ""},
		{"unknown flag", []string{"--bogus=1"}, nil, []string{"--bogus"}, ""},
		{"once with command", []string{"--once", "--", "/bin/true"}, nil, []string{"--once", "/bin/true"}, ""},
		{"target is a file", []string{"--target=" + file}, nil, []string{"--target", file}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			target := filepath.Join(t.TempDir(), "target")
			args := append([]string{"--prefix=/p", "--target=" + target, "--start-timeout=2s"}, tc.flags...)
			cmd := exec.Command(binary, args...)
			cmd.Env = append(withoutEtcdEnv(os.Environ()), "E2E_CHILD=", "ETCD_ENDPOINTS="+etcd.Addr().String())
			cmd.Env = append(cmd.Env, tc.env...)
			var stdout, stderr bytes.Buffer
			cmd.Stdout, cmd.Stderr = &stdout, &stderr
			done := make(chan error, 1)
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			go func() { done <- cmd.Wait() }()
			select {
			case <-done:
			case <-time.After(20 * time.Second):
				_ = cmd.Process.Kill()
				<-done
				t.Fatalf("still running after 20s; output:\n%s", stderr.String())
			}
			out := strings.TrimRight(stderr.String(), "\n")
			if code := cmd.ProcessState.ExitCode(); code != 2 {
				t.Errorf("exit code %d, want 2; output:\n%s", code, out)
			}
			if lines := strings.Split(out, "\n"); len(lines) != 1 {
				t.Errorf("%d lines, want one:\n%s", len(lines), out)
			}
			for _, w := range tc.want {
				if !strings.Contains(out, w) {
					t.Errorf("the line does not name %s: %s", w, out)
				}
			}
			if tc.never != "" && strings.Contains(out, tc.never) {
				t.Errorf("the line shows the secret %q: %s", tc.never, out)
			}
			if stdout.Len() > 0 {
				t.Errorf("wrote to stdout: %s", stdout.String())
			}
			if _, err := os.Lstat(target); !os.IsNotExist(err) && tc.name != "target is a file" {
				t.Errorf("the target was created (%v)", err)
			}
			if n := contacted.Load(); n > 0 {
				t.Errorf("etcd was contacted %d times", n)
			}
		})
	}
}

// withoutEtcdEnv drops the ETCD_ variables of the test's own environment.
func withoutEtcdEnv(env []string) []string {
	var out []string
	for _, kv := range env {
		if !strings.HasPrefix(kv, "ETCD_") {
			out = append(out, kv)
		}
	}
	return out
}
