package supervisor

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
)

// shell is an interactive bash on a real pseudo-terminal, as a user at a terminal has: the
// test types into the terminal and reads what it shows.
type shellSession struct {
	t      *testing.T
	master *os.File
	mu     sync.Mutex
	out    bytes.Buffer // everything the terminal showed
	seen   int          // out is searched from here
}

// openPty returns the master and the slave side of a new pseudo-terminal.
func openPty(t *testing.T) (master, slave *os.File) {
	t.Helper()
	fd, err := unix.Open("/dev/ptmx", unix.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Skipf("no pseudo-terminals here (/dev/ptmx: %v)", err)
	}
	if err := unix.IoctlSetPointerInt(fd, unix.TIOCSPTLCK, 0); err != nil {
		t.Fatalf("unlockpt: %v", err)
	}
	n, err := unix.IoctlGetUint32(fd, unix.TIOCGPTN)
	if err != nil {
		t.Fatalf("ptsname: %v", err)
	}
	master = os.NewFile(uintptr(fd), "/dev/ptmx")
	slave, err = os.OpenFile("/dev/pts/"+strconv.Itoa(int(n)), os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Fatalf("opening the terminal: %v", err)
	}
	return master, slave
}

// startShell starts `bash -i` as the session leader of a new terminal, with env added to ours.
func startShell(t *testing.T, env ...string) *shellSession {
	t.Helper()
	bash, err := exec.LookPath("bash")
	if err != nil {
		t.Skip("bash is not installed; the terminal tests need an interactive shell")
	}
	master, slave := openPty(t)
	cmd := exec.Command(bash, "--norc", "--noprofile", "-i")
	cmd.Env = append(withoutVar(withoutVar(os.Environ(), envInit), envChild), "PS1=$ ", "TERM=dumb")
	cmd.Env = append(cmd.Env, "GORACE="+strings.TrimSpace(os.Getenv("GORACE")+" atexit_sleep_ms=0"))
	cmd.Env = append(cmd.Env, env...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = slave, slave, slave
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	slave.Close()
	s := &shellSession{t: t, master: master}
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 4096)
		for {
			n, err := master.Read(buf)
			s.mu.Lock()
			s.out.Write(buf[:n])
			s.mu.Unlock()
			if err != nil {
				return
			}
		}
	}()
	t.Cleanup(func() {
		// Everything started from the shell is in its session: end them all.
		for _, p := range readProcs() {
			if sid, _ := unix.Getsid(p.pid); sid == cmd.Process.Pid {
				syscall.Kill(p.pid, syscall.SIGKILL)
			}
		}
		cmd.Process.Kill()
		cmd.Wait()
		master.Close()
		<-done
		if t.Failed() {
			t.Logf("terminal:\n%s", s.screen())
		}
	})
	s.expect("$ ")
	return s
}

func (s *shellSession) screen() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.out.String()
}

// typeIn writes keys to the terminal, as typed.
func (s *shellSession) typeIn(keys string) {
	s.t.Helper()
	if _, err := s.master.Write([]byte(keys)); err != nil {
		s.t.Fatalf("typing: %v", err)
	}
}

// expect waits until the terminal shows want after what earlier expects matched, and returns
// what came before it.
func (s *shellSession) expect(want string) string {
	s.t.Helper()
	timeout := time.After(deadline)
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for {
		s.mu.Lock()
		rest := s.out.String()[s.seen:]
		if i := strings.Index(rest, want); i >= 0 {
			s.seen += i + len(want)
			s.mu.Unlock()
			return rest[:i]
		}
		s.mu.Unlock()
		select {
		case <-tick.C:
		case <-timeout:
			s.t.Fatalf("the terminal did not show %q within %s", want, deadline)
		}
	}
}

// initCommand is the shell command line that runs the test init with argv as its child.
func initCommand(argv ...string) string {
	return fmt.Sprintf("%s -- %s; echo exit=$?\r", testBinary(), strings.Join(argv, " "))
}

// pidAfter reads the pid at the end of "NAME ready PID".
func (s *shellSession) readyPid(name string) int {
	s.t.Helper()
	s.expect(name + " ready ")
	line := s.expect("\n")
	pid, err := strconv.Atoi(strings.TrimSpace(line))
	if err != nil {
		s.t.Fatalf("no pid after %q: %q", name+" ready", line)
	}
	return pid
}

func ppidOf(t *testing.T, pid int) int {
	t.Helper()
	p, err := readProc(pid)
	if err != nil {
		t.Fatal(err)
	}
	return p.ppid
}

// foregroundOf is the foreground process group of pid's terminal (tpgid in /proc/PID/stat).
func foregroundOf(pid int) int {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
	n, _ := strconv.Atoi(f[5])
	return n
}

// With `stty tostop`, a dispenser whose child has the terminal writes its log lines in the
// background: that must neither stop it nor hang it, and it must go on forwarding and reaping.
func TestTerminalTostopDoesNotHang(t *testing.T) {
	sh := startShell(t, envInit+"=1", envChild+"=trap", envProcessGroup+"=1", envKillTimeout+"=30s")
	sh.typeIn("stty tostop\r")
	sh.expect("$ ")
	sh.typeIn(initCommand(testBinary()))
	child := sh.readyPid("child")
	syscall.Kill(ppidOf(t, child), syscall.SIGTERM)
	sh.expect("child SIGTERM")
	sh.expect(fmt.Sprintf("exit=%d", trapTermExitCode))
}

