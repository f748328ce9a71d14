package supervisor

import (
	"errors"
	"syscall"
	"time"
)

// ErrStopping is returned by Restart when the dispenser is being stopped (a SIGTERM or SIGINT
// was forwarded to the child, or arrived during the restart): no new child is started, and
// Done is closed with the old child's status.
var ErrStopping = errors.New("supervisor: stopping, child not restarted")

// Restart replaces the child, for programs that cannot reload on a signal:
//
//  1. SIGTERM the child (and SIGCONT), SIGKILL it after KillTimeout (DefaultStopTimeout if 0), and wait until it is
//     reaped. Its exit does not close Done: it was asked for.
//  2. Start argv with env, as Start does.
//
// It returns ErrNotRunning, and starts nothing, when the child already exited by itself (Done
// is closed). When the dispenser is being stopped it returns ErrStopping and closes Done. When
// the new child cannot be started it returns the StartError and closes Done; ExitCode is then
// the StartError's code.
func (s *Supervisor) Restart(argv, env []string) error {
	path, lookErr := lookPath(firstOf(argv), pathOf(env))
	s.mu.Lock()
	if s.pid <= 0 || s.exited {
		s.mu.Unlock()
		return ErrNotRunning
	}
	if s.stopping {
		s.mu.Unlock()
		return ErrStopping
	}
	s.restarting = true
	exit := s.exit
	s.mu.Unlock()

	s.stop(exit, time.Now().Add(s.stopTimeout))

	pid, err := s.startAgain(path, argv, env, lookErr)
	if err == nil {
		s.logStarted(pid, argv)
	}
	return err
}

// startAgain is step 2 of Restart, under mu.
func (s *Supervisor) startAgain(path string, argv, env []string, lookErr error) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.restarting = false
	if s.stopping {
		close(s.done)
		return 0, ErrStopping
	}
	if lookErr != nil {
		s.startErr, _ = lookErr.(*StartError)
		close(s.done)
		return 0, lookErr
	}
	s.pid, s.exited, s.status, s.exit = 0, false, 0, make(chan struct{})
	if err := s.fork(path, argv, env); err != nil {
		s.pid, s.exited = -1, true // Signal and running see no child; record ignores the old pid
		s.startErr, _ = err.(*StartError)
		close(s.done)
		return 0, err
	}
	return s.pid, nil
}

// noteStop remembers that the dispenser is asked to stop, so that Restart does not start a
// new child behind the signal. It is called by loop for a SIGTERM or SIGINT that reached the
// child, or that came while Restart had no child to forward it to.
func (s *Supervisor) noteStop(sig syscall.Signal, forwarded bool) bool {
	if sig != syscall.SIGTERM && sig != syscall.SIGINT {
		return false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if forwarded || s.restarting {
		s.stopping = true
		return true
	}
	return false
}

func firstOf(argv []string) string {
	if len(argv) == 0 {
		return ""
	}
	return argv[0]
}
