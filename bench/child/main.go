// Command child is the benchmark's stand-in for the real program: it connects to the unix socket
// named by BENCH_SOCKET and writes "start <unix ns>" when it starts and "hup <unix ns>" at each
// SIGHUP, with the time it got there. It is kept tiny so that its own start costs little.
package main

import (
	"fmt"
	"net"
	"os"
	"os/signal"
	"syscall"
	"time"
)

func main() {
	sigs := make(chan os.Signal, 64)
	signal.Notify(sigs, syscall.SIGHUP)
	started := time.Now().UnixNano()
	conn, err := net.Dial("unix", os.Getenv("BENCH_SOCKET"))
	if err != nil {
		fmt.Fprintln(os.Stderr, "child:", err)
		os.Exit(1)
	}
	fmt.Fprintf(conn, "start %d\n", started)
	for range sigs {
		fmt.Fprintf(conn, "hup %d\n", time.Now().UnixNano())
	}
}
