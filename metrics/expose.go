package metrics

import (
	"bufio"
	"bytes"
	"math"
	"net/http"
	"os"
	"runtime"
	"runtime/debug"
	rtmetrics "runtime/metrics"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// family is one metric family of the text exposition format: its samples share a name
// (a summary's also add _sum and _count), a type and a help text.
type family struct {
	name, typ, help string
	samples         []sample
}

type sample struct {
	suffix string // "", or "_sum" and "_count" for a summary
	labels string // `{name="value"}` or ""
	value  float64
}

func one(name, typ, help string, v float64) family {
	return family{name: name, typ: typ, help: help, samples: []sample{{value: v}}}
}

// serveMetrics writes every family in the Prometheus text format 0.0.4, sorted by name as
// client_golang did, so that scrapes and diffs of the output stay as they were.
func (m *Metrics) serveMetrics(w http.ResponseWriter, _ *http.Request) {
	fams := append(append(m.families(), goFamilies()...), processFamilies()...)
	slices.SortFunc(fams, func(a, b family) int { return strings.Compare(a.name, b.name) })
	w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
	bw := bufio.NewWriter(w)
	for _, f := range fams {
		bw.WriteString("# HELP " + f.name + " " + escapeHelp(f.help) + "\n# TYPE " + f.name + " " + f.typ + "\n")
		for _, s := range f.samples {
			bw.WriteString(f.name + s.suffix + s.labels + " " + formatValue(s.value) + "\n")
		}
	}
	bw.Flush()
}

// families are the dispenser's own metrics.
func (m *Metrics) families() []family {
	const n = namespace
	num := func(a interface{ Load() int64 }) float64 { return float64(a.Load()) }
	applyErrors := family{name: n + "apply_errors_total", typ: "counter",
		help: "Batches the target could not take (each is retried), by stage: files, template, check, target."}
	for i, stage := range applyStages {
		applyErrors.samples = append(applyErrors.samples, sample{labels: label("stage", stage), value: num(&m.applyErrors[i])})
	}
	ready := 0.0
	if ok, _ := m.Ready(); ok {
		ready = 1
	}
	return []family{
		one(n+"applied_revision", "gauge", "etcd revision up to which every change is in the target.", num(&m.applied)),
		one(n+"etcd_revision", "gauge", "Latest etcd revision seen in a response header or progress notification.", num(&m.etcdRevision)),
		one(n+"last_batch_timestamp_seconds", "gauge", "Unix time of the last applied batch.", float64(m.lastBatchNanos.Load())/1e9),
		one(n+"batches_applied_total", "counter", "Batches applied to the target (including those that changed nothing).", num(&m.batches)),
		one(n+"files_written_total", "counter", "Files written (new or changed content).", num(&m.written)),
		one(n+"files_removed_total", "counter", "Files removed because their keys are gone.", num(&m.removed)),
		one(n+"keys_skipped_total", "counter", "Keys skipped because they do not map to a safe path.", num(&m.skipped)),
		one(n+"signals_sent_total", "counter", "Signals sent to the command after a change.", num(&m.signals)),
		one(n+"resyncs_total", "counter", "Full resyncs after the initial sync (compaction, wiped etcd, failed batch).", num(&m.resyncs)),
		one(n+"etcd_errors_total", "counter", "Failed etcd requests and watches (each is retried).", num(&m.etcdErrors)),
		applyErrors,
		one(n+"watch_lag_revisions", "gauge", "etcd's latest seen revision minus the applied revision.", m.lag()),
		one(n+"ready", "gauge", "1 when the initial sync is done and the watch is healthy.", ready),
		{name: n + "build_info", typ: "gauge", help: "Always 1; the version is a label.",
			samples: []sample{{labels: label("version", m.version), value: 1}}},
	}
}

// goFamilies are the Go runtime's go_* metrics, under the names client_golang's Go collector
// used.
func goFamilies() []family {
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	gc := debug.GCStats{PauseQuantiles: make([]time.Duration, 5)}
	debug.ReadGCStats(&gc)
	pauses := family{name: "go_gc_duration_seconds", typ: "summary", help: "Stop-the-world pause durations of the garbage collections."}
	for i, q := range []string{"0", "0.25", "0.5", "0.75", "1"} {
		pauses.samples = append(pauses.samples, sample{labels: label("quantile", q), value: gc.PauseQuantiles[i].Seconds()})
	}
	pauses.samples = append(pauses.samples, sample{suffix: "_sum", value: gc.PauseTotal.Seconds()},
		sample{suffix: "_count", value: float64(gc.NumGC)})
	rt := []rtmetrics.Sample{{Name: "/gc/gogc:percent"}, {Name: "/gc/gomemlimit:bytes"}, {Name: "/sched/gomaxprocs:threads"}}
	rtmetrics.Read(rt)
	rtValue := func(i int) float64 {
		if rt[i].Value.Kind() == rtmetrics.KindUint64 {
			return float64(rt[i].Value.Uint64())
		}
		return math.NaN()
	}
	threads, _ := runtime.ThreadCreateProfile(nil)
	mem := func(name, typ, help string, v uint64) family { return one("go_memstats_"+name, typ, help, float64(v)) }
	return []family{
		pauses,
		one("go_gc_gogc_percent", "gauge", "GOGC: the heap growth percentage that triggers a collection.", rtValue(0)),
		one("go_gc_gomemlimit_bytes", "gauge", "GOMEMLIMIT: the Go runtime's soft memory limit.", rtValue(1)),
		one("go_sched_gomaxprocs_threads", "gauge", "GOMAXPROCS: threads that can run Go code at once.", rtValue(2)),
		one("go_goroutines", "gauge", "Goroutines that exist.", float64(runtime.NumGoroutine())),
		one("go_threads", "gauge", "OS threads created.", float64(threads)),
		{name: "go_info", typ: "gauge", help: "The Go version, as a label.",
			samples: []sample{{labels: label("version", runtime.Version()), value: 1}}},
		mem("alloc_bytes", "gauge", "Heap bytes allocated and in use.", ms.Alloc),
		mem("alloc_bytes_total", "counter", "Heap bytes allocated, freed or not.", ms.TotalAlloc),
		mem("buck_hash_sys_bytes", "gauge", "Bytes of the profiling bucket hash table.", ms.BuckHashSys),
		mem("frees_total", "counter", "Heap objects freed.", ms.Frees),
		mem("gc_sys_bytes", "gauge", "Bytes of garbage collection metadata.", ms.GCSys),
		mem("heap_alloc_bytes", "gauge", "Heap bytes allocated and in use (as go_memstats_alloc_bytes).", ms.HeapAlloc),
		mem("heap_idle_bytes", "gauge", "Heap bytes in spans without objects.", ms.HeapIdle),
		mem("heap_inuse_bytes", "gauge", "Heap bytes in spans with objects.", ms.HeapInuse),
		mem("heap_objects", "gauge", "Heap objects allocated and in use.", ms.HeapObjects),
		mem("heap_released_bytes", "gauge", "Heap bytes returned to the OS.", ms.HeapReleased),
		mem("heap_sys_bytes", "gauge", "Heap bytes obtained from the OS.", ms.HeapSys),
		one("go_memstats_last_gc_time_seconds", "gauge", "Unix time of the last garbage collection.", float64(ms.LastGC)/1e9),
		mem("mallocs_total", "counter", "Heap objects allocated, freed or not.", ms.Mallocs),
		mem("mcache_inuse_bytes", "gauge", "Bytes of mcache structures in use.", ms.MCacheInuse),
		mem("mcache_sys_bytes", "gauge", "Bytes of mcache structures obtained from the OS.", ms.MCacheSys),
		mem("mspan_inuse_bytes", "gauge", "Bytes of mspan structures in use.", ms.MSpanInuse),
		mem("mspan_sys_bytes", "gauge", "Bytes of mspan structures obtained from the OS.", ms.MSpanSys),
		mem("next_gc_bytes", "gauge", "Heap size at which the next collection starts.", ms.NextGC),
		mem("other_sys_bytes", "gauge", "Bytes of other runtime allocations.", ms.OtherSys),
		mem("stack_inuse_bytes", "gauge", "Bytes of goroutine stacks in use.", ms.StackInuse),
		mem("stack_sys_bytes", "gauge", "Bytes of goroutine stacks obtained from the OS.", ms.StackSys),
		mem("sys_bytes", "gauge", "Bytes obtained from the OS.", ms.Sys),
	}
}

// userHZ is the unit of the CPU times and the start time in /proc/PID/stat: 100 on Linux.
const userHZ = 100

// processFamilies are the process_* metrics, read from /proc as client_golang's process
// collector did; a file that cannot be read leaves its metrics out.
func processFamilies() []family {
	var fams []family
	if stat, err := os.ReadFile("/proc/self/stat"); err == nil {
		// The fields after the command name, which is in parentheses and may hold spaces:
		// f[0] is the state (field 3 of proc(5)).
		f := strings.Fields(string(stat[bytes.LastIndexByte(stat, ')')+2:]))
		field := func(n int) float64 { v, _ := strconv.ParseFloat(f[n-3], 64); return v }
		if len(f) >= 22 {
			fams = append(fams,
				one("process_cpu_seconds_total", "counter", "User and system CPU time in seconds.", (field(14)+field(15))/userHZ),
				one("process_virtual_memory_bytes", "gauge", "Virtual memory size in bytes.", field(23)),
				one("process_resident_memory_bytes", "gauge", "Resident memory size in bytes.", field(24)*float64(os.Getpagesize())))
			if boot, ok := bootTime(); ok {
				fams = append(fams, one("process_start_time_seconds", "gauge", "Unix time of the process's start.", boot+field(22)/userHZ))
			}
		}
	}
	var lim syscall.Rlimit
	if syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim) == nil {
		fams = append(fams, one("process_max_fds", "gauge", "Limit of open file descriptors.", float64(lim.Cur)))
	}
	if syscall.Getrlimit(syscall.RLIMIT_AS, &lim) == nil {
		fams = append(fams, one("process_virtual_memory_max_bytes", "gauge", "Limit of virtual memory in bytes.", float64(lim.Cur)))
	}
	if fds, err := os.ReadDir("/proc/self/fd"); err == nil {
		fams = append(fams, one("process_open_fds", "gauge", "Open file descriptors.", float64(len(fds))))
	}
	if rx, tx, ok := netBytes(); ok {
		fams = append(fams,
			one("process_network_receive_bytes_total", "counter", "Bytes received on the process's network namespace's interfaces.", rx),
			one("process_network_transmit_bytes_total", "counter", "Bytes sent on the process's network namespace's interfaces.", tx))
	}
	return fams
}

