// Command bench measures the real etcd-config-dispenser binary against a real etcd, on this
// machine, and prints one table:
//
//	go run ./bench            # or: make bench
//
// It builds the binary as `make build` does (CGO_ENABLED=0), starts etcd in-process on loopback
// (data on /dev/shm), and runs the dispenser with --fsync=false on a target in /dev/shm, with a
// tiny child (bench/child) that reports over a unix socket when it started and when it got each
// SIGHUP. Figures:
//
//   - startup: launch of the dispenser -> child started, with 10, 1000 and 10000 keys of 1 KiB
//     (median of -runs runs); peak RSS (VmHWM) with 10000 keys; CPU (utime+stime) over 10 s idle.
//   - latency: put acknowledged by etcd -> child got SIGHUP, for -puts sequential puts (p50, p99).
//   - burst: 5000 puts of 1 KiB over 1000 keys from 8 concurrent writers -> time from the last
//     put acknowledged until the dispenser applied etcd's last revision (the target then equals
//     etcd, which is checked), and the signals sent and received.
//   - soak: -soak puts over the same 1000 keys from 8 writers; RSS before and after.
package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"math"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/etcd-config-dispenser/etcd-config-dispenser/internal/etcdtest"
)

var (
	runs    = flag.Int("runs", 5, "runs per startup size (the median is reported)")
	puts    = flag.Int("puts", 200, "sequential puts for the latency figures")
	burstN  = flag.Int("burst", 5000, "puts in the burst")
	soakN   = flag.Int("soak", 100000, "puts in the memory soak")
	idleFor = flag.Duration("idle", 10*time.Second, "how long to measure CPU while idle")
	layout  = flag.String("layout", "atomic", "--layout of the dispenser")
	only    = flag.Bool("startup-only", false, "measure only startup, peak RSS and idle CPU")
	tmpBase = flag.String("dir", "/dev/shm", "where the target and etcd's data go (tmpfs)")
)

func main() {
	flag.Parse()
	if err := bench(); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

type env struct {
	tmp, bin, child, sock, endpoint string
	cli                             *clientv3.Client
	events                          chan childEvent
	n                               int // dispenser runs, for unique targets
}

type childEvent struct {
	what string
	at   time.Time
}

func bench() error {
	tmp, err := os.MkdirTemp(*tmpBase, "ecd-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	e := &env{tmp: tmp, bin: filepath.Join(tmp, "etcd-config-dispenser"), child: filepath.Join(tmp, "child"),
		sock: filepath.Join(tmp, "child.sock"), events: make(chan childEvent, 1<<16)}

	for _, b := range [][]string{
		{"-trimpath", "-ldflags", "-s -w -X main.version=bench", "-o", e.bin, "github.com/etcd-config-dispenser/etcd-config-dispenser"},
		{"-trimpath", "-o", e.child, "github.com/etcd-config-dispenser/etcd-config-dispenser/bench/child"},
	} {
		build := exec.Command("go", append([]string{"build"}, b...)...)
		build.Env = append(os.Environ(), "CGO_ENABLED=0")
		build.Stdout, build.Stderr = os.Stderr, os.Stderr
		if err := build.Run(); err != nil {
			return fmt.Errorf("go build: %w", err)
		}
	}

	cfg, err := etcdtest.Config(filepath.Join(tmp, "etcd"))
	if err != nil {
		return err
	}
	cfg.QuotaBackendBytes = 8 << 30
	etcd, cli, err := etcdtest.Run(cfg)
	if err != nil {
		return err
	}
	defer etcd.Close()
	defer cli.Close()
	e.cli, e.endpoint = cli, cfg.ListenClientUrls[0].String()

	ln, err := net.Listen("unix", e.sock)
	if err != nil {
		return err
	}
	defer ln.Close()
	go e.accept(ln)

	fmt.Printf("machine: %d CPUs, target and etcd data in %s, layout %s, --fsync=false\n\n", numCPU(), *tmpBase, *layout)
	var rows [][2]string
	row := func(k, v string) {
		rows = append(rows, [2]string{k, v})
		fmt.Printf("%-52s %s\n", k, v)
	}
	if err := e.startup(row); err != nil {
		return err
	}
	if *only {
		return nil
	}
	if err := e.latency(row); err != nil {
		return err
	}
	if err := e.burstAndSoak(row); err != nil {
		return err
	}
	fmt.Println("\n| measure | result |\n| --- | --- |")
	for _, r := range rows {
		fmt.Printf("| %s | %s |\n", r[0], r[1])
	}
	return nil
}

func (e *env) accept(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			sc := bufio.NewScanner(c)
			for sc.Scan() {
				what, ns, _ := strings.Cut(sc.Text(), " ")
				n, _ := strconv.ParseInt(ns, 10, 64)
				e.events <- childEvent{what, time.Unix(0, n)}
			}
		}()
	}
}

