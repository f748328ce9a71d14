// Package e2e runs the real etcd-config-dispenser binary against a real etcd,
// with children written for the tests, as a user would.
package e2e

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/etcd-config-dispenser/etcd-config-dispenser/internal/etcdtest"
)

var binary string

func TestMain(m *testing.M) {
	if role := os.Getenv("E2E_CHILD"); role != "" {
		os.Exit(runChild(role))
	}
	dir, err := os.MkdirTemp("", "e2e-bin-")
	if err != nil {
		panic(err)
	}
	binary = filepath.Join(dir, "etcd-config-dispenser")
	args := []string{"build", "-o", binary}
	if raceEnabled {
		args = append(args, "-race")
	}
	build := exec.Command("go", append(args, "github.com/etcd-config-dispenser/etcd-config-dispenser")...)
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "building the binary:", err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	if staticDir != "" { // 25 MB, often on a tmpfs (TMPDIR=/dev/shm)
		os.RemoveAll(staticDir)
	}
	os.Exit(code)
}

// dispenser is one run of the binary.
type dispenser struct {
	t      *testing.T
	cmd    *exec.Cmd
	target string
	log    string // the child's event log
	stderr *syncBuffer
	done   chan struct{}
}

// start runs the binary with the flags, and the test binary itself as the
// child in the given role (none: no child).
func start(t *testing.T, e *etcdtest.Server, role string, flags ...string) *dispenser {
	t.Helper()
	return startAs(t, e, runOpts{}, role, flags...)
}

// runOpts are the less common ways to start the binary.
type runOpts struct {
	Attr     *syscall.SysProcAttr // for example a new PID namespace
	Env      []string             // added to the environment
	Target   string               // instead of a fresh path
	NoTarget bool                 // no --target: templates only
	Nofile   int                  // if set, the limit of open files (soft and hard), as ulimit -n sets it
}

// startAs is start with options.
func startAs(t *testing.T, e *etcdtest.Server, o runOpts, role string, flags ...string) *dispenser {
	t.Helper()
	d := &dispenser{t: t, target: filepath.Join(t.TempDir(), "config"), log: filepath.Join(t.TempDir(), "child.log"),
		stderr: &syncBuffer{}, done: make(chan struct{})}
	if o.Target != "" {
		d.target = o.Target
	}
	args := append([]string{"--target=" + d.target, "--check-interval=200ms"}, flags...)
	if o.NoTarget {
		args = args[1:]
	}
	if role != "" {
		args = append(args, "--", os.Args[0], "-test.run=^$")
	}
	d.cmd = exec.Command(binary, args...)
	if o.Nofile > 0 {
		// The hard limit too: Go raises the soft limit to the hard one at start.
		d.cmd = exec.Command("/bin/sh", append([]string{"-c", fmt.Sprintf(`ulimit -n %d && exec "$0" "$@"`, o.Nofile), binary}, args...)...)
	}
	d.cmd.Env = append(os.Environ(), "ETCD_ENDPOINTS="+e.Endpoint(), "E2E_CHILD="+role, "E2E_LOG="+d.log,
		"E2E_TARGET="+d.target)
	if role == "" {
		d.cmd.Env = append(d.cmd.Env, "E2E_CHILD=")
	}
	d.cmd.Env = append(d.cmd.Env, o.Env...)
	d.cmd.Stderr = d.stderr
	d.cmd.Stdout = d.stderr
	d.cmd.SysProcAttr = o.Attr
	// A child left behind by a killed dispenser may hold the output pipe.
	d.cmd.WaitDelay = 5 * time.Second
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { _ = d.cmd.Wait(); close(d.done) }()
	t.Cleanup(func() {
		select {
		case <-d.done:
		default:
			// Stop it as docker stop would, so the child goes too.
			_ = d.cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-d.done:
			case <-time.After(15 * time.Second):
				_ = d.cmd.Process.Kill()
				<-d.done
			}
		}
		if t.Failed() {
			t.Logf("dispenser output:\n%s", d.stderr.String())
		}
	})
	return d
}

// wait returns the exit code, failing the test after the timeout.
func (d *dispenser) wait(timeout time.Duration) int {
	d.t.Helper()
	select {
	case <-d.done:
		return d.cmd.ProcessState.ExitCode()
	case <-time.After(timeout):
		d.t.Fatalf("dispenser still running after %v", timeout)
		return -1
	}
}

// event is one line of the child's log: what it saw when it started or got
// a signal.
type event struct {
	What  string            `json:"what"`
	Files map[string]string `json:"files,omitempty"`
}

func (d *dispenser) events() []event {
	d.t.Helper()
	b, err := os.ReadFile(d.log)
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		d.t.Fatal(err)
	}
	var evs []event
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		if line == "" {
			continue
		}
		var ev event
		if err := json.Unmarshal([]byte(line), &ev); err != nil {
			d.t.Fatalf("child log line %q: %v", line, err)
		}
		evs = append(evs, ev)
	}
	return evs
}

// waitEvent waits until the child logged an event matching ok and returns the
// number of events so far.
func (d *dispenser) waitEvent(desc string, ok func(event) bool) []event {
	d.t.Helper()
	var evs []event
	etcdtest.Eventually(d.t, 30*time.Second, func() error {
		evs = d.events()
		for _, ev := range evs {
			if ok(ev) {
				return nil
			}
		}
		return fmt.Errorf("child never logged %s; it logged %+v", desc, evs)
	})
	return evs
}

