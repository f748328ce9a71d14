package supervisor

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// pollInterval is how often Shutdown looks at /proc while descendants are exiting.
const pollInterval = 10 * time.Millisecond

// proc is one line of /proc/PID/stat that matters to us.
type proc struct {
	pid, ppid int
	zombie    bool
}

// stopDescendants is step 2 and 3 of Shutdown: SIGTERM and SIGCONT every live descendant
// (including ones that appear meanwhile), wait until deadline for all of them to be gone and
// reaped, then SIGKILL what is left and wait one more grace period. Processes that are not below us in the
// process tree, such as members of our own process group started by someone else or a
// `docker exec` shell, are never signalled.
func (s *Supervisor) stopDescendants(deadline time.Time) {
	if !procIsOurs() {
		s.log.Warn("/proc belongs to another pid namespace; leftover processes are not stopped")
		return
	}
	termed := map[int]bool{}
	if s.signalDescendants(syscall.SIGTERM, termed, deadline) {
		return
	}
	s.log.Warn("descendants did not exit in time, sending SIGKILL", "grace", s.stopTimeout)
	if !s.signalDescendants(syscall.SIGKILL, map[int]bool{}, time.Now().Add(s.stopTimeout)) {
		s.log.Error("descendants still present after SIGKILL", "pids", fmt.Sprint(liveDescendants()))
	}
}

// signalDescendants sends sig once to every live descendant, new ones included, until none is
// left (true) or deadline passes (false).
func (s *Supervisor) signalDescendants(sig syscall.Signal, sent map[int]bool, deadline time.Time) bool {
	for {
		all := descendants()
		if len(all) == 0 {
			return true
		}
		var signalled []int
		for _, p := range all {
			if p.zombie || sent[p.pid] {
				continue
			}
			sent[p.pid] = true
			signalled = append(signalled, p.pid)
			if err := signalDescendant(p.pid, sig); err != nil {
				s.log.Debug("signalling leftover process failed", "pid", p.pid, "error", err)
			}
			if sig == syscall.SIGTERM { // a stopped process acts on SIGTERM only once continued
				signalDescendant(p.pid, syscall.SIGCONT)
			}
		}
		if len(signalled) > 0 {
			s.log.Info("signalled leftover processes", "signal", signalName(sig), "count", len(signalled), "pids", fmt.Sprint(signalled))
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(pollInterval)
	}
}

// signalDescendant signals pid through a pidfd, after checking that the process the pidfd
// pins is still our descendant, so a recycled pid is never hit.
func signalDescendant(pid int, sig syscall.Signal) error {
	fd, err := unix.PidfdOpen(pid, 0)
	if errors.Is(err, syscall.ENOSYS) { // before Linux 5.3: check, then kill
		if !isDescendant(pid) {
			return nil
		}
		return syscall.Kill(pid, sig)
	}
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	if !isDescendant(pid) {
		return nil
	}
	return unix.PidfdSendSignal(fd, sig, nil, 0)
}

// procIsOurs reports whether /proc shows our pid namespace. A PID 1 reading the host's /proc
// would take the host's processes for its children.
func procIsOurs() bool {
	self, err := os.Readlink("/proc/self")
	return err == nil && self == strconv.Itoa(os.Getpid())
}

// liveDescendants lists the pids below us that have not exited.
func liveDescendants() []int {
	var pids []int
	for _, p := range descendants() {
		if !p.zombie {
			pids = append(pids, p.pid)
		}
	}
	return pids
}

// descendants lists every process below us, zombies included: our children (orphans
// reparented to us among them), their children, and so on, from the ppid links in /proc.
func descendants() []proc {
	children := map[int][]proc{}
	for _, p := range readProcs() {
		children[p.ppid] = append(children[p.ppid], p)
	}
	var out []proc
	queue := []int{os.Getpid()}
	for len(queue) > 0 {
		parent := queue[0]
		queue = queue[1:]
		for _, c := range children[parent] {
			out = append(out, c)
			queue = append(queue, c.pid)
		}
	}
	return out
}

// isDescendant follows pid's parents up to us.
func isDescendant(pid int) bool {
	self := os.Getpid()
	for range 4096 { // deeper than any real tree; guards against a cycle from racing reads
		p, err := readProc(pid)
		if err != nil {
			return false
		}
		switch p.ppid {
		case self:
			return true
		case 0, 1:
			return false
		}
		pid = p.ppid
	}
	return false
}

// readProcs reads /proc/*/stat for every process we can see.
func readProcs() []proc {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var procs []proc
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if p, err := readProc(pid); err == nil {
			procs = append(procs, p)
		}
	}
	return procs
}

// readProc parses /proc/PID/stat: "pid (comm) state ppid …"; comm may contain anything, so
// the fields are taken after the last ')'.
func readProc(pid int) (proc, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return proc{}, err
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return proc{}, fmt.Errorf("parsing /proc/%d/stat: no ')'", pid)
	}
	fields := bytes.Fields(b[i+1:])
	if len(fields) < 2 {
		return proc{}, fmt.Errorf("parsing /proc/%d/stat: too short", pid)
	}
	ppid, err := strconv.Atoi(string(fields[1]))
	if err != nil {
		return proc{}, fmt.Errorf("parsing /proc/%d/stat: %w", pid, err)
	}
	return proc{pid: pid, ppid: ppid, zombie: string(fields[0]) == "Z" || string(fields[0]) == "X"}, nil
}
