package supervisor

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
)

// Exit codes of a command that could not be started, as a POSIX shell reports them.
const (
	CodeNotExecutable = 126 // found, but could not be executed (permission, directory, bad interpreter)
	CodeNotFound      = 127 // not found
)

// defaultPath is searched when the child's environment has no PATH (a FROM scratch image).
const defaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// StartError says why the child could not be started, and which exit code to use for it.
type StartError struct {
	Name   string // the command as given, argv[0]
	Code   int    // CodeNotFound or CodeNotExecutable
	Reason string // "command not found", "permission denied", …
	Err    error  // the underlying error, if any
}

// Error reads like a shell's: "etcd-config-dispenser: nginx: command not found".
func (e *StartError) Error() string {
	return "etcd-config-dispenser: " + e.Name + ": " + e.Reason
}

func (e *StartError) Unwrap() error { return e.Err }

// Start starts the child with argv and exactly the environment env, with our stdin, stdout and
// stderr (and so the TTY). The command is searched in env's PATH like a shell does. It is
// started with fork and exec, not os/exec, because the reaper must be the only one to wait.
func (s *Supervisor) Start(argv []string, env []string) error {
	if len(argv) == 0 {
		return &StartError{Code: CodeNotFound, Reason: "no command given"}
	}
	path, err := lookPath(argv[0], pathOf(env))
	if err != nil {
		return err
	}
	s.mu.Lock() // held until pid is recorded, so the reaper recognises the child
	if s.pid != 0 {
		s.mu.Unlock()
		return errors.New("supervisor: child already started")
	}
	s.terminal = ownsTerminal() // decided once: a restarted child takes the terminal back
	err = s.fork(path, argv, env)
	pid := s.pid
	s.mu.Unlock()
	if err == nil {
		s.logStarted(pid, argv)
	}
	return err
}

// logStarted logs the start of the child. Never under mu: a log line on a terminal can block
// (flow control, a full pty), and the reaper must not wait for it.
func (s *Supervisor) logStarted(pid int, argv []string) {
	s.log.Info("child started", "pid", pid, "command", argv[0], "process_group", s.processGroup)
}

// fork starts the child from the path lookPath found; mu is held.
func (s *Supervisor) fork(path string, argv, env []string) error {
	pid, err := s.spawn(path, argv, &syscall.ProcAttr{
		Env:   env,
		Files: []uintptr{0, 1, 2},
		Sys:   s.sysProcAttr(),
	})
	if err != nil {
		return execError(argv[0], err)
	}
	s.pid = pid
	return nil
}

// sysProcAttr puts the child in its own process group with Options.ProcessGroup or when we own
// the terminal, and then gives that group the terminal (see terminal.go).
func (s *Supervisor) sysProcAttr() *syscall.SysProcAttr {
	if !s.processGroup && !s.terminal {
		return nil
	}
	return &syscall.SysProcAttr{Setpgid: true, Foreground: s.terminal, Ctty: 0}
}

// pathOf returns the PATH the child will see.
func pathOf(env []string) string {
	for i := len(env) - 1; i >= 0; i-- {
		if v, ok := strings.CutPrefix(env[i], "PATH="); ok {
			return v
		}
	}
	return defaultPath
}

// lookPath finds name like a shell: a name with a slash is used as is, others are searched in
// path. A file found but not executable is reported as such (126), not as missing (127).
func lookPath(name, path string) (string, error) {
	if name == "" {
		return "", &StartError{Name: name, Code: CodeNotFound, Reason: "command not found"}
	}
	if strings.Contains(name, "/") {
		if err := executable(name); err != nil {
			return "", startError(name, err)
		}
		return name, nil
	}
	var denied error
	for _, dir := range filepath.SplitList(path) {
		if dir == "" {
			dir = "."
		}
		candidate := filepath.Join(dir, name)
		err := executable(candidate)
		if err == nil {
			return candidate, nil
		}
		if denied == nil && !errors.Is(err, os.ErrNotExist) {
			denied = err
		}
	}
	if denied != nil {
		return "", startError(name, denied)
	}
	return "", &StartError{Name: name, Code: CodeNotFound, Reason: "command not found", Err: os.ErrNotExist}
}

// executable checks that file is a regular file with an execute bit.
func executable(file string) error {
	fi, err := os.Stat(file)
	switch {
	case err != nil:
		return err
	case fi.IsDir():
		return syscall.EISDIR
	case fi.Mode()&0o111 == 0:
		return syscall.EACCES
	}
	return nil
}

// startError turns a lookup error into a StartError with the shell's code and wording.
func startError(name string, err error) *StartError {
	if errors.Is(err, os.ErrNotExist) {
		return &StartError{Name: name, Code: CodeNotFound, Reason: "no such file or directory", Err: err}
	}
	return &StartError{Name: name, Code: CodeNotExecutable, Reason: errnoText(err), Err: err}
}

// execError turns an execve failure of a file we found into a StartError. ENOENT here means
// the interpreter or dynamic loader named by the file is missing.
func execError(name string, err error) *StartError {
	reason := errnoText(err)
	switch {
	case errors.Is(err, syscall.ENOENT):
		reason = "cannot execute: required file not found"
	case errors.Is(err, syscall.ENOEXEC):
		reason = "cannot execute binary file: exec format error"
	}
	return &StartError{Name: name, Code: CodeNotExecutable, Reason: reason, Err: err}
}

// errnoText is the errno's text ("permission denied") without any path around it.
func errnoText(err error) string {
	var errno syscall.Errno
	if errors.As(err, &errno) {
		return errno.Error()
	}
	return err.Error()
}
