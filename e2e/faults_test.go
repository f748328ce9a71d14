package e2e

import (
	"context"
	"fmt"
	"maps"
	"os"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/etcd-config-dispenser/etcd-config-dispenser/internal/etcdtest"
)

// inEtcd reads the prefix as etcd has it now, keyed like the target.
func inEtcd(t *testing.T, c *clientv3.Client, prefix string) map[string]string {
	t.Helper()
	return etcdtest.Read(t, c, prefix)
}

func TestCompactionWhileDisconnectedRemovesVanishedFiles(t *testing.T) {
	etcdtest.EachVersion(t, testCompactionWhileDisconnectedRemovesVanishedFiles)
}

func testCompactionWhileDisconnectedRemovesVanishedFiles(t *testing.T, e *etcdtest.Server) {
	c := e.Client()
	txn(t, c, "/p/a", "1", "/p/b", "1")
	d := start(t, e, "reader", "--prefix=/p")
	d.waitEvent("start", func(ev event) bool { return ev.What == "start" })

	e.Bridge.Down()
	txn(t, c, "/p/a", "")
	txn(t, c, "/p/b", "2")
	e.Compact(context.Background())
	e.Bridge.Up()

	etcdtest.Eventually(t, 30*time.Second, equalTree(t, d.target, map[string]string{"b": "2"}))
	d.waitEvent("the resync", func(ev event) bool { return ev.What == "hangup" && ev.Files["b"] == "2" })
	if n := d.finalSignals(); n != 1 {
		t.Fatalf("%d signals, want 1 for the resync", n)
	}
}

func TestWipedEtcdIsDetectedAndMirroredAgain(t *testing.T) {
	etcdtest.EachVersion(t, testWipedEtcdIsDetectedAndMirroredAgain)
}

func testWipedEtcdIsDetectedAndMirroredAgain(t *testing.T, e *etcdtest.Server) {
	for i := range 10 {
		txn(t, e.Client(), fmt.Sprintf("/p/old%d", i), "x")
	}
	d := start(t, e, "reader", "--prefix=/p")
	d.waitEvent("start", func(ev event) bool { return ev.What == "start" && len(ev.Files) == 10 })
	e.Wipe()
	txn(t, e.Client(), "/p/new", "y")
	etcdtest.Eventually(t, 30*time.Second, equalTree(t, d.target, map[string]string{"new": "y"}))
	if len(d.stderr.lines("resync")) == 0 {
		t.Fatalf("no log line about the resync:\n%s", d.stderr.String())
	}
}

// kill -9 at any moment leaves a complete version; a restart converges.
func TestKill9DuringAWriteStormLeavesAWholeVersionAndRestartConverges(t *testing.T) {
	e := etcdtest.Start(t)
	c := e.Client()
	keys := []string{"a", "b", "c/d", "c/e", "f"}
	write := func(n int) {
		var kv []string
		for _, k := range keys {
			kv = append(kv, "/p/"+k, fmt.Sprintf("txn-%d", n))
		}
		txn(t, c, kv...)
	}
	write(0)
	target := t.TempDir() + "/config"
	n := 1
	for round := range 5 {
		d := startAs(t, e, runOpts{Target: target}, "", "--prefix=/p", "--coalesce=0")
		etcdtest.Eventually(t, 30*time.Second, func() error {
			got, err := readTree(target, target)
			if err == nil && len(got) != len(keys) {
				err = fmt.Errorf("round %d: %d files", round, len(got))
			}
			return err
		})
		for range 20 + round*7 {
			write(n)
			n++
		}
		_ = d.cmd.Process.Signal(syscall.SIGKILL)
		d.wait(10 * time.Second)
		got := tree(t, target)
		seen := map[string]bool{}
		for _, v := range got {
			seen[v] = true
		}
		if len(got) != len(keys) || len(seen) != 1 {
			t.Fatalf("after kill -9 in round %d the target shows a torn version: %v", round, got)
		}
	}
	d := startAs(t, e, runOpts{Target: target}, "", "--prefix=/p")
	want := inEtcd(t, c, "/p/")
	etcdtest.Eventually(t, 30*time.Second, equalTree(t, target, want))
	entries, _ := os.ReadDir(target)
	versions := 0
	for _, en := range entries {
		if en.IsDir() && en.Name() != "c" && en.Name()[:2] == ".." {
			versions++
		}
	}
	// Each version is one directory object per directory of the tree (/ and c): the live
	// version and the previous one at most.
	if versions > 2*2 {
		t.Fatalf("%d version directories left after restarts, want at most 4: %v", versions, entries)
	}
	_ = d.cmd.Process.Signal(syscall.SIGTERM)
	d.wait(10 * time.Second)
}

func TestABurstOfTransactionsSendsFewSignals(t *testing.T) {
	e := etcdtest.Start(t)
	c := e.Client()
	txn(t, c, "/p/k", "start")
	d := start(t, e, "reader", "--prefix=/p")
	d.waitEvent("start", func(ev event) bool { return ev.What == "start" })
	done := make(chan struct{})
	for w := range 8 {
		go func() {
			defer func() { done <- struct{}{} }()
			for i := range 250 {
				txn(t, c, fmt.Sprintf("/p/w%d", w), fmt.Sprint(i))
			}
		}()
	}
	for range 8 {
		<-done
	}
	want := inEtcd(t, c, "/p/")
	d.waitEvent("the last version", func(ev event) bool { return maps.Equal(ev.Files, want) })
	if n := d.signals(); n > 200 {
		t.Fatalf("%d signals for 2000 transactions", n)
	}
	t.Logf("2000 transactions from 8 writers: %d signals", d.signals())
}
