#include "textflag.h"

// countSignal is the signal handler of the counted signals (see counted.go). The kernel calls
// it with the signal number in DI, on the thread's alternate signal stack. It adds one to
// counts[sig] and writes one byte to the non-blocking wake pipe: two async-signal-safe steps,
// no Go runtime. No register needs saving: rt_sigreturn restores the interrupted context.
TEXT ·countSignal(SB),NOSPLIT|NOFRAME,$0
	CMPQ	DI, $64
	JHI	done
	LEAQ	·counts(SB), AX
	LOCK
	INCL	(AX)(DI*4)
	MOVL	·wakeFD(SB), DI
	LEAQ	·wakeByte(SB), SI
	MOVL	$1, DX
	MOVL	$1, AX // SYS_write
	SYSCALL
done:
	RET

// returnFromSignal is the handler's sa_restorer.
TEXT ·returnFromSignal(SB),NOSPLIT|NOFRAME,$0
	MOVL	$15, AX // SYS_rt_sigreturn
	SYSCALL
	INT	$3

// func countSignalPC() uintptr
TEXT ·countSignalPC(SB),NOSPLIT,$0-8
	MOVQ	$·countSignal(SB), AX
	MOVQ	AX, ret+0(FP)
	RET

// func returnFromSignalPC() uintptr
TEXT ·returnFromSignalPC(SB),NOSPLIT,$0-8
	MOVQ	$·returnFromSignal(SB), AX
	MOVQ	AX, ret+0(FP)
	RET
