package supervisor

import (
	"syscall"
)

// reap collects every exited child with wait4(-1, WNOHANG) until none is left, and records the
// main child's status when it is among them. It is the only place in the process that waits:
// nothing else may call wait4, os/exec's Wait or os.Process.Wait while a Supervisor exists.
//
// It holds mu while waiting so that Signal never sends to a pid we have just freed.
func (s *Supervisor) reap() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for {
		var ws syscall.WaitStatus
		pid, err := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil)
		if err == syscall.EINTR {
			continue
		}
		if err != nil || pid <= 0 { // ECHILD: no children; 0: none has exited yet
			return
		}
		s.record(pid, ws)
	}
}

// record notes one reaped process; mu is held.
func (s *Supervisor) record(pid int, ws syscall.WaitStatus) {
	if status, ok := s.helpers[pid]; ok {
		delete(s.helpers, pid)
		status <- ws
		return
	}
	if pid != s.pid || s.exited {
		s.log.Debug("reaped orphan", "pid", pid, "code", exitCode(ws))
		return
	}
	s.exited = true
	s.status = ws
	s.log.Info("child exited", "pid", pid, "code", exitCode(ws), "restart", s.restarting)
	close(s.exit)
	if !s.restarting {
		close(s.done)
	}
}
