package supervisor

import (
	"os"
	"os/signal"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// kernelSigaction is the kernel's struct sigaction on Linux (amd64, arm64 and the other
// architectures with the generic layout): what rt_sigaction(2) reads and writes.
type kernelSigaction struct {
	handler  uintptr
	flags    uint64
	restorer uintptr
	mask     uint64
}

const (
	sigDfl      = 0
	sigIgn      = 1
	saOnstack   = 0x08000000
	saRestart   = 0x10000000
	saRestorer  = 0x04000000
	lastSignal  = 64
	maskAllBits = ^uint64(0)
)

// sigaction is rt_sigaction(2): it installs act (if not nil) and returns the previous action.
func sigaction(sig syscall.Signal, act *kernelSigaction) (kernelSigaction, error) {
	var old kernelSigaction
	_, _, errno := unix.RawSyscall6(unix.SYS_RT_SIGACTION, uintptr(sig), uintptr(unsafe.Pointer(act)),
		uintptr(unsafe.Pointer(&old)), 8, 0, 0)
	if errno != 0 {
		return old, errno
	}
	return old, nil
}

// ignoredAtStart lists the signals whose action is SIG_IGN now, before New changes anything:
// the ones the launcher ignored (nohup: HUP; a background job of a non-interactive shell: INT
// and QUIT). The Go runtime replaces an inherited SIG_IGN by its own handler for most signals
// before main runs, so only these can still be seen: HUP, INT, CONT, TSTP, TTIN, TTOU and
// 32 to 34. The child inherits them ignored, because we leave them ignored.
func ignoredAtStart() map[syscall.Signal]bool {
	ignored := map[syscall.Signal]bool{}
	for sig := syscall.Signal(1); sig <= lastSignal; sig++ {
		if sig == syscall.SIGKILL || sig == syscall.SIGSTOP {
			continue
		}
		if act, err := sigaction(sig, nil); err == nil && act.handler == sigIgn {
			ignored[sig] = true
		}
	}
	return ignored
}

// terminalStops are the signals a terminal sends to a background process group that reads
// from it, or writes to it under `stty tostop`.
var terminalStops = []os.Signal{syscall.SIGTTIN, syscall.SIGTTOU}

// ignoreTerminalStops ignores SIGTTIN and SIGTTOU for ourselves, as tini does: once the child
// has the terminal's foreground, our log lines on the terminal must go through, not stop us
// or, caught, make every write fail and retry forever. spawn gives the child the launcher's
// default action back.
func (s *Supervisor) ignoreTerminalStops(ignored map[syscall.Signal]bool) {
	for _, sig := range terminalStops {
		if !ignored[sig.(syscall.Signal)] { // else the launcher's choice already, and the child's
			s.stopsIgnoredByUs = append(s.stopsIgnoredByUs, sig)
		}
	}
	if len(s.stopsIgnoredByUs) > 0 {
		signal.Ignore(s.stopsIgnoredByUs...)
	}
}

// launcherTerminalStops gives SIGTTIN and SIGTTOU (those that ignoreTerminalStops ignored) the default action for the time of a fork,
// so that the child inherits the default, not our SIG_IGN: the Go runtime resets every signal
// it catches to the default in the forked child. The returned func ignores them again.
func (s *Supervisor) launcherTerminalStops() (ignoreAgain func()) {
	if len(s.stopsIgnoredByUs) == 0 {
		return func() {}
	}
	signal.Notify(make(chan os.Signal, 1), s.stopsIgnoredByUs...)
	return func() { signal.Ignore(s.stopsIgnoredByUs...) }
}
