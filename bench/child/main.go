// Command child is the benchmark's stand-in for the real program: it connects to the unix socket
// named by BENCH_SOCKET and writes "start <unix ns> <id>" when it starts and "hup <unix ns> <id>"
// at each SIGHUP, with the time it got there; id is BENCH_ID, which the benchmark gives each
// dispenser (the dispenser passes its environment on). It is kept tiny so that its own start
// costs little.
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
	id := os.Getenv("BENCH_ID")
	fmt.Fprintf(conn, "start %d %s\n", started, id)
	for range sigs {
		fmt.Fprintf(conn, "hup %d %s\n", time.Now().UnixNano(), id)
	}
}
