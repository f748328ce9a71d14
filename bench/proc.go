package main

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// binary is a dispenser to measure: ours, or the peer given with -peer.
type binary struct {
	name, path string
	flags      []string // before the common flags; ours only (-flags)
}

// childEvent is one line of a child: "start" or "hup", with the child's clock.
type childEvent struct {
	what string
	at   time.Time
}

// hub receives the children's lines on a unix socket and hands each to the run whose
// BENCH_ID it carries.
type hub struct {
	sock string
	mu   sync.Mutex
	runs map[string]chan childEvent
}

func newHub(sock string) (*hub, error) {
	ln, err := net.Listen("unix", sock)
	if err != nil {
		return nil, err
	}
	h := &hub{sock: sock, runs: map[string]chan childEvent{}}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go h.read(c)
		}
	}()
	return h, nil
}

func (h *hub) read(c net.Conn) {
	defer c.Close()
	sc := bufio.NewScanner(c)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) != 3 {
			continue
		}
		ns, _ := strconv.ParseInt(f[1], 10, 64)
		h.mu.Lock()
		ch := h.runs[f[2]]
		h.mu.Unlock()
		if ch != nil {
			select {
			case ch <- childEvent{f[0], time.Unix(0, ns)}:
			default: // nobody counts this many
			}
		}
	}
}

// run is one dispenser process with its child.
type run struct {
	id     string
	bin    binary
	cmd    *exec.Cmd
	target string
	events chan childEvent
	done   chan struct{} // closed when the process exited
	stderr tail
	h      *hub
}

// launch starts bin on prefix with the original's flags (the peer knows no others), into a
// fresh target under dir, with the benchmark's child.
func (h *hub) launch(bin binary, dir, child, endpoint, prefix string) (*run, time.Time, error) {
	id := fmt.Sprintf("%s-%d", bin.name, nextID())
	r := &run{id: id, bin: bin, target: filepath.Join(dir, "target-"+id), events: make(chan childEvent, 1<<14),
		done: make(chan struct{}), h: h}
	if err := os.MkdirAll(r.target, 0o755); err != nil { // the original needs it to exist
		return nil, time.Time{}, err
	}
	args := append(append([]string{}, bin.flags...), "--prefix="+prefix, "--target="+r.target, "--signal=SIGHUP", "--", child)
	r.cmd = exec.Command(bin.path, args...)
	r.cmd.Env = append(os.Environ(), "ETCD_ENDPOINTS="+endpoint, "BENCH_SOCKET="+h.sock, "BENCH_ID="+id)
	// Its own process group: the original, when its child dies by a signal, sends that
	// signal to its process group.
	r.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	var out io.Writer = &r.stderr
	if *logsDir != "" {
		f, err := os.Create(filepath.Join(*logsDir, id+".log"))
		if err != nil {
			return nil, time.Time{}, err
		}
		defer f.Close() // the child process has its own copy
		out = f
	}
	r.cmd.Stdout, r.cmd.Stderr = out, out
	h.mu.Lock()
	h.runs[id] = r.events
	h.mu.Unlock()
	t0 := time.Now()
	if err := r.cmd.Start(); err != nil {
		return nil, t0, err
	}
	go func() { _ = r.cmd.Wait(); close(r.done) }()
	return r, t0, nil
}

var ids struct {
	sync.Mutex
	n int
}

func nextID() int {
	ids.Lock()
	defer ids.Unlock()
	ids.n++
	return ids.n
}

// next waits for the child's next event of kind what.
func (r *run) next(what string, timeout time.Duration) (time.Time, error) {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		select {
		case ev := <-r.events:
			if ev.what == what {
				return ev.at, nil
			}
		case <-r.done:
			return time.Time{}, fmt.Errorf("%s exited: %v\n%s", r.bin.name, r.cmd.ProcessState, r.stderr.String())
		case <-deadline.C:
			return time.Time{}, fmt.Errorf("%s: the child did not report %q within %v\n%s", r.bin.name, what, timeout, r.stderr.String())
		}
	}
}

// count counts events of kind what until none came for quiet.
func (r *run) count(what string, quiet time.Duration) int {
	n := 0
	for {
		select {
		case ev := <-r.events:
			if ev.what == what {
				n++
			}
		case <-time.After(quiet):
			return n
		}
	}
}

func (r *run) drain() {
	for {
		select {
		case <-r.events:
		default:
			return
		}
	}
}

// stop sends SIGTERM, waits up to 10 s (then SIGKILL), and removes the target.
func (r *run) stop() {
	_ = r.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-r.done:
	case <-time.After(10 * time.Second):
		_ = syscall.Kill(-r.cmd.Process.Pid, syscall.SIGKILL)
		<-r.done
	}
	r.h.mu.Lock()
	delete(r.h.runs, r.id)
	r.h.mu.Unlock()
	os.RemoveAll(r.target)
}

func (r *run) pid() int { return r.cmd.Process.Pid }

// tail keeps the last 16 KiB written to it, for error messages.
type tail struct {
	mu  sync.Mutex
	buf []byte
}

func (t *tail) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf = append(t.buf, p...)
	if len(t.buf) > 32<<10 {
		t.buf = append(t.buf[:0], t.buf[len(t.buf)-16<<10:]...)
	}
	return len(p), nil
}

func (t *tail) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return string(t.buf)
}

var _ io.Writer = (*tail)(nil)

// procStatus returns a kB field of /proc/PID/status.
func procStatus(pid int, field string) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, field+":"); ok {
			return strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
		}
	}
	return 0, fmt.Errorf("%s not in /proc/%d/status", field, pid)
}

// cpuTime returns utime+stime of pid.
func cpuTime(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The fields after the command name, which is in parentheses and may hold spaces.
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+2:]))
	utime, _ := strconv.ParseInt(f[11], 10, 64)
	stime, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(utime+stime) * 10 * time.Millisecond, nil // USER_HZ is 100 on Linux
}

// loadavg is the first field of /proc/loadavg.
func loadavg() string {
	b, _ := os.ReadFile("/proc/loadavg")
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return "?"
	}
	return f[0]
}

// binaryPages sums the resident pages of the executable's mappings by permission (text r-x,
// read-only data r--, data rw-), from /proc/PID/smaps.
func binaryPages(pid int, path string) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps", pid))
	if err != nil {
		return "?"
	}
	kb := map[string]int64{}
	perm := ""
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		switch {
		case len(f) >= 5 && strings.Contains(f[0], "-") && len(f[1]) == 4:
			// A mapping's header; an anonymous one (the heap, the .bss beyond the file) has
			// no sixth field and must end the binary's run too.
			perm = ""
			if len(f) >= 6 && f[5] == path {
				perm = f[1][:3]
			}
		case perm != "" && len(f) >= 2 && f[0] == "Rss:":
			n, _ := strconv.ParseInt(f[1], 10, 64)
			kb[perm] += n
		}
	}
	return fmt.Sprintf("text %.1f + rodata %.1f + data %.1f MiB", float64(kb["r-x"])/1024, float64(kb["r--"])/1024,
		float64(kb["rw-"])/1024)
}

// pssOf returns the proportional set size of pid in kB, from /proc/PID/smaps_rollup.
func pssOf(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps_rollup", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "Pss:"); ok {
			return strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
		}
	}
	return 0, fmt.Errorf("no Pss in /proc/%d/smaps_rollup", pid)
}
