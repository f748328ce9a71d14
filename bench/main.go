// Command bench measures the real etcd-config-dispenser binary against a real etcd, on this
// machine, and prints one table; with -peer, the same figures for a second binary (the
// original etcd-config-dispenser) in the same run, interleaved, with a ratio per figure:
//
//	go run ./bench                                   # or: make bench
//	go run ./bench -peer /tmp/original-dispenser -etcd /usr/bin/etcd
//	go run ./bench -smoke                            # a few seconds, for CI: no thresholds
//	go run ./bench -fleet 50,200 -peer ...           # many dispensers on one etcd, and via grpc-proxy
//
// It builds our binary as `make build` does (CGO_ENABLED=0, -tags grpcnotrace), starts etcd on loopback (in-process,
// or the etcd binary given with -etcd) with its data in -dir (tmpfs), and runs each dispenser
// with only the original's flags (--prefix, --target, --signal=SIGHUP; ours also --settle=0) on a target in -dir, with
// a tiny child (bench/child) that reports over a unix socket when it started and when it got
// each SIGHUP. Keys are flat (the original cannot create subdirectories). Figures, each the
// median of -runs runs unless said otherwise, runs alternating which binary goes first:
//
//   - start: launch -> child running, with 10 keys and with 10000 keys of 1 KiB; peak RSS
//     (VmHWM) with 10000 keys, and RSS -settle later; one-key change (put -> SIGHUP) with 10000
//     keys present.
//   - idle RSS (VmRSS) with one key, -settle after the child started.
//   - latency: -puts sequential puts to a prefix of 10 keys, alternating between the binaries:
//     put sent -> SIGHUP (p50, p99) and put acknowledged -> SIGHUP (p50; negative when the
//     signal came before the acknowledgement).
//   - 50000 keys of 100 B: start, and one-key change (-big; 0 skips).
//   - burst: -burst puts of 1 KiB over 1000 keys from 8 writers: SIGHUPs the child got, and the
//     time from the last put acknowledged until the target shows it (then checked against etcd).
//     With -soak N, N more puts, and the RSS after them.
//
// Ratios are peer / ours: every figure is lower-is-better, so above 1 means ours is better.
// Figures are noisy on a shared machine: the load average is printed beside each.
package main

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

var (
	peerPath = flag.String("peer", "", "a second dispenser binary to measure in the same run (the original: see the README)")
	etcdBin  = flag.String("etcd", "", "run this etcd binary (e.g. /usr/bin/etcd, Debian's 3.4) instead of etcd 3.6 in-process")
	smoke    = flag.Bool("smoke", false, "a few seconds with tiny sizes, to check that the benchmark works (CI)")
	runs     = flag.Int("runs", 5, "runs per start figure (the median is reported)")
	puts     = flag.Int("puts", 200, "sequential puts per binary for the latency figures")
	changes  = flag.Int("changes", 5, "one-key changes per run with many keys present")
	burstN   = flag.Int("burst", 5000, "puts in the burst")
	soakN    = flag.Int("soak", 0, "after the burst, this many more puts; RSS before and after (0 skips)")
	bigN     = flag.Int("big", 50000, "keys of 100 B for the large-prefix figures (0 skips them)")
	settle   = flag.Duration("settle", 5*time.Second, "wait after the start before reading the idle RSS")
	ourFlags = flag.String("flags", "", "extra flags for our binary only, e.g. --layout=plain")
	tmpBase  = flag.String("dir", "/dev/shm", "where the targets and etcd's data go (tmpfs)")
	fleet    = flag.String("fleet", "", "instead of the figures: fan-out with N dispensers per binary, e.g. 50,200")
	fleetPut = flag.Int("fleet-puts", 20, "puts per fleet for the fan-out latency")
	idleFor  = flag.Duration("fleet-idle", 10*time.Second, "how long to read etcd's CPU while a fleet idles")
	noProxy  = flag.Bool("no-proxy", false, "fleet: skip the runs through etcd's grpc-proxy")
	logsDir  = flag.String("logs", "", "also write each dispenser's output to DIR/<run>.log")
	traceTo  = flag.String("trace", "", "latency figure: write each put's times (unix ns: sent, acknowledged, SIGHUP) to FILE")
	only     = flag.String("only", "", "run only these figure groups: start,many,idle,latency,big,burst")
)

