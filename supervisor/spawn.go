package supervisor

import (
	"errors"
	"syscall"
)

// shell runs the files the kernel cannot execute, as execvp does.
const shell = "/bin/sh"

// spawn forks and executes path with argv, by execvp's rule: a file the kernel refuses with
// ENOEXEC (a script without "#!") is run as `/bin/sh path args…`. When /bin/sh is missing
// too, the original ENOEXEC is the answer.
//
// Callers hold mu, which also keeps the signal dispositions of one fork from mixing with another's.
func (s *Supervisor) spawn(path string, argv []string, attr *syscall.ProcAttr) (int, error) {
	defer s.launcherTerminalStops()()
	pid, err := syscall.ForkExec(path, argv, attr)
	if !errors.Is(err, syscall.ENOEXEC) {
		return pid, err
	}
	shArgv := append([]string{shell, path}, argv[1:]...)
	if pid, shErr := syscall.ForkExec(shell, shArgv, attr); shErr == nil {
		return pid, nil
	}
	return 0, err
}
