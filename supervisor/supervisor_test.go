package supervisor

import (
	"os"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

// orphanScript makes 1000 orphans: each ( true & ) leaves a process whose parent is gone, so it
// is reparented to the init (as PID 1, or as subreaper) and must be reaped there.
const orphanScript = `i=0; while [ $i -lt 1000 ]; do (true &); i=$((i+1)); done; echo spawned; exec sleep 1000`

func testReapsOrphans(t *testing.T, pidNamespace bool) {
	p := startInit(t, initConfig{pidNamespace: pidNamespace, argv: []string{"/bin/sh", "-c", orphanScript}})
	p.expect("spawned")
	eventually(t, "free of zombies", func() bool { return len(zombiesOf(p.cmd.Process.Pid)) == 0 })
	p.signal(syscall.SIGTERM)
	if code := p.exitCode(); code != 128+int(syscall.SIGTERM) {
		t.Errorf("exit code %d, want %d (sleep killed by SIGTERM)", code, 128+syscall.SIGTERM)
	}
	if n := strings.Count(p.log(), `"msg":"reaped orphan"`); n < 1000 {
		t.Errorf("init reaped %d orphans, want at least 1000", n)
	}
}

func TestReapsOrphansAsPID1(t *testing.T) { testReapsOrphans(t, true) }

func TestReapsOrphansAsSubreaper(t *testing.T) { testReapsOrphans(t, false) }

func TestShutdownTerminatesLeftoverDescendants(t *testing.T) {
	p := startInit(t, initConfig{pidNamespace: true, killTimeout: deadline, childRole: "spawn:trap"})
	p.expect("grandchild SIGTERM")
	if code := p.exitCode(); code != 0 {
		t.Fatalf("exit code %d, want the child's 0 (4: leftovers after Shutdown)", code)
	}
	if took := time.Since(p.started); took > deadline/2 {
		t.Errorf("shutdown took %s; the grandchild exits at once on SIGTERM", took)
	}
}

func TestShutdownKillsDescendantsIgnoringTerm(t *testing.T) {
	const grace = 500 * time.Millisecond
	p := startInit(t, initConfig{pidNamespace: true, killTimeout: grace, childRole: "spawn:ignore-term"})
	p.expect("grandchild SIGTERM")
	if code := p.exitCode(); code != 0 {
		t.Fatalf("exit code %d, want the child's 0 (4: leftovers after Shutdown)", code)
	}
	if took := time.Since(p.started); took < grace {
		t.Errorf("shutdown took %s, less than the grace period %s", took, grace)
	}
	if !strings.Contains(p.log(), `"signal":"SIGKILL"`) {
		t.Errorf("no SIGKILL logged")
	}
}

func TestShutdownContinuesStoppedDescendants(t *testing.T) {
	p := startInit(t, initConfig{pidNamespace: true, killTimeout: deadline,
		argv: []string{"/bin/sh", "-c", "sleep 1000 & kill -STOP $!"}})
	if code := p.exitCode(); code != 0 {
		t.Fatalf("exit code %d, want the child's 0 (4: leftovers after Shutdown)", code)
	}
	if took := time.Since(p.started); took > deadline/2 {
		t.Errorf("shutdown took %s: the stopped sleep waited for SIGKILL", took)
	}
	if strings.Contains(p.log(), `"signal":"SIGKILL"`) {
		t.Errorf("SIGKILL was needed")
	}
}

func TestNeverSignalsOurGroupOrEveryone(t *testing.T) {
	for _, target := range []int{0, -1, os.Getpid(), -os.Getpid(), -syscall.Getpgrp()} {
		if safeTarget(target) {
			t.Errorf("kill(%d, …) allowed", target)
		}
	}
	if !safeTarget(os.Getpid() + 1) {
		t.Errorf("kill(%d, …) refused", os.Getpid()+1)
	}
}

func TestForwardsEverySignal(t *testing.T) {
	p := startInit(t, initConfig{pidNamespace: true, killTimeout: 2 * deadline, childRole: "trap"})
	p.expectPrefix("child ready")
	for _, sig := range Forwardable() {
		if sig == syscall.SIGTERM {
			continue
		}
		p.signal(sig)
		if before := p.expect("child " + signalName(sig)); len(before) > 0 {
			t.Errorf("before %s the child reported %q", signalName(sig), before)
		}
	}
}

func TestDoesNotForwardSIGPIPE(t *testing.T) {
	p := startInit(t, initConfig{pidNamespace: true, killTimeout: deadline, childRole: "trap"})
	p.expectPrefix("child ready")
	p.signal(syscall.SIGPIPE)
	p.signal(syscall.SIGHUP)
	if before := p.expect("child SIGHUP"); len(before) > 0 {
		t.Errorf("the child reported %q", before)
	}
}

func TestExitCodeIsChildExitCodeAfterSIGTERM(t *testing.T) {
	p := startInit(t, initConfig{pidNamespace: true, killTimeout: deadline, childRole: "trap"})
	p.expectPrefix("child ready")
	p.signal(syscall.SIGTERM)
	p.expect("child SIGTERM")
	if code := p.exitCode(); code != trapTermExitCode {
		t.Errorf("exit code %d, want the child's %d", code, trapTermExitCode)
	}
}

func TestExitCodeIsChildExitCode(t *testing.T) {
	p := startInit(t, initConfig{pidNamespace: true, childRole: "exit:3"})
	if code := p.exitCode(); code != 3 {
		t.Errorf("exit code %d, want 3", code)
	}
}

func TestExitCodeIs128PlusSignal(t *testing.T) {
	p := startInit(t, initConfig{pidNamespace: true, childRole: "kill-self:9"})
	if code := p.exitCode(); code != 137 {
		t.Errorf("exit code %d, want 137 (128+SIGKILL)", code)
	}
}

func TestForwardedTermKillsChildAfterTimeout(t *testing.T) {
	const grace = 300 * time.Millisecond
	p := startInit(t, initConfig{pidNamespace: true, killTimeout: grace, childRole: "ignore-term"})
	p.expectPrefix("child ready")
	sent := time.Now()
	p.signal(syscall.SIGTERM)
	p.expect("child SIGTERM")
	if code := p.exitCode(); code != 137 {
		t.Errorf("exit code %d, want 137 (SIGKILLed)", code)
	}
	if took := time.Since(sent); took < grace {
		t.Errorf("child killed after %s, before the grace period %s", took, grace)
	}
}

func testOwnProcessGroupIsNotSignalled(t *testing.T, processGroup bool) {
	p := startInit(t, initConfig{killTimeout: deadline, processGroup: processGroup, childRole: "trap"})
	p.expectPrefix("child ready")

	// A process in the init's process group that the init did not start; any of the signals
	// below would kill it.
	sib, err := os.StartProcess("/bin/sleep", []string{"sleep", "1000"}, &os.ProcAttr{
		Sys: &syscall.SysProcAttr{Setpgid: true, Pgid: p.cmd.Process.Pid},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sib.Kill(); sib.Wait() })

	p.signal(syscall.SIGHUP)
	p.expect("child SIGHUP")
	p.signal(syscall.SIGTERM)
	p.expect("child SIGTERM")
	if code := p.exitCode(); code != trapTermExitCode {
		t.Errorf("exit code %d, want %d", code, trapTermExitCode)
	}
	if !alive(sib.Pid) {
		t.Fatalf("the sibling in the init's process group was killed")
	}
	sib.Signal(syscall.SIGKILL)
	if st, _ := sib.Wait(); st.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
		t.Errorf("sibling ended with %v, want our SIGKILL", st)
	}
}

