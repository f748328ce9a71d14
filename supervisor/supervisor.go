package supervisor

import (
	"errors"
	"log/slog"
	"os"
	"os/signal"
	"slices"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// DefaultStopTimeout is the grace between SIGTERM and SIGKILL when we stop processes ourselves
// (Restart, and leftover descendants at Shutdown) and Options.KillTimeout is 0. It is docker
// stop's.
const DefaultStopTimeout = 10 * time.Second

// ErrNotRunning is returned by Signal when there is no child to signal: it was never started,
// or it has exited and been reaped (its pid may already belong to someone else).
var ErrNotRunning = errors.New("supervisor: child is not running")

// Options configure a Supervisor. The zero value is usable.
type Options struct {
	// KillTimeout is the grace between SIGTERM and SIGKILL. 0: a SIGTERM or SIGINT forwarded
	// from outside is never followed by our SIGKILL (whoever sent it kills when its own grace
	// ends: docker stop after 10 s, Kubernetes after terminationGracePeriodSeconds), and the
	// processes we stop ourselves get DefaultStopTimeout.
	KillTimeout  time.Duration
	ProcessGroup bool         // deliver signals to the child's whole process group (child started with Setpgid) instead of the child only
	Logger       *slog.Logger // nil = slog.Default()

	// Rewrite maps a signal we receive to the one the child gets instead; 0 drops it (dumb-init
	// -r). TERM→QUIT gives nginx its graceful shutdown on docker stop. The signal received still
	// counts as the one that came: a SIGTERM rewritten to SIGQUIT still means "stop".
	Rewrite map[syscall.Signal]syscall.Signal
	// SuccessCodes are exit codes reported as 0 (tini -e): a JVM exits 143 on SIGTERM.
	SuccessCodes []int
	// ParentDeathSignal, when not 0, is sent to us by the kernel when our parent dies (tini -p),
	// so that a dispenser whose supervisor was killed with -9 does not run on. Ignored as PID 1.
	ParentDeathSignal syscall.Signal
}

// Supervisor is the init side of the dispenser: one child, every zombie, every signal.
// There must be at most one per process, because signal handling and reaping are process-wide.
type Supervisor struct {
	killTimeout  time.Duration // 0: never after a forwarded signal
	stopTimeout  time.Duration // KillTimeout, or DefaultStopTimeout
	processGroup bool
	log          *slog.Logger

	signals    chan os.Signal // forwardable signals, from signal.Notify
	sigchld    chan os.Signal // SIGCHLD only; capacity 1 is enough because one reap drains all
	terminated chan os.Signal
	done       chan struct{} // closed when the child ends without Restart asking it to

	// mu is held while forking the child and while calling wait4, so that a pid seen under mu
	// and not yet marked exited is still ours: the kernel cannot reuse it before we reap it.
	mu      sync.Mutex
	pid     int // the child's pid, 0 before Start
	exited  bool
	status  syscall.WaitStatus
	exit    chan struct{}                   // closed when the current child is reaped, requested or not
	helpers map[int]chan syscall.WaitStatus // commands started by Run, by pid

	restarting bool        // Restart is stopping the child: its exit does not close done
	stopping   bool        // a SIGTERM or SIGINT was forwarded (or came during a restart): no restart
	startErr   *StartError // the command could not be started again by Restart

	terminal         bool // stdin is a terminal we owned at Start: children get its foreground
	stopsIgnoredByUs []os.Signal
	rewrite          map[syscall.Signal]syscall.Signal
	successCodes     []int // SIGTTIN and SIGTTOU when New ignored them, not the launcher

	killTimer <-chan time.Time // armed by a forwarded SIGTERM/SIGINT; used by loop only
}

// New takes over the process's signals and reaping at once, before any child exists: it
// subscribes to every forwardable signal and SIGCHLD, becomes a child subreaper when it is not
// PID 1 (so orphans of the child are reparented to us and reaped), and starts the single
// goroutine that reaps and forwards.
func New(opts Options) (*Supervisor, error) {
	s := &Supervisor{
		killTimeout:  opts.KillTimeout,
		processGroup: opts.ProcessGroup,
		log:          opts.Logger,
		signals:      make(chan os.Signal, 64),
		sigchld:      make(chan os.Signal, 1),
		terminated:   make(chan os.Signal, 1),
		done:         make(chan struct{}),
		exit:         make(chan struct{}),
		helpers:      map[int]chan syscall.WaitStatus{},
		rewrite:      opts.Rewrite,
		successCodes: opts.SuccessCodes,
	}
	s.stopTimeout = s.killTimeout
	if s.stopTimeout <= 0 {
		s.stopTimeout = DefaultStopTimeout
	}
	if s.log == nil {
		s.log = slog.Default()
	}
	if err := becomeSubreaper(); err != nil {
		return nil, err
	}
	if err := dieWithParent(opts.ParentDeathSignal); err != nil {
		return nil, err
	}
	ignored := ignoredAtStart()
	signal.Notify(s.sigchld, syscall.SIGCHLD)
	signal.Notify(s.signals, notified(ignored)...)
	if err := countSignals(counted(), s.signals); err != nil {
		return nil, err
	}
	s.ignoreTerminalStops(ignored)
	go s.loop()
	// A child of ours may have exited before Notify; reap it now rather than at the next SIGCHLD.
	select {
	case s.sigchld <- syscall.SIGCHLD:
	default:
	}
	return s, nil
}

// becomeSubreaper makes orphaned descendants reparent to us instead of to the real PID 1.
// PID 1 gets them anyway.
func becomeSubreaper() error {
	if os.Getpid() == 1 {
		return nil
	}
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		return os.NewSyscallError("prctl(PR_SET_CHILD_SUBREAPER)", err)
	}
	return nil
}

