// Package metrics counts what the dispenser does and serves it over HTTP: Prometheus metrics on
// /metrics, liveness on /healthz and readiness on /readyz. It knows nothing about etcd, files or
// processes; main and the source report events to it.
//
// Readiness means the child has its files and they follow etcd: the initial sync is done, the
// watch is healthy and the last batch could be applied. While etcd fails (or a full resync runs)
// /readyz answers 503 with the reason; while the target cannot take a batch (disk, template,
// check), it says so, naming the stage and a system error but never a key or path: /readyz is
// unauthenticated.
// A connection that dies silently is noticed by the source's periodic revision check
// (--check-interval plus its request timeout), not at once.
//
// Watch lag is measured in revisions: etcd's latest revision that the dispenser has seen (in any
// response header or progress notification) minus the applied revision. Writes outside the
// prefix raise etcd's revision without an event for us; the source's check (every
// --check-interval) lists the prefix's keys and, finding them unchanged, moves the applied
// revision to etcd's, which brings the lag back to 0.
package metrics

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

const namespace = "etcd_config_dispenser"

// Metrics holds the counters and the health state. Its methods are safe for concurrent use.
// A nil *Metrics ignores every event.
type Metrics struct {
	reg *prometheus.Registry

	applied, etcdRevision, lastBatch prometheus.Gauge
	batches, written, removed        prometheus.Counter
	skipped, signals, resyncs        prometheus.Counter
	etcdErrors                       prometheus.Counter
	applyErrors                      *prometheus.CounterVec

	mu         sync.Mutex
	appliedRev int64
	latestRev  int64
	synced     bool
	watching   bool
	reason     string // why the watch is not healthy
	applyFail  string // why the last batch could not be applied, until one is
}

// New registers the metrics on a private registry, with the Go runtime and process collectors.
func New(version string) *Metrics {
	m := &Metrics{reg: prometheus.NewRegistry(), reason: "etcd not reached yet"}
	gauge := func(name, help string) prometheus.Gauge {
		g := prometheus.NewGauge(prometheus.GaugeOpts{Namespace: namespace, Name: name, Help: help})
		m.reg.MustRegister(g)
		return g
	}
	counter := func(name, help string) prometheus.Counter {
		c := prometheus.NewCounter(prometheus.CounterOpts{Namespace: namespace, Name: name, Help: help})
		m.reg.MustRegister(c)
		return c
	}
	m.applied = gauge("applied_revision", "etcd revision up to which every change is in the target.")
	m.etcdRevision = gauge("etcd_revision", "Latest etcd revision seen in a response header or progress notification.")
	m.lastBatch = gauge("last_batch_timestamp_seconds", "Unix time of the last applied batch.")
	m.batches = counter("batches_applied_total", "Batches applied to the target (including those that changed nothing).")
	m.written = counter("files_written_total", "Files written (new or changed content).")
	m.removed = counter("files_removed_total", "Files removed because their keys are gone.")
	m.skipped = counter("keys_skipped_total", "Keys skipped because they do not map to a safe path.")
	m.signals = counter("signals_sent_total", "Signals sent to the command after a change.")
	m.resyncs = counter("resyncs_total", "Full resyncs after the initial sync (compaction, wiped etcd, failed batch).")
	m.etcdErrors = counter("etcd_errors_total", "Failed etcd requests and watches (each is retried).")
	m.applyErrors = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: namespace, Name: "apply_errors_total",
		Help: "Batches the target could not take (each is retried), by stage: files, template, check, target."},
		[]string{"stage"})
	m.reg.MustRegister(m.applyErrors)
	for _, stage := range []string{"files", "template", "check", "target"} {
		m.applyErrors.WithLabelValues(stage) // shown at 0 from the start
	}
	m.reg.MustRegister(
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: namespace, Name: "watch_lag_revisions",
			Help: "etcd's latest seen revision minus the applied revision."}, m.lag),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: namespace, Name: "ready",
			Help: "1 when the initial sync is done and the watch is healthy."}, func() float64 {
			if ok, _ := m.Ready(); ok {
				return 1
			}
			return 0
		}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: namespace, Name: "build_info",
			Help: "Always 1; the version is a label.", ConstLabels: prometheus.Labels{"version": version}},
			func() float64 { return 1 }),
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	return m
}

