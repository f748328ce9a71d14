package supervisor

import (
	"os"
	"os/signal"
	"runtime"
	"sync/atomic"
	"syscall"

	"golang.org/x/sys/unix"
)

// Counted signals are received one by one, which os/signal cannot do: it keeps one pending
// bit per signal, so 50 queued SIGRTMIN+6 reach its channel once or a few times, and it never
// sees 32 to 34 at all (the Go runtime leaves them to the C library, and without one their
// default action ends the process). The kernel queues every realtime signal and calls the
// handler once per queued signal, so a handler that only counts sees each of them: counts
// and the wake pipe are its whole state.
var (
	counts   [lastSignal + 1]uint32
	wakeFD   int32
	wakeByte byte = 1
)

// counter delivers the counted signals to out, each as many times as it arrived.
type counter struct {
	wake *os.File
}

// countSignals installs the counting handler for sigs and starts delivering them to out. On
// architectures without the handler it falls back to os/signal for sigs that os/signal can
// catch and ignores the others, so that none of them ends the process.
func countSignals(sigs []syscall.Signal, out chan<- os.Signal) error {
	if !countingSupported {
		for _, sig := range sigs {
			if sig < firstRealtime {
				signal.Ignore(sig) // not reachable by os/signal: at least do not die
				if _, err := sigaction(sig, &kernelSigaction{handler: sigIgn}); err != nil {
					return os.NewSyscallError("rt_sigaction", err)
				}
				continue
			}
			signal.Notify(out, sig)
		}
		return nil
	}
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_NONBLOCK|unix.O_CLOEXEC); err != nil {
		return os.NewSyscallError("pipe2", err)
	}
	atomic.StoreInt32(&wakeFD, int32(p[1]))
	act := kernelSigaction{
		handler:  countSignalPC(),
		flags:    saOnstack | saRestart | saRestorer,
		restorer: returnFromSignalPC(),
		mask:     maskAllBits, // no nesting: one handler at a time per thread
	}
	for _, sig := range sigs {
		if _, err := sigaction(sig, &act); err != nil {
			return os.NewSyscallError("rt_sigaction", err)
		}
	}
	c := &counter{wake: os.NewFile(uintptr(p[0]), "signal wake pipe")}
	unblocked := make(chan error)
	go c.run(out, sigs, unblocked)
	return <-unblocked
}

// run waits for the handler's wake bytes and hands each counted signal on, once per arrival.
// Its thread is the one that takes them: the launcher may have blocked them, and every other
// thread of the Go runtime keeps the launcher's mask (which the child must get), as os/signal
// does with its own thread for the signals it catches.
func (c *counter) run(out chan<- os.Signal, sigs []syscall.Signal, unblocked chan<- error) {
	runtime.LockOSThread() // for good: this thread keeps the signals unblocked
	var set unix.Sigset_t
	for _, sig := range sigs {
		set.Val[(sig-1)/64] |= 1 << ((sig - 1) % 64)
	}
	err := unix.PthreadSigmask(unix.SIG_UNBLOCK, &set, nil)
	unblocked <- err
	if err != nil {
		return
	}
	buf := make([]byte, 128)
	for {
		if _, err := c.wake.Read(buf); err != nil {
			return
		}
		for sig := range counts {
			for n := atomic.SwapUint32(&counts[sig], 0); n > 0; n-- {
				out <- syscall.Signal(sig)
			}
		}
	}
}
