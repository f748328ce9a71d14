package supervisor

import (
	"context"
	"errors"
	"io"
	"os"
	"syscall"
	"time"
)

// Run runs a helper command (a check command like `nginx -t`, a reload command) to its end and
// returns its exit code, 128+N if killed by signal N. Its stdin is /dev/null, its stdout and
// stderr are ours. It is what to use instead of os/exec while a Supervisor exists: the reaper
// would take the exit status away from exec.Cmd.Wait. When ctx ends first, the command is
// killed and Run returns ctx's error.
func (s *Supervisor) Run(ctx context.Context, argv []string, env []string) (int, error) {
	return s.run(ctx, argv, env, nil)
}

// Output is Run with the command's stdout and stderr captured together, for a caller that logs
// them (a failed check command's complaint). At most maxOutput bytes are kept.
func (s *Supervisor) Output(ctx context.Context, argv []string, env []string) (int, []byte, error) {
	r, w, err := os.Pipe()
	if err != nil {
		return CodeNotExecutable, nil, err
	}
	defer r.Close()
	read := make(chan []byte, 1)
	go func() {
		b, _ := io.ReadAll(io.LimitReader(r, maxOutput))
		_, _ = io.Copy(io.Discard, r) // a chatty command must not block on a full pipe
		read <- b
	}()
	code, err := s.run(ctx, argv, env, w)
	w.Close()
	// Descendants of the command may keep the pipe open; do not wait for them.
	select {
	case b := <-read:
		return code, b, err
	case <-time.After(time.Second):
		return code, nil, err
	}
}

// maxOutput bounds what Output keeps of a command's output.
const maxOutput = 64 << 10

func (s *Supervisor) run(ctx context.Context, argv []string, env []string, out *os.File) (int, error) {
	if len(argv) == 0 {
		return CodeNotFound, &StartError{Code: CodeNotFound, Reason: "no command given"}
	}
	path, err := lookPath(argv[0], pathOf(env))
	if err != nil {
		return err.(*StartError).Code, err
	}
	pid, status, serr := s.startHelper(path, argv, env, out)
	if serr != nil {
		return serr.Code, serr
	}
	select {
	case ws := <-status:
		return exitCode(ws), nil
	case <-ctx.Done():
		s.killHelper(pid)
		return exitCode(<-status), ctx.Err()
	}
}

// startHelper forks the command and registers it with the reaper, under mu so the reaper
// cannot see it exit before it is registered. Its stdout and stderr go to out, or to ours if
// out is nil.
func (s *Supervisor) startHelper(path string, argv, env []string, out *os.File) (int, chan syscall.WaitStatus, *StartError) {
	devnull, err := os.Open(os.DevNull)
	if err != nil {
		return 0, nil, &StartError{Name: argv[0], Code: CodeNotExecutable, Reason: err.Error(), Err: err}
	}
	defer devnull.Close()
	files := []uintptr{devnull.Fd(), 1, 2}
	if out != nil {
		files[1], files[2] = out.Fd(), out.Fd()
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	pid, err := s.spawn(path, argv, &syscall.ProcAttr{
		Env:   env,
		Files: files,
	})
	if err != nil {
		return 0, nil, execError(argv[0], err)
	}
	status := make(chan syscall.WaitStatus, 1)
	s.helpers[pid] = status
	return pid, status, nil
}

// killHelper SIGKILLs a helper that has not been reaped yet.
func (s *Supervisor) killHelper(pid int) {
	s.mu.Lock()
	var err error
	if _, running := s.helpers[pid]; running && safeTarget(pid) {
		err = syscall.Kill(pid, syscall.SIGKILL)
	}
	s.mu.Unlock()
	if err != nil && !errors.Is(err, syscall.ESRCH) {
		s.log.Warn("killing helper command failed", "pid", pid, "error", err)
	}
}