// next waits for the child's next event of the given kind.
func (e *env) next(what string, timeout time.Duration) (time.Time, error) {
	deadline := time.After(timeout)
	for {
		select {
		case ev := <-e.events:
			if ev.what == what {
				return ev.at, nil
			}
		case <-deadline:
			return time.Time{}, fmt.Errorf("the child did not report %q within %v", what, timeout)
		}
	}
}

// count counts the child's events of one kind until there are want of them or wait passes
// without one (the kernel merges a signal that arrives while the same one is pending).
func (e *env) count(what string, want int, wait time.Duration) int {
	n := 0
	for n < want {
		select {
		case ev := <-e.events:
			if ev.what == what {
				n++
			}
		case <-time.After(wait):
			return n
		}
	}
	return n
}

func (e *env) drain() {
	for {
		select {
		case <-e.events:
		default:
			return
		}
	}
}

// dispenser is one run of the binary; its JSON log lines are read as they come.
type dispenser struct {
	cmd     *exec.Cmd
	target  string
	mu      sync.Mutex
	applied int64     // highest revision of a "batch applied" or "snapshot applied" line
	at      time.Time // when that line was read
	signals int       // "signal sent" lines
	done    chan struct{}
	stderr  bytes.Buffer
	notify  chan struct{}
}

func (e *env) launch(prefix string) (*dispenser, time.Time, error) {
	e.n++
	e.drain()
	d := &dispenser{target: filepath.Join(e.tmp, fmt.Sprintf("target-%d", e.n)), done: make(chan struct{}),
		notify: make(chan struct{}, 1)}
	d.cmd = exec.Command(e.bin, "--prefix="+prefix, "--target="+d.target, "--fsync=false", "--layout="+*layout,
		"--log-format=json", "--", e.child)
	d.cmd.Env = append(os.Environ(), "ETCD_ENDPOINTS="+e.endpoint, "BENCH_SOCKET="+e.sock)
	out, err := d.cmd.StderrPipe()
	if err != nil {
		return nil, time.Time{}, err
	}
	t0 := time.Now()
	if err := d.cmd.Start(); err != nil {
		return nil, t0, err
	}
	go d.read(out)
	return d, t0, nil
}

func (d *dispenser) read(r io.Reader) {
	defer close(d.done)
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		var line struct {
			Msg      string
			Revision int64
		}
		if json.Unmarshal(sc.Bytes(), &line) != nil {
			continue
		}
		now := time.Now()
		d.mu.Lock()
		d.stderr.Write(append(sc.Bytes(), '\n'))
		switch line.Msg {
		case "batch applied", "snapshot applied":
			if line.Revision > d.applied {
				d.applied, d.at = line.Revision, now
			}
		case "signal sent":
			d.signals++
		}
		d.mu.Unlock()
		select {
		case d.notify <- struct{}{}:
		default:
		}
	}
}

// appliedAt waits until the dispenser logged a batch at revision rev or later, and returns when.
func (d *dispenser) appliedAt(rev int64, timeout time.Duration) (time.Time, error) {
	deadline := time.After(timeout)
	for {
		d.mu.Lock()
		ok, at := d.applied >= rev, d.at
		d.mu.Unlock()
		if ok {
			return at, nil
		}
		select {
		case <-d.notify:
		case <-d.done:
			return time.Time{}, fmt.Errorf("the dispenser exited:\n%s", d.stderr.String())
		case <-deadline:
			return time.Time{}, fmt.Errorf("revision %d not applied within %v", rev, timeout)
		}
	}
}

func (d *dispenser) stop() {
	_ = d.cmd.Process.Signal(syscall.SIGTERM)
	<-d.done
	_ = d.cmd.Wait()
	os.RemoveAll(d.target)
}

func (e *env) load(prefix string, n int, value []byte) (int64, error) {
	ctx := context.Background()
	var rev int64
	for i := 0; i < n; i += 128 {
		var ops []clientv3.Op
		for j := i; j < min(n, i+128); j++ {
			ops = append(ops, clientv3.OpPut(fmt.Sprintf("%sd%02d/k%05d", prefix, j%100, j), string(value)))
		}
		resp, err := e.cli.Txn(ctx).Then(ops...).Commit()
		if err != nil {
			return 0, err
		}
		rev = resp.Header.Revision
	}
	return rev, nil
}

