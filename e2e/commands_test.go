package e2e

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/etcd-config-dispenser/etcd-config-dispenser/internal/etcdtest"
)

// refuseBroken is a check command that fails, saying why, when the staged version (a
// directory, or a rendered file) contains the word "broken".
const refuseBroken = `sh -c 'if grep -rq broken "$DISPENSER_STAGED"; then echo "config is broken" >&2; exit 1; fi'`

func waitLog(t *testing.T, d *dispenser, words ...string) {
	t.Helper()
	etcdtest.Eventually(t, 30*time.Second, func() error {
		if len(d.stderr.lines(words...)) == 0 {
			return errors.New("no log line with " + strings.Join(words, ", "))
		}
		return nil
	})
}

func TestFailedCheckKeepsTheOldVersionThenPassesAtTheNextChange(t *testing.T) {
	e := etcdtest.Start(t)
	c := e.Client()
	src, dest := templateFiles(t, `conf {{get "a"}}`)
	txn(t, c, "/p/a", "good")
	d := start(t, e, "reader", "--prefix=/p", "--template="+src+":"+dest, "--check-cmd="+refuseBroken,
		"--check-mirror-cmd="+refuseBroken)
	d.waitEvent("start", func(ev event) bool { return ev.What == "start" })

	txn(t, c, "/p/a", "broken")
	waitLog(t, d, "check command failed", "config is broken")
	if got := tree(t, d.target); got["a"] != "good" {
		t.Fatalf("target %v after a failed check, want the old version", got)
	}
	if got, _ := os.ReadFile(dest); string(got) != "conf good" {
		t.Fatalf("rendered %q after a failed check, want the old file", got)
	}

	txn(t, c, "/p/a", "fixed")
	d.waitEvent("fixed", func(ev event) bool { return ev.What == "hangup" && ev.Files["a"] == "fixed" })
	if n := d.finalSignals(); n != 1 {
		t.Fatalf("%d signals, want 1: none for the refused version", n)
	}
	if got, _ := os.ReadFile(dest); string(got) != "conf fixed" {
		t.Fatalf("rendered %q", got)
	}
}

// The check command is run directly, without a shell, with {{staged}} replaced.
func TestCheckCommandWithoutAShell(t *testing.T) {
	e := etcdtest.Start(t)
	c := e.Client()
	txn(t, c, "/p/a", "1")
	d := start(t, e, "reader", "--prefix=/p", "--check-cmd=test -f {{staged}}/a")
	d.waitEvent("start", func(ev event) bool { return ev.What == "start" })
	txn(t, c, "/p/b", "2", "/p/a", "")
	waitLog(t, d, "check command failed", "command=test", "code=1")
	txn(t, c, "/p/a", "3")
	d.waitEvent("a=3", func(ev event) bool { return ev.What == "hangup" && ev.Files["a"] == "3" && ev.Files["b"] == "2" })
}

// A reload command replaces the signal, unless --signal is given too.
func TestReloadCommandRunsAfterTheVersionIsLive(t *testing.T) {
	e := etcdtest.Start(t)
	c := e.Client()
	seen := filepath.Join(t.TempDir(), "seen")
	reload := `sh -c 'cat "$DISPENSER_TARGET/a" >> ` + seen + `; echo >> ` + seen + `'`
	txn(t, c, "/p/a", "1")
	d := start(t, e, "reader", "--prefix=/p", "--reload-cmd="+reload)
	d.waitEvent("start", func(ev event) bool { return ev.What == "start" })
	txn(t, c, "/p/a", "2")
	txn(t, c, "/p/a", "3")
	etcdtest.Eventually(t, 30*time.Second, func() error {
		b, _ := os.ReadFile(seen)
		if !strings.HasSuffix(string(b), "3\n") {
			return errors.New("the reload command did not see a=3: " + string(b))
		}
		return nil
	})
	if n := d.finalSignals(); n != 0 {
		t.Fatalf("%d signals, want none: the reload command replaces the signal", n)
	}

	d2 := start(t, e, "reader", "--prefix=/p", "--reload-cmd=true", "--signal=SIGHUP")
	d2.waitEvent("start", func(ev event) bool { return ev.What == "start" })
	txn(t, c, "/p/a", "4")
	d2.waitEvent("a=4", func(ev event) bool { return ev.What == "hangup" && ev.Files["a"] == "4" })
	waitLog(t, d2, "reload command ran")
}

// Without a command (--once, a sidecar) the reload command runs after the first sync that
// wrote something, as confd runs it; confd's {{.src}} names the staged file.
func TestReloadAfterTheFirstSyncWithoutACommand(t *testing.T) {
	e := etcdtest.Start(t)
	c := e.Client()
	src, dest := templateFiles(t, `a={{get "a"}}`)
	marker := filepath.Join(t.TempDir(), "reloaded")
	txn(t, c, "/p/a", "1")
	d := start(t, e, "", "--prefix=/p", "--once", "--template="+src+":"+dest,
		"--check-cmd=grep -q a=1 {{.src}}", "--reload-cmd=touch "+marker)
	if code := d.wait(30 * time.Second); code != 0 {
		t.Fatalf("exit %d", code)
	}
	if _, err := os.Stat(marker); err != nil {
		t.Fatalf("the reload command did not run after the first sync: %v", err)
	}
	if b, _ := os.ReadFile(dest); string(b) != "a=1" {
		t.Fatalf("rendered %q", b)
	}
}