// dieWithParent asks the kernel for sig when our parent exits. A parent that died before the
// prctl is seen by the change of our parent pid, and gets us sig at once.
func dieWithParent(sig syscall.Signal) error {
	if sig == 0 || os.Getpid() == 1 {
		return nil
	}
	parent := os.Getppid()
	if err := unix.Prctl(unix.PR_SET_PDEATHSIG, uintptr(sig), 0, 0, 0); err != nil {
		return os.NewSyscallError("prctl(PR_SET_PDEATHSIG)", err)
	}
	if os.Getppid() != parent {
		return syscall.Kill(os.Getpid(), sig)
	}
	return nil
}

// loop is the only goroutine that reaps, and the one that forwards signals.
func (s *Supervisor) loop() {
	for {
		select {
		case <-s.sigchld:
			s.reap()
		case sig := <-s.signals:
			s.handle(sig.(syscall.Signal))
		case <-s.killTimer:
			s.killAfterTimeout()
		}
	}
}

// Terminated delivers SIGTERM, SIGINT or SIGQUIT when one arrives while no child is running
// (before Start, in sidecar mode without a child, or after the child exited), so main can shut
// down. While a child runs these signals are forwarded to it instead.
func (s *Supervisor) Terminated() <-chan os.Signal { return s.terminated }

// Done is closed when the child has exited and been reaped, unless Restart stopped it: then
// Done stays open and follows the new child.
func (s *Supervisor) Done() <-chan struct{} { return s.done }

// Signal sends sig to the child, or to its process group with Options.ProcessGroup. It is the
// path for the reload signal and for forwarded signals. After the child has been reaped it
// returns ErrNotRunning and sends nothing.
func (s *Supervisor) Signal(sig syscall.Signal) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.pid <= 0 || s.exited {
		return ErrNotRunning
	}
	target := s.pid
	if s.processGroup {
		target = -s.pid
	}
	if !safeTarget(target) {
		return ErrNotRunning
	}
	if err := syscall.Kill(target, sig); err != nil {
		return os.NewSyscallError("kill", err)
	}
	return nil
}

// safeTarget refuses the kill(2) targets that reach processes we did not start:
// 0 (our own group), -1 (everyone), our own pid and our own process group.
func safeTarget(target int) bool {
	switch target {
	case 0, -1, ownPid, -ownPid, -ownGroup:
		return false
	}
	return true
}

// Our pid and process group, read once rather than at each signal (three system calls on the
// way to every notification). Neither changes: we never call setsid or setpgid on ourselves,
// and a parent can move a child to another group only before it execs (setpgid(2): EACCES).
var ownPid, ownGroup = os.Getpid(), syscall.Getpgrp()

// running reports whether the child was started and not yet reaped.
func (s *Supervisor) running() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.pid > 0 && !s.exited
}

// Shutdown stops everything and returns the exit code the dispenser should exit with.
//
//  1. If the child still runs: SIGTERM it (and SIGCONT, so a stopped child sees the SIGTERM),
//     wait up to KillTimeout (DefaultStopTimeout if 0), then SIGKILL it.
//  2. SIGTERM every remaining descendant (orphans reparented to us and their children), wait
//     for the rest of the same grace period, then SIGKILL them.
//  3. Wait until all of them are reaped.
//
// The code is the child's exit code, 128+N if it was killed by signal N, and 0 if no child
// was ever started.
func (s *Supervisor) Shutdown() int {
	deadline := time.Now().Add(s.stopTimeout)
	s.stopChild(deadline)
	s.stopDescendants(deadline)
	return s.ExitCode()
}

// stopChild is step 1 of Shutdown.
func (s *Supervisor) stopChild(deadline time.Time) {
	if !s.running() {
		return
	}
	s.mu.Lock()
	exit := s.exit
	s.mu.Unlock()
	s.stop(exit, deadline)
}

// stop ends the current child, whose exit channel is exit: SIGTERM (and SIGCONT, so a stopped
// child sees it), then SIGKILL at deadline. It returns once the child is reaped.
func (s *Supervisor) stop(exit <-chan struct{}, deadline time.Time) {
	s.log.Info("stopping child", "signal", "SIGTERM", "grace", s.stopTimeout)
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGCONT} {
		if err := s.Signal(sig); err != nil && !errors.Is(err, ErrNotRunning) {
			s.log.Warn("signalling child failed", "signal", signalName(sig), "error", err)
		}
	}
	timer := time.NewTimer(time.Until(deadline))
	defer timer.Stop()
	select {
	case <-exit:
		return
	case <-timer.C:
	}
	s.log.Warn("child did not exit in time, sending SIGKILL", "grace", s.stopTimeout)
	if err := s.Signal(syscall.SIGKILL); err != nil && !errors.Is(err, ErrNotRunning) {
		s.log.Warn("signalling child failed", "signal", "SIGKILL", "error", err)
	}
	<-exit
}

// ExitCode is the exit code the dispenser should exit with, following the shell and tini
// convention: the child's own exit code, 128+N when a signal N killed it, 0 without a child,
// and 0 for one of Options.SuccessCodes.
// It is only meaningful once Done is closed.
func (s *Supervisor) ExitCode() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.startErr != nil {
		return s.startErr.Code
	}
	if !s.exited {
		return 0
	}
	code := exitCode(s.status)
	if slices.Contains(s.successCodes, code) {
		return 0
	}
	return code
}

// exitCode maps a wait status to a shell-style exit code.
func exitCode(ws syscall.WaitStatus) int {
	switch {
	case ws.Exited():
		return ws.ExitStatus()
	case ws.Signaled():
		return 128 + int(ws.Signal())
	}
	return 1
}