func (e *env) startup(row func(k, v string)) error {
	value := bytes.Repeat([]byte("x"), 1024)
	for _, n := range []int{10, 1000, 10000} {
		prefix := fmt.Sprintf("/start%d/", n)
		if _, err := e.load(prefix, n, value); err != nil {
			return err
		}
		var times, hwms []float64
		for r := 0; r < *runs; r++ {
			d, t0, err := e.launch(prefix)
			if err != nil {
				return err
			}
			at, err := e.next("start", 60*time.Second)
			if err != nil {
				d.stop()
				return err
			}
			times = append(times, float64(at.Sub(t0).Microseconds())/1000)
			hwm, _ := procStatus(d.cmd.Process.Pid, "VmHWM")
			hwms = append(hwms, float64(hwm)/1024)
			if n == 10000 && r == *runs-1 {
				if err := e.idle(d, row); err != nil {
					d.stop()
					return err
				}
			}
			d.stop()
		}
		row(fmt.Sprintf("startup, %d keys of 1 KiB (median of %d)", n, *runs),
			fmt.Sprintf("%.1f ms (min %.1f, max %.1f)", median(times), slices.Min(times), slices.Max(times)))
		if n == 10000 {
			row("peak RSS (VmHWM) after startup with 10000 keys", fmt.Sprintf("%.1f MiB (max %.1f)", median(hwms), slices.Max(hwms)))
		}
	}
	return nil
}

// idle measures the CPU the dispenser uses while nothing changes.
func (e *env) idle(d *dispenser, row func(k, v string)) error {
	before, err := cpuTicks(d.cmd.Process.Pid)
	if err != nil {
		return err
	}
	time.Sleep(*idleFor)
	after, err := cpuTicks(d.cmd.Process.Pid)
	if err != nil {
		return err
	}
	ms := float64(after-before) * 10 // USER_HZ is 100 on Linux
	row(fmt.Sprintf("CPU while idle for %v (10000 keys)", *idleFor),
		fmt.Sprintf("%.0f ms (%.2f%% of one core)", ms, ms/float64(idleFor.Milliseconds())*100))
	return nil
}

// running loads n keys of 1 KiB under prefix and returns a dispenser whose child has started.
func (e *env) running(prefix string, n int) (*dispenser, error) {
	if _, err := e.load(prefix, n, bytes.Repeat([]byte("x"), 1024)); err != nil {
		return nil, err
	}
	d, _, err := e.launch(prefix)
	if err != nil {
		return nil, err
	}
	if _, err := e.next("start", 60*time.Second); err != nil {
		d.stop()
		return nil, err
	}
	return d, nil
}

func (e *env) latency(row func(k, v string)) error {
	prefix := "/latency/"
	d, err := e.running(prefix, 10)
	if err != nil {
		return err
	}
	defer d.stop()
	var lat []float64
	ctx := context.Background()
	for i := 0; i < *puts; i++ {
		value := fmt.Sprintf("%d%s", i, bytes.Repeat([]byte("y"), 1000))
		if _, err := e.cli.Put(ctx, fmt.Sprintf("%sd%02d/k%05d", prefix, i%10, i%10), value); err != nil {
			return err
		}
		committed := time.Now()
		at, err := e.next("hup", 10*time.Second)
		if err != nil {
			return err
		}
		lat = append(lat, math.Max(0, float64(at.Sub(committed).Microseconds())/1000))
	}
	slices.Sort(lat)
	row(fmt.Sprintf("latency put -> SIGHUP, %d puts, 10 keys (p50 / p99)", *puts),
		fmt.Sprintf("%.2f ms / %.2f ms (max %.2f)", percentile(lat, 50), percentile(lat, 99), lat[len(lat)-1]))
	return nil
}

