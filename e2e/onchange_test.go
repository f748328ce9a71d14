package e2e

import (
	"syscall"
	"testing"
	"time"

	"github.com/etcd-config-dispenser/etcd-config-dispenser/internal/etcdtest"
)

func starts(evs []event) int {
	n := 0
	for _, ev := range evs {
		if ev.What == "start" {
			n++
		}
	}
	return n
}

// With --on-change=restart each change stops the command and starts it again on the new
// files; the dispenser keeps running, and exits with the command's code once it ends by itself.
func TestOnChangeRestartStartsTheCommandAgainAfterEachChange(t *testing.T) {
	e := etcdtest.Start(t)
	c := e.Client()
	txn(t, c, "/app/conf", "v1")
	d := start(t, e, "exit-on-usr1", "--prefix=/app", "--on-change=restart")
	d.waitEvent("start on v1", func(ev event) bool { return ev.What == "start" && ev.Files["conf"] == "v1" })
	for i, v := range []string{"v2", "v3"} {
		txn(t, c, "/app/conf", v)
		d.waitEvent("start on "+v, func(ev event) bool { return ev.What == "start" && ev.Files["conf"] == v })
		evs := d.events()
		if n := starts(evs); n != i+2 {
			t.Fatalf("%d starts after %d changes, want %d: %+v", n, i+1, i+2, evs)
		}
		if d.signals() != 0 {
			t.Fatalf("the command got a SIGHUP with --on-change=restart: %+v", evs)
		}
	}
	select {
	case <-d.done:
		t.Fatalf("the dispenser exited after a restart:\n%s", d.stderr.String())
	default:
	}
	if err := d.cmd.Process.Signal(syscall.SIGUSR1); err != nil {
		t.Fatal(err)
	}
	if code := d.wait(30 * time.Second); code != 7 {
		t.Fatalf("exit code %d, want the command's 7", code)
	}
	if n := starts(d.events()); n != 3 {
		t.Fatalf("%d starts, want 3 (1 + 2 changes)", n)
	}
}

func TestOnChangeBadValueExits2(t *testing.T) {
	e := etcdtest.Start(t)
	d := start(t, e, "", "--prefix=/app", "--on-change=reload")
	if code := d.wait(30 * time.Second); code != 2 {
		t.Fatalf("exit code %d, want 2", code)
	}
	if want := `--on-change "reload"`; len(d.stderr.lines(want)) == 0 {
		t.Fatalf("no line naming the flag: %s", d.stderr.String())
	}
}
