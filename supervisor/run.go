package supervisor

import (
	"context"
	"errors"
	"os"
	"syscall"
)

// Run runs a helper command (a check command like `nginx -t`, a reload command) to its end and
// returns its exit code, 128+N if killed by signal N. Its stdin is /dev/null, its stdout and
// stderr are ours. It is what to use instead of os/exec while a Supervisor exists: the reaper
// would take the exit status away from exec.Cmd.Wait. When ctx ends first, the command is
// killed and Run returns ctx's error.
func (s *Supervisor) Run(ctx context.Context, argv []string, env []string) (int, error) {
	if len(argv) == 0 {
		return CodeNotFound, &StartError{Code: CodeNotFound, Reason: "no command given"}
	}
	path, err := lookPath(argv[0], pathOf(env))
	if err != nil {
		return err.(*StartError).Code, err
	}
	pid, status, serr := s.startHelper(path, argv, env)
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
// cannot see it exit before it is registered.
func (s *Supervisor) startHelper(path string, argv, env []string) (int, chan syscall.WaitStatus, *StartError) {
	devnull, err := os.Open(os.DevNull)
	if err != nil {
		return 0, nil, &StartError{Name: argv[0], Code: CodeNotExecutable, Reason: err.Error(), Err: err}
	}
	defer devnull.Close()
	s.mu.Lock()
	defer s.mu.Unlock()
	pid, err := syscall.ForkExec(path, argv, &syscall.ProcAttr{
		Env:   env,
		Files: []uintptr{devnull.Fd(), 1, 2},
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
	defer s.mu.Unlock()
	if _, running := s.helpers[pid]; running && safeTarget(pid) {
		if err := syscall.Kill(pid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
			s.log.Warn("killing helper command failed", "pid", pid, "error", err)
		}
	}
}
