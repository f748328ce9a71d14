package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/etcd-config-dispenser/etcd-config-dispenser/internal/etcdtest"
)

// asPID1 runs the binary as PID 1 of a new PID namespace, as in a container.
func asPID1(t *testing.T) *syscall.SysProcAttr {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("skipped: a new PID namespace needs root (CI runs as root)")
	}
	return &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWPID}
}

// childrenOf lists the host pids whose parent is pid, with their states.
func childrenOf(pid int) map[int]string {
	out := map[int]string{}
	stats, _ := filepath.Glob("/proc/[0-9]*/stat")
	for _, p := range stats {
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...: comm may hold spaces, so cut at the last ')'.
		s := string(b)
		i := strings.LastIndexByte(s, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(s[i+1:])
		if len(f) < 2 {
			continue
		}
		if ppid, _ := strconv.Atoi(f[1]); ppid == pid {
			id, _ := strconv.Atoi(strings.Fields(s)[0])
			out[id] = f[0]
		}
	}
	return out
}

func TestAsPID1OrphansAreReapedAndTheExitCodeKept(t *testing.T) {
	attr := asPID1(t)
	e := etcdtest.Start(t)
	txn(t, e.Client(), "/p/a", "1")
	d := startAs(t, e, runOpts{Attr: attr}, "orphans", "--prefix=/p")
	d.waitEvent("orphans made", func(ev event) bool { return ev.What == "orphans-made" })
	// The 100 orphans were reparented to the dispenser and have exited: only
	// the child may be left, and no zombie.
	etcdtest.Eventually(t, 30*time.Second, func() error {
		kids := childrenOf(d.cmd.Process.Pid)
		if len(kids) != 1 {
			return fmt.Errorf("the dispenser has %d children, want only the child: %v", len(kids), kids)
		}
		return nil
	})
	_ = d.cmd.Process.Signal(syscall.SIGTERM)
	if code := d.wait(30 * time.Second); code != 0 {
		t.Fatalf("exit code %d after SIGTERM, want the child's 0", code)
	}
}

func TestAsPID1ChildKilledBySIGKILLExits137(t *testing.T) {
	attr := asPID1(t)
	e := etcdtest.Start(t)
	txn(t, e.Client(), "/p/a", "1")
	d := startAs(t, e, runOpts{Attr: attr}, "reader", "--prefix=/p")
	d.waitEvent("start", func(ev event) bool { return ev.What == "start" })
	var child int
	etcdtest.Eventually(t, 10*time.Second, func() error {
		for pid := range childrenOf(d.cmd.Process.Pid) {
			child = pid
			return nil
		}
		return fmt.Errorf("no child yet")
	})
	if err := syscall.Kill(child, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if code := d.wait(30 * time.Second); code != 137 {
		t.Fatalf("exit code %d, want 128+9", code)
	}
}
