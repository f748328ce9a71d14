package supervisor

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Realtime signals forwarded to the child: 34 (SIGRTMIN of glibc programs) to 64. 32 and 33
// belong to the C library's threads (glibc's SIGCANCEL and SIGSETXID), so they are caught,
// not to die of them, and not forwarded, as tini and dumb-init do.
const (
	firstCounted  = 32 // the Go runtime leaves 32 to 34 alone; see counted.go
	sigRTMIN      = 34 // as glibc programs see it
	firstRealtime = 35 // the first realtime signal the Go runtime catches itself
	lastRealtime  = 64
)

// forwardedStandard are the standard signals we pass on to the child. The others are left out:
// SIGTTIN and SIGTTOU are ignored for ourselves (tini's rule), so that writing our log to a
// terminal where the child is in the foreground neither stops us nor loops (stty tostop);
// SIGKILL and SIGSTOP cannot be caught; SIGCHLD is ours (reaping); SIGURG is sent by the Go
// runtime to itself for goroutine preemption; SIGPROF is kept by the Go runtime for profiling
// and never reaches signal.Notify; SIGPIPE is raised by the kernel when we write to
// a broken connection (to etcd, a closed stdout), which must not reach the child; SIGSEGV,
// SIGBUS, SIGFPE and SIGILL report our own faults and must keep crashing us.
var forwardedStandard = []syscall.Signal{
	unix.SIGHUP, unix.SIGINT, unix.SIGQUIT, unix.SIGTRAP, unix.SIGABRT, unix.SIGUSR1,
	unix.SIGUSR2, unix.SIGALRM, unix.SIGTERM, unix.SIGSTKFLT, unix.SIGCONT, unix.SIGTSTP,
	unix.SIGXCPU, unix.SIGXFSZ, unix.SIGVTALRM, unix.SIGWINCH,
	unix.SIGIO, unix.SIGPWR, unix.SIGSYS,
}

// notForwarded are caught only so they do not kill us: SIGPIPE's default would end PID 1 on a
// write to a closed stdout. SEGV, BUS, FPE and ILL reach signal.Notify only when another
// process sent them (si_code SI_USER or SI_TKILL): the Go runtime still turns a real fault of
// ours into a crash, before looking at Notify.
var notForwarded = []os.Signal{syscall.SIGPIPE, syscall.SIGSEGV, syscall.SIGBUS, syscall.SIGFPE, syscall.SIGILL}

// Forwardable lists every signal the supervisor forwards to the child.
func Forwardable() []syscall.Signal {
	sigs := append([]syscall.Signal(nil), forwardedStandard...)
	for n := sigRTMIN; n <= lastRealtime; n++ {
		sigs = append(sigs, syscall.Signal(n))
	}
	return sigs
}

// notified lists the signals New subscribes to with os/signal: the standard forwarded ones
// and notForwarded, minus those the launcher ignored (they stay ignored, for us and the child).
func notified(ignored map[syscall.Signal]bool) []os.Signal {
	var sigs []os.Signal
	for _, sig := range forwardedStandard {
		if !ignored[sig] {
			sigs = append(sigs, sig)
		}
	}
	return append(sigs, notForwarded...)
}

// counted lists the signals that get the counting handler: 32 to 34 unless someone (the
// launcher, or a C library) already handles or ignores them, and 35 to 64.
func counted() []syscall.Signal {
	var sigs []syscall.Signal
	for n := firstCounted; n <= lastRealtime; n++ {
		sig := syscall.Signal(n)
		if n < firstRealtime {
			if act, err := sigaction(sig, nil); err != nil || act.handler != sigDfl {
				continue
			}
		}
		sigs = append(sigs, sig)
	}
	return sigs
}

// terminating are the signals that ask the dispenser itself to stop when no child runs.
// SIGHUP is not one of them: it usually means "reload".
func terminating(sig syscall.Signal) bool {
	return sig == syscall.SIGTERM || sig == syscall.SIGINT || sig == syscall.SIGQUIT
}

