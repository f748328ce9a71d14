package e2e

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/etcd-config-dispenser/etcd-config-dispenser/internal/etcdtest"
)

// terminal is an interactive bash on a real pseudo-terminal: the test types and reads the screen.
type terminal struct {
	t      *testing.T
	master *os.File
	mu     sync.Mutex
	screen bytes.Buffer
	seen   int
}

func startTerminal(t *testing.T, env ...string) *terminal {
	t.Helper()
	bash, err := exec.LookPath("bash")
	if err != nil {
		t.Skip("bash is not installed; the terminal tests need an interactive shell")
	}
	fd, err := unix.Open("/dev/ptmx", unix.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Skipf("no pseudo-terminals here (/dev/ptmx: %v)", err)
	}
	if err := unix.IoctlSetPointerInt(fd, unix.TIOCSPTLCK, 0); err != nil {
		t.Fatal(err)
	}
	n, err := unix.IoctlGetUint32(fd, unix.TIOCGPTN)
	if err != nil {
		t.Fatal(err)
	}
	master := os.NewFile(uintptr(fd), "/dev/ptmx")
	slave, err := os.OpenFile("/dev/pts/"+strconv.Itoa(int(n)), os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bash, "--norc", "--noprofile", "-i")
	cmd.Env = append(append(os.Environ(), "PS1=$ ", "TERM=dumb", "E2E_CHILD="), env...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = slave, slave, slave
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	slave.Close()
	term := &terminal{t: t, master: master}
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 4096)
		for {
			n, err := master.Read(buf)
			term.mu.Lock()
			term.screen.Write(buf[:n])
			term.mu.Unlock()
			if err != nil {
				return
			}
		}
	}()
	t.Cleanup(func() {
		sid := cmd.Process.Pid
		var sessionProcs strings.Builder
		stats, _ := os.ReadDir("/proc")
		for _, e := range stats {
			if pid, err := strconv.Atoi(e.Name()); err == nil {
				if s, _ := unix.Getsid(pid); s == sid {
					fmt.Fprintln(&sessionProcs, procSummary(pid))
					syscall.Kill(pid, syscall.SIGKILL)
				}
			}
		}
		cmd.Wait()
		master.Close()
		<-done
		if t.Failed() {
			t.Logf("processes of the session (pid pgrp state tpgid comm):\n%s", sessionProcs.String())
			term.mu.Lock()
			t.Logf("terminal:\n%s", term.screen.String())
			term.mu.Unlock()
		}
	})
	term.expect("$ ")
	return term
}

// procSummary is pid, process group, state, the terminal's foreground group and the command
// of pid, from /proc/PID/stat: what a hung job-control test needs to show.
func procSummary(pid int) string {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return strconv.Itoa(pid) + " " + err.Error()
	}
	open, end := bytes.IndexByte(b, '('), bytes.LastIndexByte(b, ')')
	f := strings.Fields(string(b[end+1:])) // state ppid pgrp session tty_nr tpgid ...
	return fmt.Sprintf("%d %s %s %s %s", pid, f[2], f[0], f[5], b[open+1:end])
}

func (term *terminal) typeIn(keys string) {
	term.t.Helper()
	if _, err := term.master.Write([]byte(keys)); err != nil {
		term.t.Fatal(err)
	}
}

// expect waits until the screen shows want after what earlier expects matched.
func (term *terminal) expect(want string) {
	term.t.Helper()
	timeout := time.After(30 * time.Second)
	for {
		term.mu.Lock()
		rest := term.screen.String()[term.seen:]
		if i := strings.Index(rest, want); i >= 0 {
			term.seen += i + len(want)
			term.mu.Unlock()
			return
		}
		term.mu.Unlock()
		select {
		case <-time.After(5 * time.Millisecond):
		case <-timeout:
			term.t.Fatalf("the terminal did not show %q within 30s", want)
		}
	}
}

// The static binary run from an interactive shell with `stty tostop`: the command reads the
// terminal; the dispenser's log lines (a change applied while the command has the terminal)
// go through; ^Z gives the prompt back, fg resumes, ^C ends the command alone.
func TestTerminalStaticBinaryJobControl(t *testing.T) {
	bin, err := staticBinary()
	if err != nil {
		t.Fatal(err)
	}
	e := etcdtest.Start(t)
	txn(t, e.Client(), "/p/a", "1")
	term := startTerminal(t, "ETCD_ENDPOINTS="+e.Endpoint())
	term.typeIn("stty tostop\r")
	term.expect("$ ")
	term.typeIn(bin + " --prefix=/p --target=" + t.TempDir() + "/config --signal=WINCH -- sed s/^/got:/; echo exit=$?\r")
	term.expect("child started")
	term.typeIn("hello\r")
	term.expect("got:hello")
	txn(t, e.Client(), "/p/a", "2")
	term.expect("batch applied") // written while the command has the terminal
	term.typeIn("\x1a")
	term.expect("Stopped")
	term.expect("$ ")
	term.typeIn("fg; echo exit=$?\r")
	// fg prints the job's command line once readline has given the terminal its modes back.
	// Typed earlier, "again\r" reaches the terminal while readline has it raw: not echoed and
	// not turned into "again\n", so sed waits for the end of a line that never comes.
	term.expect("-- sed s/^/got:/\r\n")
	term.typeIn("again\r")
	term.expect("got:again")
	term.typeIn("\x03")
	term.expect("exit=130")
}
