package supervisor

import (
	"bufio"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// deadline bounds every wait in these tests; nothing here should take a fraction of it.
const deadline = 30 * time.Second

// initConfig describes one run of the test init.
type initConfig struct {
	pidNamespace bool             // run as PID 1 of a new pid namespace (with its own /proc)
	killTimeout  time.Duration    // Options.KillTimeout
	processGroup bool             // Options.ProcessGroup
	mode         string           // envInit; "1" if empty
	env          []string         // more environment for the init and its child
	childRole    string           // the child is the test binary in this role (see runChild)…
	argv         []string         // …or this command; neither with mode "no-child"
	launcher     []string         // run the init through this command (a shell that ignores signals), with the init's argv after it
	blocked      []syscall.Signal // start the init with these signals blocked
}

// initProc is a running test init, seen from the test.
type initProc struct {
	t       *testing.T
	cmd     *exec.Cmd
	lines   chan string // stdout of the init and everything below it, line by line
	stderr  string      // file with the init's log
	exited  chan struct{}
	started time.Time
}

func testBinary() string {
	exe, err := os.Executable()
	if err != nil {
		panic(err)
	}
	return exe
}

// startInit starts the test init with cfg. It is killed, with its process group, at the end
// of the test.
func startInit(t *testing.T, cfg initConfig) *initProc {
	t.Helper()
	if cfg.pidNamespace && os.Geteuid() != 0 {
		t.Skipf("running PID 1 in a new pid namespace needs root (CLONE_NEWPID); euid is %d", os.Geteuid())
	}
	mode := cfg.mode
	if mode == "" {
		mode = "1"
	}
	argv := cfg.argv
	if cfg.childRole != "" {
		argv = []string{testBinary()}
		cfg.env = append(cfg.env, envChild+"="+cfg.childRole)
	}
	initArgv := append([]string{testBinary(), "--"}, argv...)
	if len(cfg.launcher) > 0 {
		initArgv = append(append([]string(nil), cfg.launcher...), initArgv...)
	}
	cmd := exec.Command(initArgv[0], initArgv[1:]...)
	cmd.Env = append(withoutVar(withoutVar(os.Environ(), envInit), envChild),
		envInit+"="+mode, envKillTimeout+"="+cfg.killTimeout.String())
	cmd.Env = append(cmd.Env, cfg.env...)
	// The race runtime sleeps a second at exit by default; our processes exit a lot.
	cmd.Env = append(cmd.Env, "GORACE="+strings.TrimSpace(os.Getenv("GORACE")+" atexit_sleep_ms=0"))
	if cfg.processGroup {
		cmd.Env = append(cmd.Env, envProcessGroup+"=1")
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if cfg.pidNamespace {
		cmd.SysProcAttr.Cloneflags = syscall.CLONE_NEWPID | syscall.CLONE_NEWNS
		cmd.Env = append(cmd.Env, envMountProc+"=1")
	}
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	stderr, err := os.Create(t.TempDir() + "/init.log")
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = w, stderr
	p := &initProc{t: t, cmd: cmd, lines: make(chan string, 10000), stderr: stderr.Name(), exited: make(chan struct{}), started: time.Now()}
	if err := startBlocked(cmd, cfg.blocked); err != nil {
		t.Fatalf("starting the init: %v", err)
	}
	w.Close()
	stderr.Close()
	go func() {
		sc := bufio.NewScanner(r)
		for sc.Scan() {
			p.lines <- sc.Text()
		}
		close(p.lines)
	}()
	go func() { cmd.Wait(); close(p.exited) }()
	t.Cleanup(func() {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-p.exited
		r.Close()
		if t.Failed() {
			log, _ := os.ReadFile(p.stderr)
			t.Logf("init log:\n%s", log)
		}
	})
	return p
}

// signal sends sig to the init.
func (p *initProc) signal(sig syscall.Signal) {
	p.t.Helper()
	if err := syscall.Kill(p.cmd.Process.Pid, sig); err != nil {
		p.t.Fatalf("signalling the init: %v", err)
	}
}

// expect waits for the output line want, and returns the lines that came before it.
func (p *initProc) expect(want string) []string {
	p.t.Helper()
	var before []string
	timeout := time.After(deadline)
	for {
		select {
		case line, ok := <-p.lines:
			if !ok {
				p.t.Fatalf("output ended without %q; got %q", want, before)
			}
			if line == want {
				return before
			}
			before = append(before, line)
		case <-timeout:
			p.t.Fatalf("no %q within %s; got %q", want, deadline, before)
		}
	}
}

// expectAll waits until it has seen every line in want, in any order.
func (p *initProc) expectAll(want ...string) {
	p.t.Helper()
	timeout := time.After(deadline)
	for len(want) > 0 {
		select {
		case line, ok := <-p.lines:
			if !ok {
				p.t.Fatalf("output ended without %q", want)
			}
			want = slices.DeleteFunc(want, func(w string) bool { return w == line })
		case <-timeout:
			p.t.Fatalf("no %q within %s", want, deadline)
		}
	}
}

// expectPrefix waits for a line starting with prefix and returns its last field.
func (p *initProc) expectPrefix(prefix string) string {
	p.t.Helper()
	timeout := time.After(deadline)
	for {
		select {
		case line, ok := <-p.lines:
			if !ok {
				p.t.Fatalf("output ended without %q", prefix)
			}
			if strings.HasPrefix(line, prefix) {
				f := strings.Fields(line)
				return f[len(f)-1]
			}
		case <-timeout:
			p.t.Fatalf("no %q within %s", prefix, deadline)
		}
	}
}

// exitCode waits for the init to exit and returns its exit code.
func (p *initProc) exitCode() int {
	p.t.Helper()
	select {
	case <-p.exited:
	case <-time.After(deadline):
		p.t.Fatalf("init still running after %s", deadline)
	}
	return p.cmd.ProcessState.ExitCode()
}

// rest returns the remaining output lines once everything writing to them has exited.
func (p *initProc) rest() []string {
	p.t.Helper()
	var lines []string
	timeout := time.After(deadline)
	for {
		select {
		case line, ok := <-p.lines:
			if !ok {
				return lines
			}
			lines = append(lines, line)
		case <-timeout:
			p.t.Fatalf("output still open after %s", deadline)
		}
	}
}

// log returns what the init logged.
func (p *initProc) log() string {
	b, _ := os.ReadFile(p.stderr)
	return string(b)
}

// zombiesOf lists the zombie children of pid, as seen from our /proc.
func zombiesOf(pid int) []int {
	var zs []int
	for _, p := range readProcs() {
		if p.ppid == pid && p.zombie {
			zs = append(zs, p.pid)
		}
	}
	return zs
}

// eventually polls cond until it holds or the deadline passes.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	timeout := time.After(deadline)
	for !cond() {
		select {
		case <-tick.C:
		case <-timeout:
			t.Fatalf("not %s within %s", what, deadline)
		}
	}
}

func alive(pid int) bool {
	p, err := readProc(pid)
	return err == nil && !p.zombie
}

func atoi(t *testing.T, s string) int {
	t.Helper()
	n, err := strconv.Atoi(s)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// startBlocked starts cmd with sigs blocked in its signal mask, as a launcher can: the mask of
// the forking thread is inherited.
func startBlocked(cmd *exec.Cmd, sigs []syscall.Signal) error {
	if len(sigs) == 0 {
		return cmd.Start()
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	var set, old unix.Sigset_t
	for _, sig := range sigs {
		set.Val[(sig-1)/64] |= 1 << ((sig - 1) % 64)
	}
	if err := unix.PthreadSigmask(unix.SIG_BLOCK, &set, &old); err != nil {
		return err
	}
	defer unix.PthreadSigmask(unix.SIG_SETMASK, &old, nil)
	return cmd.Start()
}