// One ^C is one SIGINT for the child: the terminal sends it to the child's foreground group,
// and the dispenser, in another group, has nothing to forward.
func TestTerminalCtrlCIsOneSIGINT(t *testing.T) {
	sh := startShell(t, envInit+"=1", envChild+"=trap")
	sh.typeIn(initCommand(testBinary()))
	child := sh.readyPid("child")
	init := ppidOf(t, child)
	sh.typeIn("\x03")
	sh.expect("child SIGINT")
	// The init logs each signal it forwards, in the order it got them: if ^C reached it too,
	// its SIGINT comes before the SIGUSR1 sent now.
	syscall.Kill(init, syscall.SIGUSR1)
	if between := sh.expect(`"signal":"SIGUSR1"`); strings.Contains(between, "SIGINT") {
		t.Errorf("the init got ^C too and forwarded a second SIGINT: %q", between)
	}
	syscall.Kill(init, syscall.SIGTERM)
	sh.expect(fmt.Sprintf("exit=%d", trapTermExitCode))
}

// A child started again by Restart gets the terminal's foreground too.
func TestTerminalRestartedChildIsInForeground(t *testing.T) {
	sh := startShell(t, envInit+"=1", envChild+"=trap", envRestartOnUSR2+"=1", envKillTimeout+"=30s")
	sh.typeIn(initCommand(testBinary()))
	first := sh.readyPid("child")
	init := ppidOf(t, first)
	if fg := foregroundOf(first); fg != first {
		t.Errorf("terminal foreground group %d, want the child's %d", fg, first)
	}
	syscall.Kill(init, syscall.SIGUSR2)
	second := sh.readyPid("child")
	eventually(t, "the new child in the foreground", func() bool { return foregroundOf(second) == second })
	sh.typeIn("\x03")
	sh.expect("child SIGINT")
	syscall.Kill(init, syscall.SIGTERM)
	sh.expect(fmt.Sprintf("exit=%d", trapTermExitCode))
}

// ^Z stops the child, then the dispenser, so the shell prints its prompt; fg continues both
// and gives the child the terminal back.
func TestTerminalCtrlZReturnsThePrompt(t *testing.T) {
	sh := startShell(t, envInit+"=1")
	sh.typeIn(initCommand("/bin/sh", "-c", `'echo ch""ild ready $$; exec sed s/^/got:/'`))
	child := sh.readyPid("child")
	sh.typeIn("\x1a")
	sh.expect("Stopped")
	sh.expect("$ ")
	sh.typeIn("fg; echo exit=$?\r")
	eventually(t, "the child continued with the terminal", func() bool {
		return procState(child) != "T" && foregroundOf(child) == child
	})
	sh.typeIn("hello\r")
	sh.expect("got:hello") // the child reads its terminal again
	sh.typeIn("\x03")
	sh.expect("exit=130")
}

// bg after ^Z continues the dispenser in the background: the shell keeps the terminal. The
// child, continued in the background too, stops again when it reads the terminal, and so does
// the dispenser (a background job's SIGTTIN); fg then gives the child the terminal.
func TestTerminalBgLeavesTheShellInForeground(t *testing.T) {
	sh := startShell(t, envInit+"=1")
	sh.typeIn(initCommand("/bin/sh", "-c", `'echo ch""ild ready $$; exec sed s/^/got:/'`))
	child := sh.readyPid("child")
	init := ppidOf(t, child)
	shell := ppidOf(t, init)
	sh.typeIn("\x1a")
	sh.expect("Stopped")
	sh.expect("$ ")
	// The shell stays busy in a builtin that does not touch the terminal until the test
	// writes to the fifo, so nothing but the dispenser can change the foreground meanwhile.
	fifo := t.TempDir() + "/fifo"
	if err := unix.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	sh.typeIn("bg; read -r _ < " + fifo + "; echo shell $((6*7))\r")
	sh.expect(`"signal":"SIGTTIN"`) // the child read the terminal in the background
	eventually(t, "the child and the dispenser stopped", func() bool {
		return procState(child) == "T" && procState(init) == "T"
	})
	if fg := foregroundOf(child); fg != shell {
		t.Errorf("terminal foreground group %d after bg, want the shell's %d (child %d)", fg, shell, child)
	}
	if err := os.WriteFile(fifo, []byte("\n"), 0); err != nil {
		t.Fatal(err)
	}
	sh.expect("shell 42")
	sh.expect("$ ")
	sh.typeIn("fg; echo exit=$?\r")
	eventually(t, "the child continued with the terminal", func() bool {
		return procState(child) != "T" && foregroundOf(child) == child
	})
	sh.typeIn("hello\r")
	sh.expect("got:hello")
	sh.typeIn("\x03")
	sh.expect("exit=130")
}