func main() {
	flag.Parse()
	if *smoke {
		*runs, *puts, *changes, *burstN, *bigN, *settle = 1, 10, 1, 200, 0, 200*time.Millisecond
		*fleetPut, *idleFor = 3, time.Second
	}
	if err := benchmain(); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

// bench holds what every figure uses.
type bench struct {
	dir, child string
	bins       []binary // ours, then the peer
	hub        *hub
	etcd       *server
	cli        *clientv3.Client
	rows       []row
}

// row is one figure: a cell per binary, and the ratio peer/ours when it means something.
type row struct {
	figure string
	cells  []string
	ratio  string
	load   string
}

// summary is one binary's result for a figure: the text shown, and the value the ratio uses
// (NaN: no ratio).
type summary struct {
	text  string
	value float64
}

func benchmain() error {
	if *fleet != "" && *etcdBin == "" {
		if _, err := os.Stat("/usr/bin/etcd"); err != nil {
			return fmt.Errorf("-fleet reads etcd's CPU time, so it needs an etcd binary: give -etcd PATH")
		}
		*etcdBin = "/usr/bin/etcd"
	}
	dir, err := os.MkdirTemp(*tmpBase, "ecd-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	// The binaries sit on a disk, as in a container image: on tmpfs their pages would count as
	// shared memory in the RSS figures.
	bins, err := os.MkdirTemp("", "ecd-bench-bin-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(bins)
	b := &bench{dir: dir, child: filepath.Join(bins, "child")}
	// --settle=0: the original has no settle time, and every figure here times a change that
	// follows the previous signal closely; -flags can turn it back on (later flags win).
	ours := binary{name: "ours", path: filepath.Join(bins, "etcd-config-dispenser"),
		flags: append([]string{"--settle=0"}, strings.Fields(*ourFlags)...)}
	for _, args := range [][]string{
		{"-tags", "grpcnotrace", "-trimpath", "-ldflags", "-s -w -X main.version=bench", "-o", ours.path, "github.com/etcd-config-dispenser/etcd-config-dispenser"},
		{"-trimpath", "-o", b.child, "github.com/etcd-config-dispenser/etcd-config-dispenser/bench/child"},
	} {
		build := exec.Command("go", append([]string{"build"}, args...)...)
		build.Env = append(os.Environ(), "CGO_ENABLED=0")
		build.Stdout, build.Stderr = os.Stderr, os.Stderr
		if err := build.Run(); err != nil {
			return fmt.Errorf("go build: %w", err)
		}
	}
	b.bins = []binary{ours}
	// Same page-cache state for every binary: the RSS of a process counts the pages of its
	// binary it maps, and how many a fault maps depends on how the file got into the page cache
	// (written by go build's linker, copied, read ahead from disk).
	built := ours.path + ".built"
	if err := os.Rename(ours.path, built); err != nil {
		return err
	}
	if err := copyFile(built, ours.path); err != nil {
		return err
	}
	if *peerPath != "" {
		p, err := filepath.Abs(*peerPath)
		if err != nil {
			return err
		}
		// A copy beside ours, so that both are read from the same file system.
		peer := binary{name: filepath.Base(p), path: filepath.Join(bins, "peer-"+filepath.Base(p))}
		if err := copyFile(p, peer.path); err != nil {
			return fmt.Errorf("-peer: %w", err)
		}
		b.bins = append(b.bins, peer)
	}

	for _, bin := range b.bins {
		if err := evict(bin.path); err != nil {
			return err
		}
	}

	b.etcd, b.cli, err = startEtcd(filepath.Join(dir, "etcd"), *etcdBin)
	if err != nil {
		return fmt.Errorf("starting etcd: %w", err)
	}
	defer b.etcd.close()
	defer b.cli.Close()
	if b.hub, err = newHub(filepath.Join(dir, "child.sock")); err != nil {
		return err
	}

	fmt.Printf("command: %s\n", strings.Join(os.Args, " "))
	fmt.Printf("machine: %d CPUs, %s; etcd %s on loopback; targets and etcd data in %s; load %s at start\n\n",
		runtime.NumCPU(), time.Now().UTC().Format(time.RFC3339), b.etcd.version, *tmpBase, loadavg())
	if *fleet != "" {
		err = b.fleets(*fleet)
	} else {
		err = b.figures()
	}
	if err != nil {
		return err
	}
	b.table()
	return nil
}

func (b *bench) figures() error {
	many := 10000
	if *smoke {
		many = 1000
	}
	groups := []struct {
		name string
		f    func() error
	}{
		{"start", func() error { return b.start(10, 1024, *runs, 0, false) }},
		{"many", func() error { return b.start(many, 1024, *runs, *changes, true) }},
		{"idle", b.idleRSS},
		{"latency", b.latency},
		{"big", func() error {
			if *bigN == 0 {
				return nil
			}
			return b.start(*bigN, 100, max(1, min(*runs, 3)), *changes, false)
		}},
		{"burst", b.burst},
	}
	for _, g := range groups {
		if *only != "" && !slices.Contains(strings.Split(*only, ","), g.name) {
			continue
		}
		if err := g.f(); err != nil {
			return fmt.Errorf("%s: %w", g.name, err)
		}
	}
	return nil
}

// interleave calls f n times for each binary, alternating which one goes first.
func (b *bench) interleave(n int, f func(bin binary) error) error {
	for i := 0; i < n; i++ {
		order := slices.Clone(b.bins)
		if i%2 == 1 {
			slices.Reverse(order)
		}
		for _, bin := range order {
			if err := f(bin); err != nil {
				return err
			}
		}
	}
	return nil
}

// start measures launch -> child running with n keys of size bytes, and optionally peak RSS
// and one-key changes with them present.
func (b *bench) start(n, size, runs, changes int, hwm bool) error {
	prefix := fmt.Sprintf("/start-%d-%d/", n, size)
	if _, err := b.load(prefix, n, size); err != nil {
		return err
	}
	load := loadavg()
	starts, peaks, changed, settled := b.samples(), b.samples(), b.samples(), b.samples()
	err := b.interleave(runs, func(bin binary) error {
		r, t0, err := b.hub.launch(bin, b.dir, b.child, b.etcd.endpoint, prefix)
		if err != nil {
			return err
		}
		defer r.stop()
		at, err := r.next("start", 5*time.Minute)
		if err != nil {
			return err
		}
		starts.add(bin, ms(at.Sub(t0)))
		if hwm {
			kb, _ := procStatus(r.pid(), "VmHWM")
			peaks.add(bin, float64(kb)/1024)
		}
		for i := 0; i < changes; i++ {
			time.Sleep(100 * time.Millisecond) // let the start's garbage collection finish
			r.drain()
			t0 := time.Now()
			if _, err := b.cli.Put(context.Background(), key(prefix, i%n), fresh(size)); err != nil {
				return err
			}
			at, err := r.next("hup", time.Minute)
			if err != nil {
				return err
			}
			changed.add(bin, ms(at.Sub(t0)))
		}
		if hwm {
			time.Sleep(*settle)
			kb, _ := procStatus(r.pid(), "VmRSS")
			settled.add(bin, float64(kb)/1024)
		}
		return nil
	})
	if err != nil {
		return err
	}
	what := fmt.Sprintf("%d keys of %s", n, bytesize(size))
	b.add(fmt.Sprintf("start, %s -> child running (median of %d)", what, runs), load, starts.median("ms"))
	if hwm {
		b.add(fmt.Sprintf("peak RSS (VmHWM), %s", what), load, peaks.median("MiB"))
	}
	if hwm {
		b.add(fmt.Sprintf("RSS %v after the start and changes, %s", *settle, what), load, settled.median("MiB"))
	}
	if changes > 0 {
		b.add(fmt.Sprintf("one-key change with %s present: put -> signal (median of %d)", what, runs*changes), load,
			changed.median("ms"))
	}
	return nil
}

func (b *bench) idleRSS() error {
	prefix := "/idle/"
	if _, err := b.load(prefix, 1, 1024); err != nil {
		return err
	}
	load := loadavg()
	rss := b.samples()
	detail := map[string]string{}
	err := b.interleave(*runs, func(bin binary) error {
		r, _, err := b.hub.launch(bin, b.dir, b.child, b.etcd.endpoint, prefix)
		if err != nil {
			return err
		}
		defer r.stop()
		if _, err := r.next("start", time.Minute); err != nil {
			return err
		}
		time.Sleep(*settle)
		kb, err := procStatus(r.pid(), "VmRSS")
		if err != nil {
			return err
		}
		anon, _ := procStatus(r.pid(), "RssAnon")
		file, _ := procStatus(r.pid(), "RssFile")
		shmem, _ := procStatus(r.pid(), "RssShmem")
		rss.add(bin, float64(kb)/1024)
		detail[bin.name] = fmt.Sprintf("anon %.1f + file %.1f + shmem %.1f; the binary's pages: %s", float64(anon)/1024,
			float64(file)/1024, float64(shmem)/1024, binaryPages(r.pid(), bin.path))
		return nil
	})
	if err != nil {
		return err
	}
	sums := rss.median("MiB")
	for i, bin := range b.bins {
		sums[i].text += ", last: " + detail[bin.name]
	}
	b.add(fmt.Sprintf("idle RSS, one key, %v after the start (median of %d)", *settle, *runs), load, sums)
	return nil
}

// latency alternates single puts between the binaries, each on its own prefix of 10 keys.
func (b *bench) latency() error {
	load := loadavg()
	running := map[string]*run{}
	prefixes := map[string]string{}
	for _, bin := range b.bins {
		prefixes[bin.name] = "/latency-" + bin.name + "/"
		if _, err := b.load(prefixes[bin.name], 10, 1024); err != nil {
			return err
		}
		r, _, err := b.hub.launch(bin, b.dir, b.child, b.etcd.endpoint, prefixes[bin.name])
		if err != nil {
			return err
		}
		defer r.stop()
		if _, err := r.next("start", time.Minute); err != nil {
			return err
		}
		running[bin.name] = r
	}
	time.Sleep(200 * time.Millisecond)
	sent, acked := b.samples(), b.samples()
	var trace *os.File
	if *traceTo != "" {
		var err error
		if trace, err = os.Create(*traceTo); err != nil {
			return err
		}
		defer trace.Close()
	}
	i := 0
	err := b.interleave(*puts, func(bin binary) error {
		i++
		r := running[bin.name]
		r.drain()
		t0 := time.Now()
		if _, err := b.cli.Put(context.Background(), key(prefixes[bin.name], i%10), fresh(1024)); err != nil {
			return err
		}
		t1 := time.Now()
		at, err := r.next("hup", 10*time.Second)
		if err != nil {
			return err
		}
		sent.add(bin, ms(at.Sub(t0)))
		acked.add(bin, ms(at.Sub(t1)))
		if trace != nil {
			fmt.Fprintf(trace, "%s %d %d %d\n", bin.name, t0.UnixNano(), t1.UnixNano(), at.UnixNano())
		}
		return nil
	})
	if err != nil {
		return err
	}
	b.add(fmt.Sprintf("put -> signal, p50 (%d puts, 10 keys)", *puts), load, sent.percentile(50, "ms"))
	b.add(fmt.Sprintf("put -> signal, p99 (%d puts, 10 keys)", *puts), load, sent.percentile(99, "ms"))
	ack := acked.percentile(50, "ms")
	for i := range ack {
		ack[i].value = math.NaN() // a difference, not a ratio
	}
	b.add("put acknowledged -> signal, p50", load, ack)
	return nil
}

// burst sends -burst puts from 8 writers to a running dispenser of 1000 keys, then a marker.
func (b *bench) burst() error {
	const keys = 1000
	load := loadavg()
	signals, converged, soaked, soakPeak := b.samples(), b.samples(), b.samples(), b.samples()
	n := 0
	err := b.interleave(max(1, *runs/2), func(bin binary) error {
		n++
		prefix := fmt.Sprintf("/burst-%d/", n)
		if _, err := b.load(prefix, keys, 1024); err != nil {
			return err
		}
		marker := "marker"
		if _, err := b.cli.Put(context.Background(), prefix+marker, "0"); err != nil {
			return err
		}
		r, _, err := b.hub.launch(bin, b.dir, b.child, b.etcd.endpoint, prefix)
		if err != nil {
			return err
		}
		defer r.stop()
		if _, err := r.next("start", time.Minute); err != nil {
			return err
		}
		time.Sleep(200 * time.Millisecond)
		r.drain()
		if err := b.storm(prefix, keys, *burstN); err != nil {
			return err
		}
		want := fmt.Sprintf("done %d", n)
		if _, err := b.cli.Put(context.Background(), prefix+marker, want); err != nil {
			return err
		}
		last := time.Now()
		at, err := poll(filepath.Join(r.target, marker), []byte(want), 2*time.Minute)
		if err != nil {
			return fmt.Errorf("%s: %w\n%s", bin.name, err, r.stderr.String())
		}
		converged.add(bin, ms(at.Sub(last)))
		signals.add(bin, float64(r.count("hup", time.Second)))
		if err := b.sameAsEtcd(prefix, r.target); err != nil || *soakN == 0 {
			return err
		}
		// The soak: memory must stay flat under a long stream of changes.
		if err := b.storm(prefix, keys, *soakN); err != nil {
			return err
		}
		want = fmt.Sprintf("soaked %d", n)
		if _, err := b.cli.Put(context.Background(), prefix+marker, want); err != nil {
			return err
		}
		if _, err := poll(filepath.Join(r.target, marker), []byte(want), 5*time.Minute); err != nil {
			return fmt.Errorf("%s: %w", bin.name, err)
		}
		rss, _ := procStatus(r.pid(), "VmRSS")
		hwm, _ := procStatus(r.pid(), "VmHWM")
		soaked.add(bin, float64(rss)/1024)
		soakPeak.add(bin, float64(hwm)/1024)
		return nil
	})
	if err != nil {
		return err
	}
	b.add(fmt.Sprintf("burst of %d puts (8 writers, %d keys): signals at the child", *burstN, keys), load,
		signals.median(""))
	b.add("burst: last put acknowledged -> the target shows it", load, converged.median("ms"))
	if *soakN > 0 {
		b.add(fmt.Sprintf("soak: RSS after %d more puts", *soakN), load, soaked.median("MiB"))
		b.add("soak: peak RSS (VmHWM) over the burst and the soak", load, soakPeak.median("MiB"))
	}
	return nil
}

// poll waits until the file holds want, and returns when it first did.
func poll(path string, want []byte, timeout time.Duration) (time.Time, error) {
	deadline := time.Now().Add(timeout)
	for {
		got, _ := os.ReadFile(path)
		if bytes.Equal(got, want) {
			return time.Now(), nil
		}
		if time.Now().After(deadline) {
			return time.Time{}, fmt.Errorf("%s does not hold %q after %v", path, want, timeout)
		}
		time.Sleep(500 * time.Microsecond)
	}
}

func (b *bench) table() {
	fmt.Printf("\nload %s at the end\n\n", loadavg())
	head := "| figure |"
	sep := "| --- |"
	for _, bin := range b.bins {
		head += " " + bin.name + " |"
		sep += " --- |"
	}
	if len(b.bins) > 1 {
		head += " ratio " + b.bins[1].name + "/ours |"
		sep += " --- |"
	}
	fmt.Println(head + " load |")
	fmt.Println(sep + " --- |")
	for _, r := range b.rows {
		line := "| " + r.figure + " | " + strings.Join(r.cells, " | ") + " |"
		if len(b.bins) > 1 {
			line += " " + r.ratio + " |"
		}
		fmt.Println(line + " " + r.load + " |")
	}
}

// add records a figure and prints it at once.
func (b *bench) add(figure, load string, sums []summary) {
	r := row{figure: figure, load: load, ratio: "–"}
	for _, s := range sums {
		r.cells = append(r.cells, s.text)
	}
	if len(sums) > 1 && !math.IsNaN(sums[0].value) && !math.IsNaN(sums[1].value) && sums[0].value > 0 {
		r.ratio = fmt.Sprintf("%.2f", sums[1].value/sums[0].value)
	}
	b.rows = append(b.rows, r)
	fmt.Printf("%-75s %s", figure, strings.Join(r.cells, "  |  "))
	if len(sums) > 1 {
		fmt.Printf("  | ratio %s", r.ratio)
	}
	fmt.Printf("  (load %s)\n", load)
}

// samples are a figure's measurements per binary; summaries come in the order of b.bins.
type samples struct {
	bins []binary
	m    map[string][]float64
}

func (b *bench) samples() samples { return samples{b.bins, map[string][]float64{}} }

func (s samples) add(bin binary, v float64) { s.m[bin.name] = append(s.m[bin.name], v) }

func (s samples) median(unit string) []summary {
	var out []summary
	for _, bin := range s.bins {
		xs := slices.Sorted(slices.Values(s.m[bin.name]))
		if len(xs) == 0 {
			out = append(out, summary{"–", math.NaN()})
			continue
		}
		m := xs[len(xs)/2]
		text := num(m, unit)
		if len(xs) > 1 {
			text += fmt.Sprintf(" (%s–%s)", num(xs[0], ""), num(xs[len(xs)-1], ""))
		}
		out = append(out, summary{text, m})
	}
	return out
}

func (s samples) percentile(p float64, unit string) []summary {
	var out []summary
	for _, bin := range s.bins {
		xs := slices.Sorted(slices.Values(s.m[bin.name]))
		if len(xs) == 0 {
			out = append(out, summary{"–", math.NaN()})
			continue
		}
		i := max(0, min(int(math.Ceil(p/100*float64(len(xs))))-1, len(xs)-1))
		out = append(out, summary{num(xs[i], unit), xs[i]})
	}
	return out
}

func num(v float64, unit string) string {
	var s string
	switch a := math.Abs(v); {
	case a >= 100 || v == math.Trunc(v):
		s = fmt.Sprintf("%.0f", v)
	case a >= 10:
		s = fmt.Sprintf("%.1f", v)
	default:
		s = fmt.Sprintf("%.2f", v)
	}
	if unit != "" {
		s += " " + unit
	}
	return s
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

func bytesize(n int) string {
	if n%1024 == 0 {
		return fmt.Sprintf("%d KiB", n/1024)
	}
	return fmt.Sprintf("%d B", n)
}
