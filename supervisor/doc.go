// Package supervisor is the init half of the dispenser: it starts the child program, forwards
// signals to it, reaps every zombie, delivers the reload signal, and turns the child's end into
// the dispenser's exit code. It knows nothing about etcd or files.
//
// The rules of a correct PID 1, each one a function and a test (tests in rules_test.go,
// terminal_test.go and supervisor_test.go):
//
//   - Reap everything. One goroutine waits with wait4(-1, WNOHANG) on every SIGCHLD, so
//     orphans reparented to us never stay zombies. When we are not PID 1 we become a child
//     subreaper, so orphans come to us anyway. Nothing else in the process may wait for
//     children while a Supervisor exists: run helper commands with Supervisor.Run, not os/exec.
//   - Forward every catchable signal to the child: HUP, INT, QUIT, TRAP, ABRT, USR1, USR2,
//     ALRM, TERM, STKFLT, CONT, TSTP, XCPU, XFSZ, VTALRM, WINCH, IO, PWR, SYS and the realtime
//     signals 34 to 64 (SIGRTMIN to SIGRTMAX for glibc programs), each queued realtime signal
//     once (counted.go). Not forwarded: KILL and STOP (cannot be caught), CHLD (ours), URG and
//     PROF (the Go runtime's), 32 and 33 (the C library's threads; caught so they cannot end
//     us), PIPE (the kernel raises it on our own writes to a broken connection), TTIN and TTOU
//     (ignored for ourselves, see terminal.go), SEGV, BUS, FPE, ILL (ignored when another
//     process sends them; a real fault of ours still crashes). Options.Rewrite changes or
//     drops a signal on the way.
//   - A SIGTERM forwarded to the child is followed by SIGCONT, so a stopped child sees it.
//     With a KillTimeout, a forwarded SIGTERM or SIGINT starts a countdown, and a child still
//     running at its end is SIGKILLed; without one (the default) whoever sent the signal
//     decides when to kill. SIGTERM, SIGINT or SIGQUIT arriving while no child runs is handed
//     to main on Terminated instead.
//   - Signal only our own descendants: the child (or, with ProcessGroup, the child's own
//     process group), and at shutdown the processes below us in /proc. Never pid 0 or -1,
//     never our own process group, never a pid after it has been reaped.
//   - Shut down in order: SIGTERM the child, SIGKILL it after KillTimeout, then SIGTERM the
//     leftover descendants, SIGKILL them at the end of the same grace period, reap them all.
//   - Hand the child the signal state we were started with: the launcher's ignored signals
//     stay ignored (those the Go runtime lets us see), its blocked mask stays blocked
//     (dispositions.go).
//   - On a terminal, the child gets its own foreground process group; its ^Z stops us too,
//     and fg continues both (terminal.go). No log line is written while holding the lock the
//     reaper needs.
//   - Start what execvp starts: a file without "#!" runs with /bin/sh (spawn.go).
//
// Exit codes (the shell and tini convention):
//
//	child exited with code N          N
//	child killed by signal N          128+N (SIGKILL: 137, SIGTERM: 143)
//	one of Options.SuccessCodes       0
//	no child was started              0
//	command not found                 127 (StartError.Code)
//	command found but not executable  126 (StartError.Code)
package supervisor
