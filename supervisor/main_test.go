package supervisor

// The test binary plays every process of the story: the test itself, the init (a tiny main that
// uses the Supervisor as the dispenser does), and the children and grandchildren it supervises.
// Which one it is depends on SUPERVISOR_TEST_INIT and SUPERVISOR_TEST_CHILD.

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

const (
	envInit             = "SUPERVISOR_TEST_INIT"              // "1": be the init; "no-child": wait for Terminated; "run": Run the command; "output": Output
	envChild            = "SUPERVISOR_TEST_CHILD"             // role of a child, see runChild
	envName             = "SUPERVISOR_TEST_NAME"              // prefix of a child's report lines
	envKillTimeout      = "SUPERVISOR_TEST_KILL_TIMEOUT"      // Options.KillTimeout
	envProcessGroup     = "SUPERVISOR_TEST_PROCESS_GROUP"     // Options.ProcessGroup
	envMountProc        = "SUPERVISOR_TEST_MOUNT_PROC"        // mount our own /proc (new pid+mount namespace)
	envSignalAfterExit  = "SUPERVISOR_TEST_SIGNAL_AFTER_EXIT" // call Signal once Done, report the error
	envReadyFD          = "SUPERVISOR_TEST_READY_FD"          // write one byte there once signals are trapped
	envRunTimeout       = "SUPERVISOR_TEST_RUN_TIMEOUT"       // with mode "run": context timeout
	envRestartOnUSR2    = "SUPERVISOR_TEST_RESTART_ON_USR2"   // Restart the child at each SIGUSR2, report "init restarted ERR"
	envRewrite          = "SUPERVISOR_TEST_REWRITE"           // Options.Rewrite: "FROM:TO,FROM:TO" in numbers
	envSuccessCodes     = "SUPERVISOR_TEST_SUCCESS_CODES"     // Options.SuccessCodes: "N,N"
	envParentDeath      = "SUPERVISOR_TEST_PARENT_DEATH"      // Options.ParentDeathSignal, a number
	trapTermExitCode    = 42
	leftoverExitCode    = 4
	signalAfterExitCode = 3
)

func TestMain(m *testing.M) {
	if mode := os.Getenv(envInit); mode != "" {
		os.Exit(runInit(mode))
	}
	if role := os.Getenv(envChild); role != "" {
		os.Exit(runChild(role))
	}
	os.Exit(m.Run())
}

// runInit is what main.go does, reduced to the supervisor: New, Start, wait, Shutdown. It then
// checks that nothing is left below it, which Shutdown promises.
func runInit(mode string) int {
	if os.Getenv(envMountProc) != "" {
		if err := mountOwnProc(); err != nil {
			fmt.Fprintln(os.Stderr, "init:", err)
			return 2
		}
	}
	timeout, _ := time.ParseDuration(os.Getenv(envKillTimeout))
	opts := Options{
		KillTimeout:  timeout,
		ProcessGroup: os.Getenv(envProcessGroup) != "",
		Logger:       slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug})),
		Rewrite:      map[syscall.Signal]syscall.Signal{},
	}
	for _, pair := range strings.FieldsFunc(os.Getenv(envRewrite), func(r rune) bool { return r == ',' }) {
		from, to, _ := strings.Cut(pair, ":")
		f, _ := strconv.Atoi(from)
		t, _ := strconv.Atoi(to)
		opts.Rewrite[syscall.Signal(f)] = syscall.Signal(t)
	}
	for _, c := range strings.FieldsFunc(os.Getenv(envSuccessCodes), func(r rune) bool { return r == ',' }) {
		n, _ := strconv.Atoi(c)
		opts.SuccessCodes = append(opts.SuccessCodes, n)
	}
	if n, err := strconv.Atoi(os.Getenv(envParentDeath)); err == nil {
		opts.ParentDeathSignal = syscall.Signal(n)
	}
	s, err := New(opts)
	if err != nil {
		fmt.Fprintln(os.Stderr, "init:", err)
		return 2
	}
	if mode == "fault" {
		var p *int
		*p = 1 // a real SIGSEGV of our own
	}
	if mode == "no-child" {
		fmt.Println("init ready")
		fmt.Println("init terminated", signalName((<-s.Terminated()).(syscall.Signal)))
		return s.Shutdown()
	}
	if mode == "run" {
		ctx := context.Background()
		if d, err := time.ParseDuration(os.Getenv(envRunTimeout)); err == nil {
			var cancel context.CancelFunc
			ctx, cancel = context.WithTimeout(ctx, d)
			defer cancel()
		}
		code, err := s.Run(ctx, argsAfterDash(), withoutVar(os.Environ(), envInit))
		fmt.Println("run exit", code, err)
		return s.Shutdown()
	}
	if mode == "output" {
		code, out, err := s.Output(context.Background(), argsAfterDash(), withoutVar(os.Environ(), envInit))
		fmt.Printf("output exit %d %q %v\n", code, out, err)
		return s.Shutdown()
	}
	if err := s.Start(argsAfterDash(), withoutVar(os.Environ(), envInit)); err != nil {
		fmt.Fprintln(os.Stderr, err)
		var se *StartError
		if errors.As(err, &se) {
			return se.Code
		}
		return 2
	}
	if os.Getenv(envRestartOnUSR2) != "" {
		usr2 := make(chan os.Signal, 1)
		signal.Notify(usr2, syscall.SIGUSR2)
		go func() {
			for range usr2 {
				fmt.Println("init restarted", s.Restart(argsAfterDash(), withoutVar(os.Environ(), envInit)))
			}
		}()
	}
	<-s.Done()
	if os.Getenv(envSignalAfterExit) != "" {
		err := s.Signal(syscall.SIGHUP)
		fmt.Fprintln(os.Stderr, "init: signal after exit:", err)
		if !errors.Is(err, ErrNotRunning) {
			return signalAfterExitCode
		}
	}
	code := s.Shutdown()
	if left := descendants(); len(left) > 0 {
		fmt.Fprintf(os.Stderr, "init: leftover processes after Shutdown: %v\n", left)
		return leftoverExitCode
	}
	return code
}

