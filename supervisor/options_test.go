package supervisor

import (
	"slices"
	"strconv"
	"syscall"
	"testing"
)

// Rewrite gives the child another signal than the one received (dumb-init -r), or none.
func TestRewriteSignal(t *testing.T) {
	p := startInit(t, initConfig{killTimeout: deadline, childRole: "trap",
		env: []string{envRewrite + "=1:0,15:10"}}) // HUP dropped, TERM becomes USR1
	child := atoi(t, p.expectPrefix("child ready"))
	p.signal(syscall.SIGHUP)
	p.signal(syscall.SIGTERM)
	if before := p.expect("child SIGUSR1"); slices.Contains(before, "child SIGHUP") {
		t.Errorf("the dropped SIGHUP reached the child: %q", before)
	}
	syscall.Kill(child, syscall.SIGTERM)
	if code := p.exitCode(); code != trapTermExitCode {
		t.Errorf("exit code %d, want the child's %d", code, trapTermExitCode)
	}
}

// SuccessCodes turns an exit code into 0 (tini -e), whether the child exited with it or was
// killed by the signal it stands for.
func TestSuccessCodesExitZero(t *testing.T) {
	for _, role := range []string{"exit:143", "kill-self:15"} {
		p := startInit(t, initConfig{childRole: role, env: []string{envSuccessCodes + "=143"}})
		if code := p.exitCode(); code != 0 {
			t.Errorf("%s: exit code %d, want 0", role, code)
		}
	}
	p := startInit(t, initConfig{childRole: "exit:3", env: []string{envSuccessCodes + "=143"}})
	if code := p.exitCode(); code != 3 {
		t.Errorf("exit code %d, want 3 (not remapped)", code)
	}
}

// With a parent-death signal, a dispenser whose parent is killed with -9 gets that signal
// and stops its child (tini -p).
func TestParentDeathSignalStopsTheChild(t *testing.T) {
	p := startInit(t, initConfig{killTimeout: deadline, childRole: "trap",
		env:      []string{envParentDeath + "=" + strconv.Itoa(int(syscall.SIGTERM))},
		launcher: []string{"/bin/sh", "-c", `"$0" "$@" & wait`}})
	p.expectPrefix("child ready")
	p.cmd.Process.Kill() // the launcher
	p.expect("child SIGTERM")
}
