package supervisor

import (
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// A file without "#!" that the kernel refuses with ENOEXEC is run by /bin/sh, as execvp does
// (and tini, dumb-init and catatonit with it).
func TestScriptWithoutShebangRunsWithSh(t *testing.T) {
	script := t.TempDir() + "/script"
	if err := os.WriteFile(script, []byte("echo script ran with $1\nexit 5\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	p := startInit(t, initConfig{argv: []string{script, "arg"}})
	p.expect("script ran with arg")
	if code := p.exitCode(); code != 5 {
		t.Errorf("exit code %d, want the script's 5", code)
	}
}

// The same rule for helper commands (check and reload commands).
func TestHelperScriptWithoutShebangRunsWithSh(t *testing.T) {
	script := t.TempDir() + "/script"
	if err := os.WriteFile(script, []byte("exit 6\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	p := startInit(t, initConfig{mode: "run", argv: []string{script}})
	p.expect("run exit 6 <nil>")
}

// A SIGTERM forwarded to a stopped child is followed by SIGCONT, or the child would only see
// it when SIGKILLed.
func TestForwardedTermContinuesStoppedChild(t *testing.T) {
	p := startInit(t, initConfig{pidNamespace: true, killTimeout: deadline, childRole: "trap"})
	child := hostPid(t, p, "child")
	syscall.Kill(child, syscall.SIGSTOP)
	eventually(t, "child stopped", func() bool { return procState(child) == "T" })
	sent := time.Now()
	p.signal(syscall.SIGTERM)
	if code := p.exitCode(); code != trapTermExitCode {
		t.Errorf("exit code %d, want the child's %d (137: it saw SIGTERM only when killed)", code, trapTermExitCode)
	}
	if took := time.Since(sent); took > deadline/2 {
		t.Errorf("child exited %s after SIGTERM", took)
	}
}

// Without a kill timeout, a forwarded SIGTERM is never followed by our own SIGKILL: the
// orchestrator that sent it decides when to kill (docker stop after 10 s, Kubernetes after
// terminationGracePeriodSeconds).
func TestForwardedTermWithoutKillTimeoutNeverKills(t *testing.T) {
	const oldDefault = 5 * time.Second
	p := startInit(t, initConfig{pidNamespace: true, childRole: "ignore-term"})
	child := hostPid(t, p, "child")
	p.signal(syscall.SIGTERM)
	p.expect("child SIGTERM")
	select {
	case <-p.exited:
		t.Fatalf("the init exited (code %d): the child was killed", p.cmd.ProcessState.ExitCode())
	case <-time.After(oldDefault + 2*time.Second):
	}
	if !alive(child) {
		t.Fatalf("the child was killed")
	}
	syscall.Kill(child, syscall.SIGKILL)
	if code := p.exitCode(); code != 137 {
		t.Errorf("exit code %d, want 137 (our SIGKILL)", code)
	}
}

// SEGV, BUS, FPE and ILL sent by another process are ignored: they do not end the init (tini,
// catatonit), and they are not forwarded.
func TestFaultSignalsFromOthersAreIgnored(t *testing.T) {
	p := startInit(t, initConfig{pidNamespace: true, killTimeout: deadline, childRole: "trap"})
	p.expectPrefix("child ready")
	for _, sig := range []syscall.Signal{syscall.SIGSEGV, syscall.SIGBUS, syscall.SIGFPE, syscall.SIGILL} {
		p.signal(sig)
	}
	p.signal(syscall.SIGHUP)
	if before := p.expect("child SIGHUP"); len(before) > 0 {
		t.Errorf("the child reported %q", before)
	}
	p.signal(syscall.SIGTERM)
	if code := p.exitCode(); code != trapTermExitCode {
		t.Errorf("exit code %d, want the child's %d", code, trapTermExitCode)
	}
}

// A real fault of the init still crashes it loudly.
func TestOwnFaultStillCrashes(t *testing.T) {
	p := startInit(t, initConfig{mode: "fault"})
	if code := p.exitCode(); code != 2 {
		t.Errorf("exit code %d, want the Go runtime's 2", code)
	}
	if !strings.Contains(p.log(), "SIGSEGV") {
		t.Errorf("the crash does not name SIGSEGV:\n%s", p.log())
	}
}

// hostPid reads the "NAME ready PID" line and returns the pid as the test sees it: in a new
// pid namespace the child reports its pid there, so find it below the init instead.
func hostPid(t *testing.T, p *initProc, name string) int {
	t.Helper()
	p.expectPrefix(name + " ready")
	var pid int
	eventually(t, "the child visible", func() bool {
		for _, q := range readProcs() {
			if q.ppid == p.cmd.Process.Pid && !q.zombie {
				pid = q.pid
				return true
			}
		}
		return false
	})
	return pid
}

// procState is the state letter of /proc/PID/stat ("R", "S", "T", "Z"), "" if gone.
func procState(pid int) string {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return ""
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	f := strings.Fields(s[i+1:])
	return f[0]
}

// Signals 32 to 34 do not end a dispenser that is not PID 1 (PID 1 is shielded by the kernel
// from signals it has no handler for). 34, SIGRTMIN of glibc programs, is forwarded like the
// other realtime signals; 32 and 33 belong to the C library's threads and are not.
func TestSignals32To34DoNotEndTheInit(t *testing.T) {
	p := startInit(t, initConfig{killTimeout: deadline, childRole: "trap"})
	p.expectPrefix("child ready")
	for _, sig := range []syscall.Signal{32, 33, 34} {
		p.signal(sig)
	}
	if before := p.expect("child SIGRTMIN"); len(before) > 0 {
		t.Errorf("before SIGRTMIN the child reported %q", before)
	}
	p.signal(syscall.SIGTERM)
	if code := p.exitCode(); code != trapTermExitCode {
		t.Errorf("exit code %d, want the child's %d", code, trapTermExitCode)
	}
}

// Every queued realtime signal reaches the child: 50 sent, 50 forwarded (the C inits deliver
// them one by one with sigtimedwait; os/signal would merge them).
func TestRealtimeSignalsAreNotMerged(t *testing.T) {
	const n, sig = 50, syscall.Signal(sigRTMIN + 6)
	p := startInit(t, initConfig{pidNamespace: true, killTimeout: deadline, childRole: "trap"})
	p.expectPrefix("child ready")
	for range n {
		p.signal(sig)
	}
	got := 0
	timeout := time.After(deadline)
	for got < n {
		select {
		case line := <-p.lines:
			if line == "child "+signalName(sig) {
				got++
			}
		case <-timeout:
			t.Fatalf("the child got %s %d times, want %d", signalName(sig), got, n)
		}
	}
	p.signal(syscall.SIGTERM)
	p.exitCode()
	for _, line := range p.rest() {
		if line == "child "+signalName(sig) {
			got++
		}
	}
	if got != n {
		t.Errorf("the child got %s %d times, want %d", signalName(sig), got, n)
	}
}

// The child starts with the signal dispositions and mask we were started with, as tini's
// sigconf test checks: a background job of a non-interactive shell keeps INT ignored, and a
// blocked signal stays blocked.
func TestChildInheritsLaunchersSignalState(t *testing.T) {
	p := startInit(t, initConfig{
		launcher: []string{"/bin/sh", "-c", `trap "" INT HUP TTOU; exec "$0" "$@"`},
		blocked:  []syscall.Signal{syscall.SIGTTIN, syscall.SIGUSR1, sigRTMIN + 6},
		argv:     []string{"/bin/grep", "^Sig[IB]", "/proc/self/status"},
	})
	if code := p.exitCode(); code != 0 {
		t.Fatalf("exit code %d", code)
	}
	state := map[string]uint64{}
	for _, line := range p.rest() {
		name, hex, _ := strings.Cut(line, ":")
		v, err := strconv.ParseUint(strings.TrimSpace(hex), 16, 64)
		if err != nil {
			t.Fatalf("parsing %q: %v", line, err)
		}
		state[name] = v
	}
	has := func(set string, sig syscall.Signal) bool { return state[set]&(1<<(sig-1)) != 0 }
	for _, sig := range []syscall.Signal{syscall.SIGINT, syscall.SIGHUP, syscall.SIGTTOU} {
		if !has("SigIgn", sig) {
			t.Errorf("%s: ignored by the launcher, not by the child (SigIgn %x)", signalName(sig), state["SigIgn"])
		}
	}
	if has("SigIgn", syscall.SIGTTIN) {
		t.Errorf("SIGTTIN: ignored by the dispenser for itself, and by the child too (SigIgn %x)", state["SigIgn"])
	}
	for _, sig := range []syscall.Signal{syscall.SIGTTIN, syscall.SIGUSR1, sigRTMIN + 6} {
		if !has("SigBlk", sig) {
			t.Errorf("%s: blocked by the launcher, not by the child (SigBlk %x)", signalName(sig), state["SigBlk"])
		}
	}
}