func (e *env) burstAndSoak(row func(k, v string)) error {
	prefix := "/burst/"
	const keys = 1000
	d, err := e.running(prefix, keys)
	if err != nil {
		return err
	}
	defer d.stop()
	e.drain()

	// Burst.
	d.mu.Lock()
	sent0 := d.signals
	d.mu.Unlock()
	burstStart := time.Now()
	last, rev, err := e.storm(prefix, keys, *burstN)
	if err != nil {
		return err
	}
	at, err := d.appliedAt(rev, 60*time.Second)
	if err != nil {
		return err
	}
	if err := e.sameAsEtcd(prefix, d.target); err != nil {
		return err
	}
	d.mu.Lock()
	sent := d.signals - sent0
	d.mu.Unlock()
	received := e.count("hup", sent, time.Second)
	row(fmt.Sprintf("burst: %d puts, 8 writers, %d keys: converged after last put", *burstN, keys),
		fmt.Sprintf("%.1f ms (the puts took %.0f ms)", math.Max(0, float64(at.Sub(last).Microseconds())/1000),
			float64(last.Sub(burstStart).Milliseconds())))
	row("burst: signals sent / received by the child", fmt.Sprintf("%d / %d", sent, received))

	// Soak.
	pid := d.cmd.Process.Pid
	rss0, _ := procStatus(pid, "VmRSS")
	start := time.Now()
	_, rev, err = e.storm(prefix, keys, *soakN)
	if err != nil {
		return err
	}
	if _, err := d.appliedAt(rev, 120*time.Second); err != nil {
		return err
	}
	took := time.Since(start)
	rss1, _ := procStatus(pid, "VmRSS")
	hwm, _ := procStatus(pid, "VmHWM")
	row(fmt.Sprintf("soak: %d puts, 8 writers, %d keys (%.0f s)", *soakN, keys, took.Seconds()),
		fmt.Sprintf("RSS %.1f MiB before, %.1f MiB after (peak %.1f)", float64(rss0)/1024, float64(rss1)/1024, float64(hwm)/1024))
	return nil
}

// storm puts n values over keys keys from 8 writers; it returns when the last put was
// acknowledged and the highest revision.
func (e *env) storm(prefix string, keys, n int) (time.Time, int64, error) {
	var next, maxRev atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	pad := bytes.Repeat([]byte("z"), 1000)
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := next.Add(1) - 1
				if i >= int64(n) {
					return
				}
				k := int(i) % keys
				resp, err := e.cli.Put(context.Background(), fmt.Sprintf("%sd%02d/k%05d", prefix, k%100, k),
					fmt.Sprintf("%d %s", i, pad))
				if err != nil {
					errs <- err
					return
				}
				for {
					m := maxRev.Load()
					if resp.Header.Revision <= m || maxRev.CompareAndSwap(m, resp.Header.Revision) {
						break
					}
				}
			}
		}()
	}
	wg.Wait()
	last := time.Now()
	select {
	case err := <-errs:
		return last, 0, err
	default:
	}
	return last, maxRev.Load(), nil
}

// sameAsEtcd checks that the target shows exactly the prefix.
func (e *env) sameAsEtcd(prefix, target string) error {
	resp, err := e.cli.Get(context.Background(), prefix, clientv3.WithPrefix())
	if err != nil {
		return err
	}
	root := target
	if *layout == "atomic" {
		root = filepath.Join(target, "..data") + "/"
	}
	n := 0
	// Subdirectories of an atomic version are symlinks to shared directories: followed.
	var count func(dir string) error
	count = func(dir string) error {
		entries, err := os.ReadDir(dir)
		for _, de := range entries {
			if err != nil || strings.HasPrefix(de.Name(), "..") {
				continue
			}
			var fi os.FileInfo
			if fi, err = os.Stat(filepath.Join(dir, de.Name())); err == nil && fi.IsDir() {
				err = count(filepath.Join(dir, de.Name()))
			} else if err == nil {
				n++
			}
		}
		return err
	}
	err = count(root)
	if err != nil || n != len(resp.Kvs) {
		return fmt.Errorf("the target has %d files, etcd %d keys (%v)", n, len(resp.Kvs), err)
	}
	for _, kv := range resp.Kvs {
		got, err := os.ReadFile(filepath.Join(target, strings.TrimPrefix(string(kv.Key), prefix)))
		if err != nil || !bytes.Equal(got, kv.Value) {
			return fmt.Errorf("%s differs from etcd (%v)", kv.Key, err)
		}
	}
	return nil
}

// procStatus returns a kB field of /proc/PID/status.
func procStatus(pid int, field string) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, field+":"); ok {
			return strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
		}
	}
	return 0, fmt.Errorf("%s not in /proc/%d/status", field, pid)
}

// cpuTicks returns utime+stime of pid, in clock ticks.
func cpuTicks(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// Fields after the command name, which is in parentheses and may hold spaces.
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+2:]))
	utime, _ := strconv.ParseInt(f[11], 10, 64)
	stime, _ := strconv.ParseInt(f[12], 10, 64)
	return utime + stime, nil
}

func median(xs []float64) float64 {
	s := slices.Sorted(slices.Values(xs))
	return s[len(s)/2]
}

func percentile(sorted []float64, p float64) float64 {
	i := int(math.Ceil(p/100*float64(len(sorted)))) - 1
	return sorted[max(0, min(i, len(sorted)-1))]
}

func numCPU() int {
	b, _ := os.ReadFile("/proc/cpuinfo")
	return max(1, bytes.Count(b, []byte("processor\t:")))
}
