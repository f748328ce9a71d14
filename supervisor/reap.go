package supervisor

import (
	"syscall"
)

// reaped is one process collected by reap, logged once mu is released.
type reaped struct {
	pid     int
	ws      syscall.WaitStatus
	child   bool
	restart bool // the child exited because Restart stopped it
}

// reap collects every exited child with wait4(-1, WNOHANG) until none is left, and records the
// main child's status when it is among them. It is the only place in the process that waits:
// nothing else may call wait4, os/exec's Wait or os.Process.Wait while a Supervisor exists.
//
// It holds mu while waiting so that Signal never sends to a pid we have just freed, and logs
// only after releasing it.
func (s *Supervisor) reap() {
	for _, r := range s.collect() {
		switch {
		case r.ws.Stopped():
			s.followStop(r.pid, r.ws.StopSignal())
		case r.child:
			s.log.Info("child exited", "pid", r.pid, "code", exitCode(r.ws), "restart", r.restart)
		default:
			s.log.Debug("reaped orphan", "pid", r.pid, "code", exitCode(r.ws))
		}
	}
}

// collect is reap's part under mu.
func (s *Supervisor) collect() []reaped {
	s.mu.Lock()
	defer s.mu.Unlock()
	var all []reaped
	for {
		var ws syscall.WaitStatus
		pid, err := syscall.Wait4(-1, &ws, syscall.WNOHANG|syscall.WUNTRACED, nil)
		if err == syscall.EINTR {
			continue
		}
		if err != nil || pid <= 0 { // ECHILD: no children; 0: none has exited yet
			return all
		}
		if ws.Stopped() { // not an end; only the child's own stop matters (job control)
			if pid == s.pid && !s.exited {
				all = append(all, reaped{pid: pid, ws: ws, child: true})
			}
			continue
		}
		if r, ok := s.record(pid, ws); ok {
			all = append(all, r)
		}
	}
}

// record notes one reaped process; mu is held. Helpers are not logged (Run's caller does).
func (s *Supervisor) record(pid int, ws syscall.WaitStatus) (reaped, bool) {
	if status, ok := s.helpers[pid]; ok {
		delete(s.helpers, pid)
		status <- ws
		return reaped{}, false
	}
	if pid != s.pid || s.exited {
		return reaped{pid: pid, ws: ws}, true
	}
	s.exited = true
	s.status = ws
	close(s.exit)
	if !s.restarting {
		close(s.done)
	}
	return reaped{pid: pid, ws: ws, child: true, restart: s.restarting}, true
}
