package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/etcd-config-dispenser/etcd-config-dispenser/internal/etcdtest"
)

func TestMutualTLSWithCertificatesFromTheEnvironment(t *testing.T) {
	e := etcdtest.Start(t, etcdtest.WithTLS())
	txn(t, e.Client(), "/p/cert.pem", "C")
	keyFile := filepath.Join(t.TempDir(), "client-key.pem")
	if err := os.WriteFile(keyFile, e.TLS.ClientKey, 0o600); err != nil {
		t.Fatal(err)
	}
	d := startAs(t, e, runOpts{Env: []string{
		"ETCD_SERVER_CA_FILE=" + e.TLS.CAFile,
		"ETCD_CLIENT_CERT=" + string(e.TLS.ClientCert),
		"ETCD_CLIENT_KEY_FILE=" + keyFile,
	}}, "", "--prefix=/p", "--once")
	if code := d.wait(30 * time.Second); code != 0 {
		t.Fatalf("exit code %d over mutual TLS", code)
	}
	if got := tree(t, d.target); got["cert.pem"] != "C" {
		t.Fatalf("target %v", got)
	}
}

func TestTLSWithoutAClientCertificateFailsAndSaysWhy(t *testing.T) {
	e := etcdtest.Start(t, etcdtest.WithTLS())
	d := startAs(t, e, runOpts{Env: []string{"ETCD_SERVER_CA_FILE=" + e.TLS.CAFile}},
		"", "--prefix=/p", "--once", "--start-timeout=8s")
	if code := d.wait(30 * time.Second); code != 1 {
		t.Fatalf("exit code %d without a client certificate, want 1", code)
	}
	if !strings.Contains(d.stderr.String(), "etcd unreachable") {
		t.Fatalf("no log line about etcd being unreachable:\n%s", d.stderr.String())
	}
}

// A user who may only read the prefix is enough, and its password reaches
// neither the log nor the child.
func TestAuthWithAReadOnlyUserKeepsThePasswordSecret(t *testing.T) {
	e := etcdtest.Start(t)
	user, password := e.EnableAuth("/p/")
	txn(t, e.Client(), "/p/a", "1", "/other/x", "not readable")
	pwFile := filepath.Join(t.TempDir(), "password")
	if err := os.WriteFile(pwFile, []byte(password), 0o600); err != nil {
		t.Fatal(err)
	}
	d := startAs(t, e, runOpts{Env: []string{"ETCD_USERNAME=" + user, "ETCD_PASSWORD=" + password}},
		"env", "--prefix=/p", "--log-level=debug")
	evs := d.waitEvent("env", func(ev event) bool { return ev.What == "env" })
	var env map[string]string
	for _, ev := range evs {
		if ev.What == "env" {
			env = ev.Files
		}
	}
	if _, ok := env["ETCD_PASSWORD"]; ok || env["ETCD_USERNAME"] != user {
		t.Fatalf("the child got %v; want ETCD_USERNAME but not ETCD_PASSWORD", env)
	}
	txn(t, e.Client(), "/p/a", "2")
	etcdtest.Eventually(t, 30*time.Second, equalTree(t, d.target, map[string]string{"a": "2"}))
	if strings.Contains(d.stderr.String(), password) {
		t.Fatalf("the password appears in the log:\n%s", d.stderr.String())
	}

	// Given as a file, the same works.
	d2 := startAs(t, e, runOpts{Env: []string{"ETCD_USERNAME=" + user, "ETCD_PASSWORD_FILE=" + pwFile}},
		"", "--prefix=/p", "--once")
	if code := d2.wait(30 * time.Second); code != 0 {
		t.Fatalf("exit code %d with ETCD_PASSWORD_FILE", code)
	}
}

func TestATargetOthersCanWriteIsRefused(t *testing.T) {
	e := etcdtest.Start(t)
	target := filepath.Join(t.TempDir(), "shared")
	if err := os.Mkdir(target, 0o777); err != nil {
		t.Fatal(err)
	}
	os.Chmod(target, 0o777)
	d := startAs(t, e, runOpts{Target: target}, "", "--prefix=/p")
	if code := d.wait(30 * time.Second); code != 1 {
		t.Fatalf("exit code %d, want 1", code)
	}
	if !strings.Contains(d.stderr.String(), "chmod go-w") {
		t.Fatalf("the message does not say how to fix it:\n%s", d.stderr.String())
	}
}

func TestASymlinkPlantedInTheTargetIsNeverFollowed(t *testing.T) {
	e := etcdtest.Start(t)
	outside := t.TempDir()
	target := filepath.Join(t.TempDir(), "config")
	if err := os.Mkdir(target, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(outside, filepath.Join(target, "evil")); err != nil {
		t.Fatal(err)
	}
	txn(t, e.Client(), "/p/evil/x", "1", "/p/good", "2")
	for _, layout := range []string{"atomic", "plain"} {
		d := startAs(t, e, runOpts{Target: target}, "", "--prefix=/p", "--layout="+layout, "--once")
		if code := d.wait(30 * time.Second); code != 0 {
			t.Fatalf("%s: exit code %d", layout, code)
		}
		if entries, _ := os.ReadDir(outside); len(entries) != 0 {
			t.Fatalf("%s: written through the planted symlink: %v", layout, entries)
		}
		if to, err := os.Readlink(filepath.Join(target, "evil")); err != nil || to != outside {
			t.Fatalf("%s: the planted symlink was removed or changed: %q %v", layout, to, err)
		}
	}
}