// finalSignals stops the dispenser as docker stop does and counts the signals
// the child got: SIGTERM reaches the child after every signal sent before it,
// so a late signal cannot be missed.
func (d *dispenser) finalSignals() int {
	d.t.Helper()
	_ = d.cmd.Process.Signal(syscall.SIGTERM)
	d.waitEvent("terminate", func(ev event) bool { return ev.What == "terminate" })
	return d.signals()
}

func (d *dispenser) signals() int {
	n := 0
	for _, ev := range d.events() {
		if ev.What == "hangup" {
			n++
		}
	}
	return n
}

// tree reads the target as a user sees it, through the top-level names.
func tree(t *testing.T, dir string) map[string]string {
	t.Helper()
	files, err := readTree(dir, dir)
	if err != nil {
		t.Fatal(err)
	}
	return files
}

func readTree(root, dir string) (map[string]string, error) {
	files := map[string]string{}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), "..") {
			continue
		}
		p := filepath.Join(dir, e.Name())
		st, err := os.Stat(p) // follows the top-level symlinks
		if err != nil {
			return nil, err
		}
		if st.IsDir() {
			sub, err := readTree(root, p)
			if err != nil {
				return nil, err
			}
			for k, v := range sub {
				files[k] = v
			}
			continue
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return nil, err
		}
		rel, _ := filepath.Rel(root, p)
		files[rel] = string(b)
	}
	return files, nil
}

func txn(t *testing.T, c *clientv3.Client, kv ...string) int64 {
	t.Helper()
	return etcdtest.Txn(t, c, kv...)
}

func equalTree(t *testing.T, dir string, want map[string]string) func() error {
	return func() error {
		got, err := readTree(dir, dir)
		if err != nil {
			return err
		}
		if fmt.Sprint(got) != fmt.Sprint(want) {
			return fmt.Errorf("target has %v, want %v", got, want)
		}
		return nil
	}
}

// ---- the child, run as the test binary with E2E_CHILD set ----

func runChild(role string) int {
	target, logPath := os.Getenv("E2E_TARGET"), os.Getenv("E2E_LOG")
	logf := func(what string, files map[string]string) {
		if rendered := os.Getenv("E2E_RENDERED"); rendered != "" && files != nil {
			b, _ := os.ReadFile(rendered) // what a template rendered, outside the target
			files["@rendered"] = string(b)
		}
		b, _ := json.Marshal(event{What: what, Files: files})
		f, err := os.OpenFile(logPath, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
		if err != nil {
			panic(err)
		}
		f.Write(append(b, '\n'))
		f.Close()
	}
	sigs := make(chan os.Signal, 16)
	signal.Notify(sigs, syscall.SIGHUP, syscall.SIGTERM, syscall.SIGINT, syscall.SIGUSR1, syscall.SIGUSR2,
		syscall.SIGQUIT, syscall.SIGWINCH)
	logf("start", readConsistent(target))
	switch {
	case strings.HasPrefix(role, "exit:"):
		var code int
		fmt.Sscan(strings.TrimPrefix(role, "exit:"), &code)
		return code
	case role == "env":
		env := map[string]string{}
		for _, kv := range os.Environ() {
			if k, v, _ := strings.Cut(kv, "="); strings.HasPrefix(k, "ETCD_") {
				env[k] = v
			}
		}
		logf("env", env)
	case role == "orphans":
		// 100 grandchildren that outlive their parent shell: orphans for PID 1.
		_ = exec.Command("/bin/sh", "-c", "for i in $(seq 100); do (sleep 0.2 &); done").Run()
		logf("orphans-made", nil)
	}
	for sig := range sigs {
		switch sig {
		case syscall.SIGHUP:
			logf("hangup", readConsistent(target))
		case syscall.SIGTERM:
			logf("terminate", nil)
			return 0
		case syscall.SIGUSR1:
			logf(sig.String(), nil)
			if role == "exit-on-usr1" { // ends by itself, with a code of its own
				return 7
			}
		default:
			logf(sig.String(), nil)
		}
	}
	return 0
}

// readConsistent reads every file of one version, the way a careful reader
// does: resolve ..data once, read through it, and retry if it moved.
func readConsistent(target string) map[string]string {
	for {
		before, err := os.Readlink(filepath.Join(target, "..data"))
		if err != nil {
			files, err := readTree(target, target) // the plain layout
			if err != nil {
				return map[string]string{} // no target: templates only
			}
			return files
		}
		// Subdirectories of a version are symlinks to shared directory objects: followed, and
		// so are the buckets of a wide top level.
		files, _, err := versionFiles(filepath.Join(target, before))
		after, _ := os.Readlink(filepath.Join(target, "..data"))
		if err == nil && after == before {
			return files
		}
	}
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// lines returns the dispenser's log lines that contain all the words.
func (s *syncBuffer) lines(words ...string) []string {
	var out []string
	sc := bufio.NewScanner(strings.NewReader(s.String()))
	for sc.Scan() {
		ok := true
		for _, w := range words {
			ok = ok && strings.Contains(sc.Text(), w)
		}
		if ok {
			out = append(out, sc.Text())
		}
	}
	return out
}