func TestOwnProcessGroupIsNotSignalled(t *testing.T) {
	t.Run("child only", func(t *testing.T) { testOwnProcessGroupIsNotSignalled(t, false) })
	t.Run("child's group", func(t *testing.T) { testOwnProcessGroupIsNotSignalled(t, true) })
}

func TestProcessGroupReachesGrandchildren(t *testing.T) {
	p := startInit(t, initConfig{pidNamespace: true, killTimeout: deadline, processGroup: true, childRole: "spawn-trap:ignore-term"})
	p.expectPrefix("child ready")
	p.signal(syscall.SIGUSR1)
	p.expectAll("child SIGUSR1", "grandchild SIGUSR1")
}

func TestStartCommandNotFoundIs127(t *testing.T) {
	p := startInit(t, initConfig{argv: []string{"no-such-command-xyz"}})
	if code := p.exitCode(); code != 127 {
		t.Errorf("exit code %d, want 127", code)
	}
	if want := "etcd-config-dispenser: no-such-command-xyz: command not found"; !strings.Contains(p.log(), want) {
		t.Errorf("log %q does not say %q", p.log(), want)
	}
}

func TestStartNotExecutableIs126(t *testing.T) {
	dir := t.TempDir()
	plain := dir + "/plain"
	badInterpreter := dir + "/script"
	os.WriteFile(plain, []byte("#!/bin/sh\n"), 0o644)
	os.WriteFile(badInterpreter, []byte("#!/no/such/interpreter\n"), 0o755)
	for _, tc := range []struct{ cmd, reason string }{
		{plain, "permission denied"},
		{dir, "is a directory"},
		{badInterpreter, "cannot execute: required file not found"},
	} {
		p := startInit(t, initConfig{argv: []string{tc.cmd}})
		if code := p.exitCode(); code != 126 {
			t.Errorf("%s: exit code %d, want 126", tc.cmd, code)
		}
		if want := "etcd-config-dispenser: " + tc.cmd + ": " + tc.reason; !strings.Contains(p.log(), want) {
			t.Errorf("log %q does not say %q", p.log(), want)
		}
	}
}