// mountOwnProc gives a PID 1 in a new pid and mount namespace the /proc a container runtime
// would give it.
func mountOwnProc() error {
	if err := syscall.Mount("", "/", "", syscall.MS_REC|syscall.MS_PRIVATE, ""); err != nil {
		return fmt.Errorf("making / private: %w", err)
	}
	if err := syscall.Mount("proc", "/proc", "proc", 0, ""); err != nil {
		return fmt.Errorf("mounting /proc: %w", err)
	}
	return nil
}

func argsAfterDash() []string {
	for i, a := range os.Args {
		if a == "--" {
			return os.Args[i+1:]
		}
	}
	return nil
}

func withoutVar(env []string, name string) []string {
	var out []string
	for _, kv := range env {
		if !strings.HasPrefix(kv, name+"=") {
			out = append(out, kv)
		}
	}
	return out
}

// runChild plays a supervised program. Roles:
//
//	exit:N          exit with code N
//	kill-self:N     die by signal N
//	trap            report each forwardable signal (and SIGPIPE) on stdout as "NAME SIGxxx";
//	                exit 42 on SIGTERM
//	ignore-term     like trap, but never exit
//	spawn:ROLE      start a "grandchild" with ROLE, wait until it traps signals, then exit 0
//	spawn-trap:ROLE start a "grandchild" with ROLE, wait until it traps signals, then be trap
func runChild(role string) int {
	name := os.Getenv(envName)
	if name == "" {
		name = "child"
	}
	verb, arg, _ := strings.Cut(role, ":")
	switch verb {
	case "exit":
		n, _ := strconv.Atoi(arg)
		return n
	case "kill-self":
		n, _ := strconv.Atoi(arg)
		syscall.Kill(os.Getpid(), syscall.Signal(n))
		select {}
	case "trap":
		return trap(name, true)
	case "ignore-term":
		return trap(name, false)
	case "spawn":
		spawnGrandchild(arg)
		return 0
	case "spawn-trap":
		spawnGrandchild(arg)
		return trap(name, true)
	}
	fmt.Fprintln(os.Stderr, "unknown role", role)
	return 2
}

// trap reports signals until SIGTERM (exitOnTerm) or forever.
func trap(name string, exitOnTerm bool) int {
	c := make(chan os.Signal, 100)
	signal.Notify(c, notified(nil)...)
	if err := countSignals(counted(), c); err != nil { // realtime signals one by one, 32 to 34 too
		panic(err)
	}
	fmt.Printf("%s ready %d\n", name, os.Getpid())
	if fd, err := strconv.Atoi(os.Getenv(envReadyFD)); err == nil {
		os.NewFile(uintptr(fd), "ready").Write([]byte{1})
	}
	for sig := range c {
		fmt.Printf("%s %s\n", name, signalName(sig.(syscall.Signal)))
		if sig == syscall.SIGTERM && exitOnTerm {
			return trapTermExitCode
		}
	}
	return 0
}

// spawnGrandchild starts the test binary with role, and returns once it traps signals. It is
// never waited for: it becomes an orphan when we exit.
func spawnGrandchild(role string) {
	r, w, err := os.Pipe()
	if err != nil {
		panic(err)
	}
	env := append(withoutVar(withoutVar(os.Environ(), envChild), envName),
		envChild+"="+role, envName+"=grandchild", envReadyFD+"=3")
	if _, err := os.StartProcess("/proc/self/exe", []string{os.Args[0]}, &os.ProcAttr{
		Env:   env,
		Files: []*os.File{os.Stdin, os.Stdout, os.Stderr, w},
	}); err != nil {
		panic(err)
	}
	w.Close()
	if _, err := r.Read(make([]byte, 1)); err != nil {
		panic(fmt.Sprint("grandchild never got ready: ", err))
	}
}
