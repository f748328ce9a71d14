// Package supervisor is the init half of the dispenser: it starts the child program, forwards
// signals to it, reaps every zombie, delivers the reload signal, and turns the child's end into
// the dispenser's exit code. It knows nothing about etcd or files.
//
// The rules of a correct PID 1, each one a function and a test:
//
//   - Reap everything. One goroutine waits with wait4(-1, WNOHANG) on every SIGCHLD, so
//     orphans reparented to us never stay zombies. When we are not PID 1 we become a child
//     subreaper, so orphans come to us anyway. Nothing else in the process may wait for
//     children while a Supervisor exists: run helper commands with Supervisor.Run, not os/exec.
//   - Forward every catchable signal to the child: HUP, INT, QUIT, TRAP, ABRT, USR1, USR2,
//     ALRM, TERM, STKFLT, CONT, TSTP, TTIN, TTOU, XCPU, XFSZ, VTALRM, WINCH, IO, PWR, SYS
//     and the realtime signals 35 to 64 (SIGRTMIN+1 to SIGRTMAX for glibc programs).
//     Not forwarded: KILL and STOP (cannot be caught), CHLD (ours), URG (the Go runtime
//     preempts goroutines with it), PROF and 32 to 34 (the Go runtime keeps them; they never
//     reach signal.Notify), PIPE (the kernel raises it on our own writes to a broken
//     connection), SEGV, BUS, FPE, ILL (our own faults).
//   - A SIGTERM or SIGINT forwarded to the child starts a countdown of KillTimeout; a child
//     still running at its end is SIGKILLed. SIGTERM, SIGINT or SIGQUIT arriving while no
//     child runs is handed to main on Terminated instead.
//   - Signal only our own descendants: the child (or, with ProcessGroup, the child's own
//     process group), and at shutdown the processes below us in /proc. Never pid 0 or -1,
//     never our own process group, never a pid after it has been reaped.
//   - Shut down in order: SIGTERM the child, SIGKILL it after KillTimeout, then SIGTERM the
//     leftover descendants, SIGKILL them at the end of the same grace period, reap them all.
//
// Exit codes (the shell and tini convention):
//
//	child exited with code N          N
//	child killed by signal N          128+N (SIGKILL: 137, SIGTERM: 143)
//	no child was started              0
//	command not found                 127 (StartError.Code)
//	command found but not executable  126 (StartError.Code)
package supervisor