func TestSignalAfterExitIsErrNotRunning(t *testing.T) {
	// The grandchild stays in the child's process group after the child is gone, so a signal
	// sent anyway would reach it.
	p := startInit(t, initConfig{pidNamespace: true, killTimeout: deadline, processGroup: true,
		childRole: "spawn:trap", env: []string{envSignalAfterExit + "=1"}})
	if before := p.expect("grandchild SIGTERM"); slices.Contains(before, "grandchild SIGHUP") {
		t.Errorf("the grandchild got SIGHUP after the child was reaped")
	}
	if code := p.exitCode(); code != 0 {
		t.Errorf("exit code %d, want 0 (3: Signal did not return ErrNotRunning)", code)
	}
}

func TestTerminatedWithoutChild(t *testing.T) {
	p := startInit(t, initConfig{pidNamespace: true, mode: "no-child"})
	p.expect("init ready")
	p.signal(syscall.SIGHUP) // not terminating: dropped
	p.signal(syscall.SIGTERM)
	if before := p.expect("init terminated SIGTERM"); len(before) > 0 {
		t.Errorf("unexpected output %q", before)
	}
	if code := p.exitCode(); code != 0 {
		t.Errorf("exit code %d, want 0 without a child", code)
	}
}

func TestRunReturnsHelperExitCode(t *testing.T) {
	// The helper leaves orphans too; the reaper must still hand the helper's own status to Run.
	p := startInit(t, initConfig{pidNamespace: true, mode: "run",
		argv: []string{"/bin/sh", "-c", "(true &); (true &); exit 7"}})
	p.expect("run exit 7 <nil>")
	if code := p.exitCode(); code != 0 {
		t.Errorf("exit code %d, want 0 (no child)", code)
	}
}

func TestRunKillsHelperWhenContextEnds(t *testing.T) {
	p := startInit(t, initConfig{pidNamespace: true, mode: "run", env: []string{envRunTimeout + "=100ms"},
		argv: []string{"/bin/sleep", "1000"}})
	p.expect("run exit 137 context deadline exceeded")
	if code := p.exitCode(); code != 0 {
		t.Errorf("exit code %d, want 0 (no child)", code)
	}
}

func TestOutputCapturesHelperOutput(t *testing.T) {
	p := startInit(t, initConfig{mode: "output",
		argv: []string{"/bin/sh", "-c", "echo out; echo err >&2; exit 3"}})
	p.expect(`output exit 3 "out\nerr\n" <nil>`)
	if code := p.exitCode(); code != 0 {
		t.Errorf("exit code %d, want 0 (no child)", code)
	}
}

// Restart stops the child and starts a new one; the requested exit is not the end (Done stays
// open), the new child's own exit is.
func TestRestartStartsANewChildAndKeepsRunning(t *testing.T) {
	p := startInit(t, initConfig{killTimeout: deadline, childRole: "trap",
		env: []string{envRestartOnUSR2 + "=1"}})
	first := p.expectPrefix("child ready")
	p.signal(syscall.SIGUSR2)
	p.expect("child SIGTERM")
	p.expect("init restarted <nil>")
	second := p.expectPrefix("child ready")
	if first == second {
		t.Fatalf("the same child %s after Restart", first)
	}
	if alive(atoi(t, first)) {
		t.Errorf("old child %s still exists (not reaped)", first)
	}
	p.signal(syscall.SIGTERM)
	p.expect("child SIGTERM")
	if code := p.exitCode(); code != trapTermExitCode {
		t.Errorf("exit code %d, want the new child's %d", code, trapTermExitCode)
	}
}

// A child that ignores SIGTERM is killed after KillTimeout by Restart, as at shutdown.
func TestRestartKillsChildIgnoringTerm(t *testing.T) {
	const grace = 300 * time.Millisecond
	p := startInit(t, initConfig{killTimeout: grace, childRole: "ignore-term",
		env: []string{envRestartOnUSR2 + "=1"}})
	first := p.expectPrefix("child ready")
	p.signal(syscall.SIGUSR2)
	p.expect("init restarted <nil>")
	if second := p.expectPrefix("child ready"); second == first {
		t.Fatalf("the same child %s after Restart", first)
	}
	if !strings.Contains(p.log(), "child did not exit in time, sending SIGKILL") {
		t.Errorf("no SIGKILL logged")
	}
}