// handle applies the forwarding rules to one signal the dispenser received.
func (s *Supervisor) handle(sig syscall.Signal) {
	if !isForwardable(sig) {
		level := slog.LevelInfo // a fault signal sent by someone: worth a line
		if sig == syscall.SIGPIPE {
			level = slog.LevelDebug // raised by our own writes
		}
		s.log.Log(context.Background(), level, "signal ignored, not forwarded", "signal", signalName(sig))
		return
	}
	out, rewritten := s.rewrite[sig]
	if !rewritten {
		out = sig
	}
	if out == 0 && s.running() {
		s.log.Debug("signal dropped (rewritten to 0)", "signal", signalName(sig))
		return
	}
	err := ErrNotRunning
	if out != 0 {
		err = s.Signal(out)
	}
	switch {
	case errors.Is(err, ErrNotRunning):
		if s.noteStop(sig, false) { // between two children of a Restart, which then stops
			return
		}
		s.notifyTerminated(sig)
	case err != nil:
		s.log.Warn("forwarding signal failed", "signal", signalName(sig), "error", err)
	default:
		s.log.Debug("signal forwarded", "signal", signalName(sig), "sent", signalName(out))
		if sig == syscall.SIGTERM { // a stopped child acts on it only once continued
			s.continueChild()
		}
		s.noteStop(sig, true)
		s.armKillTimer(sig)
	}
}

// notifyTerminated tells main about a terminating signal that no child can receive.
func (s *Supervisor) notifyTerminated(sig syscall.Signal) {
	if !terminating(sig) {
		s.log.Debug("signal dropped, no child", "signal", signalName(sig))
		return
	}
	select {
	case s.terminated <- sig:
	default: // main has one pending already
	}
}

// armKillTimer (loop goroutine only) starts the KillTimeout countdown after a SIGTERM or SIGINT reached the child:
// a child that asked to stop but hangs is SIGKILLed, so the container does stop.
// Without a KillTimeout there is no countdown.
func (s *Supervisor) armKillTimer(sig syscall.Signal) {
	if sig != syscall.SIGTERM && sig != syscall.SIGINT || s.killTimeout <= 0 {
		return
	}
	if s.killTimer == nil {
		s.killTimer = time.After(s.killTimeout)
	}
}

// continueChild sends SIGCONT after a forwarded SIGTERM, as stop does.
func (s *Supervisor) continueChild() {
	if err := s.Signal(syscall.SIGCONT); err != nil && !errors.Is(err, ErrNotRunning) {
		s.log.Warn("signalling child failed", "signal", "SIGCONT", "error", err)
	}
}

// killAfterTimeout is the end of the countdown armKillTimer started.
func (s *Supervisor) killAfterTimeout() {
	if !s.running() {
		return
	}
	s.log.Warn("child did not exit in time after a terminating signal, sending SIGKILL", "grace", s.killTimeout)
	if err := s.Signal(syscall.SIGKILL); err != nil && !errors.Is(err, ErrNotRunning) {
		s.log.Warn("signalling child failed", "signal", "SIGKILL", "error", err)
	}
}

func isForwardable(sig syscall.Signal) bool {
	for _, f := range Forwardable() {
		if f == sig {
			return true
		}
	}
	return false
}

// signalName is "SIGHUP" for syscall.SIGHUP, "SIGRTMIN" for 34 and "SIGRTMIN+1" for 35.
func signalName(sig syscall.Signal) string {
	switch name := unix.SignalName(sig); {
	case name != "":
		return name
	case sig == sigRTMIN:
		return "SIGRTMIN"
	case sig > sigRTMIN:
		return fmt.Sprintf("SIGRTMIN+%d", int(sig)-sigRTMIN)
	}
	return fmt.Sprintf("signal %d", int(sig))
}
