package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/etcd-config-dispenser/etcd-config-dispenser/internal/etcdtest"
)

func TestChildStartsOnlyAfterTheFilesExist(t *testing.T) {
	e := etcdtest.Start(t)
	txn(t, e.Client(), "/app/cert.pem", "C1", "/app/key.pem", "K1", "/app2/other", "not mine")
	d := start(t, e, "reader", "--prefix=/app")
	evs := d.waitEvent("start", func(ev event) bool { return ev.What == "start" })
	want := map[string]string{"cert.pem": "C1", "key.pem": "K1"}
	if fmt.Sprint(evs[0].Files) != fmt.Sprint(want) {
		t.Fatalf("child saw %v at start, want %v", evs[0].Files, want)
	}
	if got := tree(t, d.target); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("target %v, want %v (the /app2 prefix must not leak in)", got, want)
	}
}

// A child that reads every file at each signal never sees a mix of two
// transactions, however fast they come.
func TestEachTransactionIsSeenWhole(t *testing.T) {
	e := etcdtest.Start(t)
	c := e.Client()
	keys := []string{"cert.pem", "key.pem", "chain/intermediate.pem", "chain/root.pem", "nginx.conf"}
	write := func(n int) {
		var kv []string
		for _, k := range keys {
			kv = append(kv, "/tls/"+k, fmt.Sprintf("txn-%d", n))
		}
		txn(t, c, kv...)
	}
	write(0)
	d := start(t, e, "reader", "--prefix=/tls")
	d.waitEvent("start", func(ev event) bool { return ev.What == "start" })
	for n := 1; n <= 40; n++ {
		write(n)
	}
	evs := d.waitEvent("txn-40", func(ev event) bool { return ev.Files["cert.pem"] == "txn-40" })
	for _, ev := range evs {
		seen := map[string]bool{}
		for _, v := range ev.Files {
			seen[v] = true
		}
		if len(ev.Files) != len(keys) || len(seen) != 1 {
			t.Fatalf("child saw a torn version at %q: %v", ev.What, ev.Files)
		}
	}
	if n := d.signals(); n < 1 || n > 40 {
		t.Fatalf("%d signals for 40 transactions", n)
	}
}

func TestDeletesAndNestedKeys(t *testing.T) {
	e := etcdtest.Start(t)
	c := e.Client()
	txn(t, c, "/p/a/b/c.conf", "deep", "/p/x", "top", "/p/a/y", "mid")
	d := start(t, e, "reader", "--prefix=/p/")
	etcdtest.Eventually(t, 30*time.Second, equalTree(t, d.target,
		map[string]string{"a/b/c.conf": "deep", "x": "top", "a/y": "mid"}))
	txn(t, c, "/p/a/b/c.conf", "", "/p/x", "")
	etcdtest.Eventually(t, 30*time.Second, equalTree(t, d.target, map[string]string{"a/y": "mid"}))
	if _, err := os.Lstat(filepath.Join(d.target, "x")); !os.IsNotExist(err) {
		t.Fatalf("x still there after its key was deleted: %v", err)
	}
	if _, err := os.Stat(filepath.Join(d.target, "a", "b")); !os.IsNotExist(err) {
		t.Fatalf("empty directory a/b left behind: %v", err)
	}
}

func TestHostileKeysNeverWriteOutsideTheTarget(t *testing.T) {
	e := etcdtest.Start(t)
	c := e.Client()
	txn(t, c, "/p/good", "1")
	d := start(t, e, "reader", "--prefix=/p")
	d.waitEvent("start", func(ev event) bool { return ev.What == "start" })
	parent := filepath.Dir(d.target)
	before, _ := os.ReadDir(parent)

	long := strings.Repeat("x", 300)
	txn(t, c, "/p/../escaped", "evil", "/p/a//b", "evil", "/p/..data", "evil", "/p/a\x00b", "evil",
		"/p/"+long, "evil", "/p/../../tmp/escaped", "evil", "/p/also-good", "2")
	etcdtest.Eventually(t, 30*time.Second, equalTree(t, d.target, map[string]string{"good": "1", "also-good": "2"}))
	after, _ := os.ReadDir(parent)
	if len(after) != len(before) {
		t.Fatalf("the target's parent changed: %v -> %v", before, after)
	}
	if _, err := os.Stat("/tmp/escaped"); err == nil {
		t.Fatal("/tmp/escaped was written")
	}
	if n := len(d.stderr.lines("skip")); n < 5 {
		t.Fatalf("%d log lines about skipped keys, want one per hostile key:\n%s", n, d.stderr.String())
	}
	txn(t, c, "/p/good", "3")
	d.waitEvent("the next change", func(ev event) bool { return ev.Files["good"] == "3" })
}

func TestIdenticalPutSendsNothing(t *testing.T) {
	e := etcdtest.Start(t)
	c := e.Client()
	txn(t, c, "/p/a", "same")
	d := start(t, e, "reader", "--prefix=/p")
	d.waitEvent("start", func(ev event) bool { return ev.What == "start" })
	txn(t, c, "/p/a", "same")
	txn(t, c, "/p/a", "same", "/p/b", "")
	txn(t, c, "/p/marker", "m")
	d.waitEvent("marker", func(ev event) bool { return ev.Files["marker"] == "m" })
	if n := d.finalSignals(); n != 1 {
		t.Fatalf("%d signals, want exactly 1 (for the marker; identical puts change nothing)", n)
	}
}