// bootTime is the system's boot time in Unix seconds, from /proc/stat.
func bootTime() (float64, bool) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, false
	}
	for line := range strings.Lines(string(b)) {
		if rest, ok := strings.CutPrefix(line, "btime "); ok {
			v, err := strconv.ParseFloat(strings.TrimSpace(rest), 64)
			return v, err == nil
		}
	}
	return 0, false
}

// netBytes sums the bytes received and sent over every interface of /proc/self/net/dev.
func netBytes() (rx, tx float64, ok bool) {
	b, err := os.ReadFile("/proc/self/net/dev")
	if err != nil {
		return 0, 0, false
	}
	for line := range strings.Lines(string(b)) {
		_, counters, found := strings.Cut(line, ":")
		f := strings.Fields(counters)
		if !found || len(f) < 9 {
			continue // the two header lines
		}
		r, _ := strconv.ParseFloat(f[0], 64)
		t, _ := strconv.ParseFloat(f[8], 64)
		rx, tx = rx+r, tx+t
	}
	return rx, tx, true
}

// label renders one label pair, its value escaped as the text format wants.
func label(name, value string) string {
	return "{" + name + `="` + strings.NewReplacer(`\`, `\\`, `"`, `\"`, "\n", `\n`).Replace(value) + `"}`
}

func escapeHelp(s string) string {
	return strings.NewReplacer(`\`, `\\`, "\n", `\n`).Replace(s)
}

// formatValue writes a float as the text format (and client_golang) does: shortest 'g' form,
// +Inf, -Inf and NaN spelled out.
func formatValue(v float64) string {
	switch {
	case math.IsInf(v, 1):
		return "+Inf"
	case math.IsInf(v, -1):
		return "-Inf"
	case math.IsNaN(v):
		return "NaN"
	}
	return strconv.FormatFloat(v, 'g', -1, 64)
}
