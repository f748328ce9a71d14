package e2e

import (
	"context"
	"fmt"
	"maps"
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

// Narrow: two keys. Wide: 600 more flat keys (a bucketed top level), of which 500 are deleted
// while disconnected, so the resync crosses back below the flat threshold; then, cut off
// again without a compaction, 300 keys come back in several transactions, which the resumed
// watch must all deliver (bucketed again).
func TestCompactionWhileDisconnectedRemovesVanishedFiles(t *testing.T) {
	etcdtest.EachVersion(t, func(t *testing.T, e *etcdtest.Server) {
		t.Run("narrow", func(t *testing.T) { testCompactionWhileDisconnectedRemovesVanishedFiles(t, e, "/p", 0) })
		t.Run("wide", func(t *testing.T) { testCompactionWhileDisconnectedRemovesVanishedFiles(t, e, "/w", 600) })
	})
}

func testCompactionWhileDisconnectedRemovesVanishedFiles(t *testing.T, e *etcdtest.Server, prefix string, wide int) {
	c := e.Client()
	putAll(t, c, append(flatKeys(prefix, 0, wide, "0"), prefix+"/a", "1", prefix+"/b", "1")...)
	d := start(t, e, "reader", "--prefix="+prefix)
	d.waitEvent("start", func(ev event) bool { return ev.What == "start" && len(ev.Files) == wide+2 })
	wantForm(t, d.target, wide > 256)

	e.Bridge.Down()
	txn(t, c, prefix+"/a", "")
	txn(t, c, prefix+"/b", "2")
	putAll(t, c, flatKeys(prefix, min(wide, 100), wide, "")...)
	e.Compact(context.Background())
	e.Bridge.Up()

	want := inEtcd(t, c, prefix+"/")
	etcdtest.Eventually(t, 30*time.Second, convergedTo(d.target, want))
	d.waitEvent("the resync", func(ev event) bool { return ev.What == "hangup" && maps.Equal(ev.Files, want) })
	if wide == 0 {
		if n := d.finalSignals(); n != 1 {
			t.Fatalf("%d signals, want 1 for the resync", n)
		}
		return
	}
	if n := d.signals(); n != 1 {
		t.Fatalf("%d signals, want 1 for the resync", n)
	}
	wantForm(t, d.target, false)

	e.Bridge.Down()
	putAll(t, c, flatKeys(prefix, 100, 400, "3")...)
	txn(t, c, prefix+"/b", "3")
	e.Bridge.Up()
	want = inEtcd(t, c, prefix+"/")
	etcdtest.Eventually(t, 30*time.Second, convergedTo(d.target, want))
	d.waitEvent("the keys written while cut off", func(ev event) bool { return ev.What == "hangup" && maps.Equal(ev.Files, want) })
	wantForm(t, d.target, true)
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

// kill -9 at any moment leaves a complete version; a restart converges. Narrow: five keys, each
// transaction rewrites them all. Wide: a few hundred flat top-level keys, added and removed in
// transactions of up to 128 operations so that the top level crosses the bucketed threshold (256)
// and the flat one (128) both ways in each round, while two nested keys change in every
// transaction; a restart finds a target bucketed in some rounds, flat in others.
func TestKill9DuringAWriteStormLeavesAWholeVersionAndRestartConverges(t *testing.T) {
	narrow := func(h *history, round int) (txns [][]string) {
		for range 20 + round*7 {
			v := fmt.Sprintf("txn-%d", h.txns+len(txns)+1)
			txns = append(txns, []string{"a", v, "b", v, "c/d", v, "c/e", v, "f", v})
		}
		return txns
	}
	for _, tc := range []struct {
		name  string
		storm func(h *history, round int) [][]string // the round's transactions, relative keys
	}{
		{"narrow", narrow},
		{"wide", wideStorm},
	} {
		t.Run(tc.name, func(t *testing.T) {
			testKill9DuringAWriteStorm(t, tc.storm)
		})
	}
}

// wideStorm takes the flat keys k0000... present (200 or 300 at the start of a round, none
// at the first) up to 300, rewrites them, down to 100, and back up to 200 (even rounds) or 300.
func wideStorm(h *history, round int) (txns [][]string) {
	n := 0
	for n < 1000 && h.now[fmt.Sprintf("k%04d", n)] != "" {
		n++
	}
	step := func(kv ...string) {
		v := fmt.Sprintf("r%d-t%d", round, len(txns))
		txns = append(txns, append(kv, "dir/a", v, "dir/b", v))
	}
	key := func(i int) string { return fmt.Sprintf("k%04d", i) }
	grow := func(to int) {
		for n < to {
			var kv []string
			for ; n < to && len(kv) < 2*100; n++ {
				kv = append(kv, key(n), fmt.Sprintf("r%d-t%d", round, len(txns)))
			}
			for i := 0; i < 20 && i < n-len(kv)/2; i++ { // and a few that were there
				kv = append(kv, key(i), fmt.Sprintf("r%d-t%d", round, len(txns)))
			}
			step(kv...)
		}
	}
	shrink := func(to int) {
		for n > to {
			var kv []string
			for ; n > to && len(kv) < 2*100; n-- {
				kv = append(kv, key(n-1), "")
			}
			for i := range 20 {
				kv = append(kv, key(i), fmt.Sprintf("r%d-t%d", round, len(txns)))
			}
			step(kv...)
		}
	}
	grow(300)
	for i := 0; i < n; i += 120 {
		var kv []string
		for j := i; j < min(i+120, n); j++ {
			kv = append(kv, key(j), fmt.Sprintf("r%d-t%d", round, len(txns)))
		}
		step(kv...)
	}
	shrink(100)
	grow(200 + 100*(round%2))
	return txns
}

// testKill9DuringAWriteStorm runs rounds of: start the dispenser, wait until it shows etcd's
// state, commit a storm's transactions and kill -9 the dispenser at some point of it (the
// last transaction in the first round, earlier in later ones), then check the target shows
// one state etcd had, whole. At the end a restart converges to etcd exactly.
func testKill9DuringAWriteStorm(t *testing.T, storm func(h *history, round int) [][]string) {
	e := etcdtest.Start(t)
	h := newHistory(t, e.Client(), "/p")
	for _, txn := range storm(h, 0) {
		h.txn(txn...)
	}
	target := t.TempDir() + "/config"
	const rounds = 5
	for round := range rounds {
		d := startAs(t, e, runOpts{Target: target}, "", "--prefix=/p", "--coalesce=0", "--settle=0")
		etcdtest.Eventually(t, 30*time.Second, convergedTo(target, h.now))
		txns := storm(h, round)
		killAt := len(txns) - round*len(txns)/rounds
		for _, txn := range txns[:killAt] {
			h.txn(txn...)
		}
		_ = d.cmd.Process.Signal(syscall.SIGKILL)
		d.wait(10 * time.Second)
		got, dangling, err := shownVersion(target)
		if err != nil {
			t.Fatalf("after kill -9 in round %d (after transaction %d of %d): %v", round, killAt, len(txns), err)
		}
		if !h.had(got) {
			t.Fatalf("after kill -9 in round %d the target shows a version etcd never had (a torn one): %s",
				round, diffTrees(got, h.now))
		}
		t.Logf("round %d: killed after transaction %d of %d; %d files, %d dangling links", round, killAt, len(txns),
			len(got), len(dangling))
		for _, txn := range txns[killAt:] {
			h.txn(txn...)
		}
	}
	// The version the last kill left: Open keeps only the objects it reaches.
	_, shown, err := versionObjects(target)
	if err != nil {
		t.Fatal(err)
	}
	d := startAs(t, e, runOpts{Target: target}, "", "--prefix=/p")
	etcdtest.Eventually(t, 30*time.Second, convergedTo(target, inEtcd(t, e.Client(), "/p/")))
	// The batches after Open retire objects of that version, kept for readers still inside it
	// until the next batch: at most the live version's objects and that version's, once the
	// removals that run after the signal (or in the background) are done. (Not twice the live
	// version's: the keys may have shrunk while the dispenser was down, and the version before
	// then reached more.)
	etcdtest.Eventually(t, 10*time.Second, func() error {
		all, reached, err := versionObjects(target)
		if err != nil {
			return err
		}
		if all > reached+shown {
			return fmt.Errorf("%d version directories left after restarts, the live version reaches %d, the one before the restart %d",
				all, reached, shown)
		}
		return nil
	})
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
