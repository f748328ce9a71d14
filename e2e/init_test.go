package e2e

// The init rules that depend on how the binary is built: the release binary is static
// (CGO_ENABLED=0), where the Go runtime leaves signals 32 to 34 to a C library that is not
// there, and merges repeated signals in os/signal. These tests build it that way.

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/etcd-config-dispenser/etcd-config-dispenser/internal/etcdtest"
)

// envInitChild makes the test binary a child for these tests (see init below).
const envInitChild = "E2E_INIT_CHILD"

// sigRTMIN6 is SIGRTMIN+6 as glibc programs number it.
const sigRTMIN6 = syscall.Signal(40)

func init() {
	if os.Getenv(envInitChild) == "count-rt" {
		os.Exit(countRealtime())
	}
}

// countRealtime prints "rt N" for each SIGRTMIN+6 it receives. It was started with that signal
// blocked (the launcher's mask, which the dispenser passes on), so every queued one waits in
// the kernel, and a signalfd takes them one by one.
func countRealtime() int {
	var set unix.Sigset_t
	set.Val[(sigRTMIN6-1)/64] |= 1 << ((sigRTMIN6 - 1) % 64)
	fd, err := unix.Signalfd(-1, &set, unix.SFD_CLOEXEC)
	if err != nil {
		fmt.Println("signalfd:", err)
		return 1
	}
	fmt.Println("counter ready")
	info := make([]byte, 128) // struct signalfd_siginfo
	for n := 1; ; n++ {
		if _, err := unix.Read(fd, info); err != nil {
			fmt.Println("read:", err)
			return 1
		}
		fmt.Println("rt", n)
	}
}

// staticDir holds the static binary once built; TestMain removes it.
var staticDir string

var staticBinary = sync.OnceValues(func() (string, error) {
	dir, err := os.MkdirTemp("", "e2e-static-")
	if err != nil {
		return "", err
	}
	staticDir = dir
	bin := filepath.Join(dir, "etcd-config-dispenser")
	build := exec.Command("go", "build", "-o", bin, "github.com/etcd-config-dispenser/etcd-config-dispenser")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		return "", fmt.Errorf("building the static binary: %v\n%s", err, out)
	}
	return bin, nil
})

// staticRun is one run of the static binary, its output read line by line.
type staticRun struct {
	cmd   *exec.Cmd
	lines chan string
	done  chan struct{}
}

// startStatic starts the static binary mirroring /p with argv as its child, with the signals
// in blocked blocked in its mask as a launcher may have them.
func startStatic(t *testing.T, e *etcdtest.Server, blocked []syscall.Signal, env, flags []string, argv ...string) *staticRun {
	t.Helper()
	bin, err := staticBinary()
	if err != nil {
		t.Fatal(err)
	}
	args := append([]string{"--prefix=/p", "--target=" + filepath.Join(t.TempDir(), "config")}, flags...)
	cmd := exec.Command(bin, append(append(args, "--"), argv...)...)
	cmd.Env = append(append(os.Environ(), "ETCD_ENDPOINTS="+e.Endpoint()), env...)
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = w, w
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := startWithBlocked(cmd, blocked); err != nil {
		t.Fatal(err)
	}
	w.Close()
	s := &staticRun{cmd: cmd, lines: make(chan string, 1000), done: make(chan struct{})}
	var log strings.Builder
	var mu sync.Mutex
	go func() {
		sc := bufio.NewScanner(r)
		for sc.Scan() {
			mu.Lock()
			log.WriteString(sc.Text() + "\n")
			mu.Unlock()
			s.lines <- sc.Text()
		}
	}()
	go func() { cmd.Wait(); close(s.done) }()
	t.Cleanup(func() {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-s.done
		r.Close()
		if t.Failed() {
			mu.Lock()
			t.Logf("output:\n%s", log.String())
			mu.Unlock()
		}
	})
	return s
}