func TestChildExitCodeBecomesTheDispensers(t *testing.T) {
	e := etcdtest.Start(t)
	txn(t, e.Client(), "/p/a", "1")
	d := start(t, e, "exit:7", "--prefix=/p")
	if code := d.wait(30 * time.Second); code != 7 {
		t.Fatalf("exit code %d, want the child's 7", code)
	}
}

func TestSIGTERMReachesTheChild(t *testing.T) {
	e := etcdtest.Start(t)
	txn(t, e.Client(), "/p/a", "1")
	d := start(t, e, "reader", "--prefix=/p")
	d.waitEvent("start", func(ev event) bool { return ev.What == "start" })
	_ = d.cmd.Process.Signal(syscall.SIGTERM)
	if code := d.wait(30 * time.Second); code != 0 {
		t.Fatalf("exit code %d, want 0 (the child exits 0 on SIGTERM)", code)
	}
	d.waitEvent("terminate", func(ev event) bool { return ev.What == "terminate" })
}

func TestCommandNotFoundExits127(t *testing.T) {
	e := etcdtest.Start(t)
	txn(t, e.Client(), "/p/a", "1")
	d := start(t, e, "", "--prefix=/p", "--", "/no/such/program")
	if code := d.wait(30 * time.Second); code != 127 {
		t.Fatalf("exit code %d, want 127", code)
	}
	if !strings.Contains(d.stderr.String(), "/no/such/program") {
		t.Fatalf("the message does not name the command:\n%s", d.stderr.String())
	}
}

func TestBadFlagExits2WithAMessage(t *testing.T) {
	e := etcdtest.Start(t)
	d := start(t, e, "", "--prefix=/p", "--signal=SIGNOPE")
	if code := d.wait(30 * time.Second); code != 2 {
		t.Fatalf("exit code %d, want 2", code)
	}
	if !strings.Contains(d.stderr.String(), `--signal "SIGNOPE"`) {
		t.Fatalf("the message does not name the flag:\n%s", d.stderr.String())
	}
}

func TestOnceSyncsAndExits(t *testing.T) {
	e := etcdtest.Start(t)
	txn(t, e.Client(), "/p/a", "1", "/p/b/c", "2")
	d := start(t, e, "", "--prefix=/p", "--once")
	if code := d.wait(30 * time.Second); code != 0 {
		t.Fatalf("--once exit code %d", code)
	}
	if got := tree(t, d.target); fmt.Sprint(got) != fmt.Sprint(map[string]string{"a": "1", "b/c": "2"}) {
		t.Fatalf("target %v", got)
	}
}

func TestOnceFailsWhenEtcdIsUnreachable(t *testing.T) {
	e := etcdtest.Start(t)
	e.Stop()
	d := start(t, e, "", "--prefix=/p", "--once", "--start-timeout=2s")
	if code := d.wait(30 * time.Second); code == 0 {
		t.Fatal("--once exited 0 without etcd")
	}
	if _, err := os.Stat(d.target); err == nil {
		entries, _ := os.ReadDir(d.target)
		for _, en := range entries {
			if !strings.HasPrefix(en.Name(), "..") {
				t.Fatalf("files written without a sync: %v", entries)
			}
		}
	}
}

func TestSidecarKeepsSyncingAndStopsOnSIGTERM(t *testing.T) {
	e := etcdtest.Start(t)
	c := e.Client()
	txn(t, c, "/p/a", "1")
	d := start(t, e, "", "--prefix=/p")
	etcdtest.Eventually(t, 30*time.Second, equalTree(t, d.target, map[string]string{"a": "1"}))
	txn(t, c, "/p/a", "2")
	etcdtest.Eventually(t, 30*time.Second, equalTree(t, d.target, map[string]string{"a": "2"}))
	_ = d.cmd.Process.Signal(syscall.SIGTERM)
	if code := d.wait(30 * time.Second); code != 0 {
		t.Fatalf("sidecar exit code %d after SIGTERM, want 0", code)
	}
}

func TestPlainLayoutWritesFilesInPlace(t *testing.T) {
	e := etcdtest.Start(t)
	c := e.Client()
	txn(t, c, "/p/a", "1", "/p/d/b", "2")
	d := start(t, e, "reader", "--prefix=/p", "--layout=plain", "--mode=0640")
	d.waitEvent("start", func(ev event) bool { return ev.What == "start" })
	st, err := os.Lstat(filepath.Join(d.target, "a"))
	if err != nil || !st.Mode().IsRegular() || st.Mode().Perm() != 0o640 {
		t.Fatalf("a: %v, %v; want a regular file with mode 0640", st.Mode(), err)
	}
	txn(t, c, "/p/a", "3", "/p/d/b", "")
	d.waitEvent("the change", func(ev event) bool { return ev.What == "hangup" && ev.Files["a"] == "3" })
	if got := tree(t, d.target); fmt.Sprint(got) != fmt.Sprint(map[string]string{"a": "3"}) {
		t.Fatalf("target %v", got)
	}
}