func (m *Metrics) lag() float64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	return float64(max(0, m.latestRev-m.appliedRev))
}

// Applied records that everything up to rev is applied (source.Observer).
func (m *Metrics) Applied(rev int64) {
	if m == nil {
		return
	}
	m.mu.Lock()
	m.appliedRev = rev
	m.latestRev = max(m.latestRev, rev)
	m.applyFail = ""
	m.mu.Unlock()
	m.applied.Set(float64(rev))
}

// EtcdRevision records etcd's revision from a response header (source.Observer). A revision
// below the latest one seen (a wiped etcd) replaces it.
func (m *Metrics) EtcdRevision(rev int64) {
	if m == nil {
		return
	}
	m.mu.Lock()
	m.latestRev = rev
	m.mu.Unlock()
	m.etcdRevision.Set(float64(rev))
}

// EtcdError counts a failed etcd request or watch (source.Observer).
func (m *Metrics) EtcdError(error) {
	if m == nil {
		return
	}
	m.etcdErrors.Inc()
}

// ApplyFailed counts a batch the target could not take, by stage, and makes /readyz fail until a
// batch is applied (source.Observer). The reason keeps only a system error's text (errno), as the
// rest may name keys.
func (m *Metrics) ApplyFailed(stage string, err error) {
	if m == nil {
		return
	}
	m.applyErrors.WithLabelValues(stage).Inc()
	reason := "applying to the target failed (" + stage + "); see the log"
	var errno syscall.Errno
	if errors.As(err, &errno) {
		reason = "applying to the target failed (" + stage + "): " + errno.Error()
	}
	m.mu.Lock()
	m.applyFail = reason
	m.mu.Unlock()
}

// Watching records whether the watch is healthy, and why not (source.Observer).
func (m *Metrics) Watching(ok bool, reason string) {
	if m == nil {
		return
	}
	m.mu.Lock()
	m.watching, m.reason = ok, reason
	m.mu.Unlock()
}

// Resync counts a full resync (source.Observer).
func (m *Metrics) Resync(string) {
	if m == nil {
		return
	}
	m.resyncs.Inc()
}

// BatchApplied counts one batch the writer applied and what it did to the files.
func (m *Metrics) BatchApplied(written, removed, skipped int) {
	if m == nil {
		return
	}
	m.batches.Inc()
	m.mu.Lock()
	m.applyFail = ""
	m.mu.Unlock()
	m.written.Add(float64(written))
	m.removed.Add(float64(removed))
	m.skipped.Add(float64(skipped))
	m.lastBatch.Set(float64(time.Now().UnixNano()) / 1e9)
}

// Synced records that the initial sync is done.
func (m *Metrics) Synced() {
	if m == nil {
		return
	}
	m.mu.Lock()
	m.synced = true
	m.mu.Unlock()
}

// SignalSent counts a signal sent to the command.
func (m *Metrics) SignalSent() {
	if m == nil {
		return
	}
	m.signals.Inc()
}

// Ready reports whether the initial sync is done and the watch is healthy, and if not, why.
func (m *Metrics) Ready() (bool, string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	switch {
	case m.applyFail != "" && !m.synced:
		return false, "initial sync not done: " + m.applyFail
	case m.applyFail != "":
		return false, m.applyFail
	case !m.synced && m.watching:
		return false, "initial sync not applied yet"
	case !m.synced:
		return false, "initial sync not done: " + m.reason
	case !m.watching:
		return false, m.reason
	}
	return true, ""
}

// Handler serves /metrics, /healthz and /readyz.
func (m *Metrics) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		ok, reason := m.Ready()
		if !ok {
			http.Error(w, "not ready: "+reason, http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	return mux
}

// Serve listens on addr and serves Handler until the returned stop function is called, which
// closes the listener and waits (up to a second) for requests in flight. A listen error is
// returned at once.
func (m *Metrics) Serve(addr string, log *slog.Logger) (stop func(), err error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listening on %s: %w", addr, err)
	}
	srv := &http.Server{Handler: m.Handler(), ReadHeaderTimeout: 10 * time.Second}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
			log.Error("the metrics and health server stopped", "err", err)
		}
	}()
	log.Info("serving metrics and health checks", "addr", ln.Addr().String())
	return func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			srv.Close()
		}
		<-done
	}, nil
}