// startWithBlocked starts cmd from a thread with sigs blocked: the child inherits that mask.
func startWithBlocked(cmd *exec.Cmd, sigs []syscall.Signal) error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	var set, old unix.Sigset_t
	for _, sig := range sigs {
		set.Val[(sig-1)/64] |= 1 << ((sig - 1) % 64)
	}
	if err := unix.PthreadSigmask(unix.SIG_BLOCK, &set, &old); err != nil {
		return err
	}
	defer unix.PthreadSigmask(unix.SIG_SETMASK, &old, nil)
	return cmd.Start()
}

// expect waits for a line containing want.
func (s *staticRun) expect(t *testing.T, want string) {
	t.Helper()
	timeout := time.After(30 * time.Second)
	for {
		select {
		case line := <-s.lines:
			if strings.Contains(line, want) {
				return
			}
		case <-timeout:
			t.Fatalf("no line with %q within 30s", want)
		}
	}
}

func (s *staticRun) exitCode(t *testing.T) int {
	t.Helper()
	select {
	case <-s.done:
		return s.cmd.ProcessState.ExitCode()
	case <-time.After(30 * time.Second):
		t.Fatal("the dispenser still runs after 30s")
		return -1
	}
}

// 50 queued SIGRTMIN+6 reach the child 50 times, as with the C inits.
func TestStaticBinaryForwardsEveryQueuedRealtimeSignal(t *testing.T) {
	e := etcdtest.Start(t)
	txn(t, e.Client(), "/p/a", "1")
	s := startStatic(t, e, []syscall.Signal{sigRTMIN6}, []string{envInitChild + "=count-rt"}, nil, os.Args[0], "-test.run=^$")
	s.expect(t, "counter ready")
	for range 50 {
		syscall.Kill(s.cmd.Process.Pid, sigRTMIN6)
	}
	s.expect(t, "rt 50")
	syscall.Kill(s.cmd.Process.Pid, syscall.SIGTERM)
	if code := s.exitCode(t); code != 128+int(syscall.SIGTERM) {
		t.Errorf("exit code %d, want 143 (the counter killed by the forwarded SIGTERM)", code)
	}
}

// Signals 32 to 34 do not end the static binary (not PID 1, so the kernel does not shield
// it), and 34, SIGRTMIN of glibc programs, is forwarded.
func TestStaticBinarySurvivesSignals32To34(t *testing.T) {
	e := etcdtest.Start(t)
	txn(t, e.Client(), "/p/a", "1")
	s := startStatic(t, e, nil, nil, nil, "/bin/bash", "-c",
		`trap "echo got SIGRTMIN" 34; echo ready; while :; do sleep 0.1 & wait $!; done`)
	s.expect(t, "ready")
	for _, sig := range []syscall.Signal{32, 33, 34} {
		syscall.Kill(s.cmd.Process.Pid, sig)
	}
	s.expect(t, "got SIGRTMIN")
	syscall.Kill(s.cmd.Process.Pid, syscall.SIGTERM)
	if code := s.exitCode(t); code != 128+int(syscall.SIGTERM) {
		t.Errorf("exit code %d, want 143 (bash killed by the forwarded SIGTERM)", code)
	}
}

// --remap-exit turns the child's 143 into 0; --rewrite-signal gives it QUIT for TERM.
func TestStaticBinaryRewriteSignalAndRemapExit(t *testing.T) {
	e := etcdtest.Start(t)
	txn(t, e.Client(), "/p/a", "1")
	s := startStatic(t, e, nil, nil, []string{"--rewrite-signal=TERM:QUIT", "--remap-exit=143"}, "/bin/bash", "-c",
		`trap "echo got QUIT; exit 143" QUIT; echo ready; while :; do sleep 0.1 & wait $!; done`)
	s.expect(t, "ready")
	syscall.Kill(s.cmd.Process.Pid, syscall.SIGTERM)
	s.expect(t, "got QUIT")
	if code := s.exitCode(t); code != 0 {
		t.Errorf("exit code %d, want 0 (143 remapped)", code)
	}
}
