package supervisor

import (
	"os"
	"runtime"
	"syscall"

	"golang.org/x/sys/unix"
)

// Job control on a terminal, for a dispenser started from an interactive shell. When stdin
// is a terminal whose foreground process group is ours, every child is started in its own
// process group and given the foreground (tini's rule): the terminal then sends ^C, ^\ and ^Z
// to the child alone, once, instead of to the child and to us (which would forward a second
// copy). When the child stops on ^Z, we stop too, so the shell sees its job stopped and
// prints its prompt; when the shell continues us (fg), we give the child the terminal back and
// continue it (dumb-init's rule); continued by bg, we continue the child and leave the terminal
// to the shell.

// ownsTerminal reports whether stdin is a terminal and our process group its foreground.
func ownsTerminal() bool {
	pgrp, err := unix.IoctlGetInt(0, unix.TIOCGPGRP)
	return err == nil && pgrp == unix.Getpgrp()
}

// terminalStop reports whether sig is one of the stops a terminal sends (^Z, a background
// read or write), as opposed to SIGSTOP from a debugger or a freezer.
func terminalStop(sig syscall.Signal) bool {
	return sig == syscall.SIGTSTP || sig == syscall.SIGTTIN || sig == syscall.SIGTTOU
}

// followStop is called by the reaper when the child stopped on sig. Under job control (we are
// not PID 1 and the child has the terminal) we stop ourselves until the shell continues us,
// then hand the terminal back to the child if the shell gave it to us, and continue it.
func (s *Supervisor) followStop(pid int, sig syscall.Signal) {
	s.log.Info("child stopped", "pid", pid, "signal", signalName(sig))
	s.mu.Lock()
	terminal := s.terminal
	s.mu.Unlock()
	if !terminal || !terminalStop(sig) || os.Getpid() == 1 {
		return
	}
	if err := stopUntilContinued(); err != nil {
		s.log.Warn("stopping ourselves failed", "error", err)
		return
	}
	// Continued. By fg, the shell gave our group the terminal: pass it on to the child. By bg,
	// the shell kept it: taking it (we ignore SIGTTOU, so the kernel would let us) would steal
	// the shell's input; the child reading in the background stops again, and so do we.
	if ownsTerminal() {
		if err := unix.IoctlSetPointerInt(0, unix.TIOCSPGRP, pid); err != nil {
			s.log.Warn("giving the terminal back to the child failed", "error", err)
		}
	}
	if err := s.Signal(syscall.SIGCONT); err != nil {
		s.log.Warn("continuing the child failed", "error", err)
	}
}

// stopUntilContinued stops the whole process and returns once it is continued. The SIGSTOP is
// sent to the calling thread, which stops before the syscall returns; sent to the process, it
// could be taken by another thread while this one goes on.
func stopUntilContinued() error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	return unix.Tgkill(os.Getpid(), unix.Gettid(), unix.SIGSTOP)
}
