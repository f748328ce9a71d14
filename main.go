// Command etcd-config-dispenser mirrors an etcd prefix into a directory,
// starts the real program, and signals it after each applied change.
package main

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"
	"syscall"
	"time"

	clientconfig "github.com/Jille/etcd-client-from-env"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/etcd-config-dispenser/etcd-config-dispenser/apply"
	"github.com/etcd-config-dispenser/etcd-config-dispenser/config"
	"github.com/etcd-config-dispenser/etcd-config-dispenser/discovery"
	"github.com/etcd-config-dispenser/etcd-config-dispenser/metrics"
	"github.com/etcd-config-dispenser/etcd-config-dispenser/source"
	"github.com/etcd-config-dispenser/etcd-config-dispenser/supervisor"
	"github.com/etcd-config-dispenser/etcd-config-dispenser/writer"
)

// version is stamped at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	quietGRPCInfo()
	os.Exit(run(os.Args[1:]))
}

func run(args []string) int {
	cfg, err := config.Parse(args, os.Stderr)
	if err == nil && !cfg.Version {
		err = cfg.Validate() // files and environment: bad input is exit 2 before anything is touched
	}
	switch {
	case errors.Is(err, config.ErrHelp):
		return 0
	case err != nil:
		// One line per bad value, each naming the flag and the value.
		fmt.Fprintf(os.Stderr, "etcd-config-dispenser: %v\n", strings.ReplaceAll(err.Error(), "\n", "\netcd-config-dispenser: "))
		return 2
	case cfg.Version:
		fmt.Println("etcd-config-dispenser", version)
		return 0
	}
	log := newLogger(cfg)

	etcdCfg, err := etcdConfig(cfg)
	if err != nil {
		fmt.Fprintf(os.Stderr, "etcd-config-dispenser: etcd settings from the environment: %v\n", err)
		return 2
	}
	domain, err := discovery.Domain(cfg.DiscoverySRV, os.Getenv)
	if err != nil {
		fmt.Fprintf(os.Stderr, "etcd-config-dispenser: %v\n", err)
		return 2
	}
	var m *metrics.Metrics // nil (counting nothing) without --listen
	if cfg.Listen != "" && !cfg.DryRun {
		m = metrics.New(version)
		stop, err := m.Serve(cfg.Listen, log)
		if err != nil {
			log.Error("cannot serve metrics and health checks", "err", err)
			return 1
		}
		defer stop()
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var src *startedSource
	if domain == "" && !cfg.DryRun {
		// The endpoints are known: the source connects and reads the first page while we take
		// over signals and open the target. Its first apply waits for them.
		src = startSource(ctx, cfg, etcdCfg, m, log)
	}

	// Take over signals and reaping first: we may be PID 1.
	sup, err := supervisor.New(supervisor.Options{KillTimeout: cfg.KillTimeout, ProcessGroup: cfg.SignalGroup, Logger: log,
		Rewrite: cfg.RewriteSignal, SuccessCodes: cfg.RemapExit, ParentDeathSignal: cfg.ParentDeath})
	if err != nil {
		log.Error("cannot supervise", "err", err)
		src.stop(cancel)
		return 1
	}
	if domain != "" {
		if code := discoverEndpoints(domain, &etcdCfg, log); code != 0 {
			sup.Shutdown()
			return code
		}
	}
	if cfg.DryRun {
		// Dial retries while etcd is unreachable (with a username, creating a client needs etcd).
		// The running dispenser's source creates its own client the same way.
		ctx, cancel := context.WithTimeout(context.Background(), cmp.Or(cfg.StartTimeout, time.Minute))
		defer cancel()
		client, err := source.Dial(ctx, etcdCfg, log)
		if err != nil {
			log.Error("dry run: cannot connect to etcd", "endpoints", etcdCfg.Endpoints, "err", err)
			return 1
		}
		defer client.Close()
		return apply.DryRun(cfg, client, log, os.Stdout)
	}
	if src == nil {
		src = startSource(ctx, cfg, etcdCfg, m, log)
	}

	layout := writer.Atomic
	if cfg.Layout == "plain" {
		layout = writer.Plain
	}
	var w *writer.Writer // nil without --target: templates only
	if cfg.Target != "" {
		w, err = writer.Open(writer.Options{Dir: cfg.Target, Layout: layout, Mode: os.FileMode(cfg.Mode),
			UID: cfg.UID, GID: cfg.GID, NoSync: !cfg.Fsync, Logger: log, Check: apply.MirrorCheck(cfg, sup)})
		if err != nil {
			log.Error("cannot use the target directory", "target", cfg.Target, "err", err)
			src.stop(cancel)
			sup.Shutdown()
			return 1
		}
		defer w.Close()
	}
	d, err := apply.New(apply.Options{Config: cfg, Writer: w, Child: sup, Metrics: m, Logger: log})
	if err != nil {
		fmt.Fprintf(os.Stderr, "etcd-config-dispenser: --%v\n", err)
		src.stop(cancel)
		sup.Shutdown()
		return 2
	}
	defer d.Stop() // before the writer closes: deferred calls run last first
	src.applyThrough(d)
	srcDone := src.done
	initPages := time.AfterFunc(initPagesDelay, releaseInitPages)

	select {
	case err := <-srcDone: // with --once, or when the start timeout expired
		if cfg.Once && err == nil {
			return sup.Shutdown()
		}
		// Name what failed: etcd, or the target (disk, template, check).
		last := src.LastError()
		var ae *source.ApplyError
		switch {
		case errors.As(last, &ae):
			log.Error("the first sync did not succeed in time: applying to the target failed", "stage", ae.Stage,
				"start_timeout", cfg.StartTimeout, "err", ae.Err)
		case last != nil:
			log.Error("the first sync did not succeed in time: etcd unreachable or failing",
				"start_timeout", cfg.StartTimeout, "err", last)
		default:
			log.Error("the first sync did not succeed in time", "start_timeout", cfg.StartTimeout)
		}
		sup.Shutdown()
		return 1
	case err := <-d.Started():
		if err != nil {
			cancel()
			<-srcDone
			sup.Shutdown()
			var se *supervisor.StartError
			if errors.As(err, &se) {
				fmt.Fprintln(os.Stderr, se.Error())
				return se.Code
			}
			return 126
		}
	case sig := <-sup.Terminated():
		log.Info("stopping before the command started", "signal", sig.String())
		cancel()
		<-srcDone
		sup.Shutdown()
		if len(cfg.Command) == 0 {
			return 0
		}
		return 128 + int(sig.(syscall.Signal))
	}

	initPages.Stop() // releaseStartMemory lets go of them, and of more
	releaseStartMemory()
	if cfg.Once {
		if err := <-srcDone; err != nil {
			return 1
		}
		log.Info("synced once; exiting")
		return sup.Shutdown()
	}
	if len(cfg.Command) == 0 { // a sidecar: sync until told to stop
		sig := <-sup.Terminated()
		log.Info("stopping", "signal", sig.String())
		cancel()
		<-srcDone
		return sup.Shutdown()
	}
	<-sup.Done()
	cancel()
	<-srcDone
	code := sup.Shutdown()
	log.Info("command exited; stopping", "exit_code", code)
	return code
}

// etcdConfig is the etcd client's configuration from the environment (ETCD_ENDPOINTS...) and
// reconfig's --host, --port and --ssl_* options.
func etcdConfig(cfg config.Config) (clientv3.Config, error) {
	for k, v := range cfg.EtcdEnv {
		os.Setenv(k, v)
	}
	etcdCfg := clientconfig.Defaults()
	etcdCfg.Endpoints = []string{"127.0.0.1:2379"}
	etcdCfg, err := clientconfig.Apply(etcdCfg)
	if err != nil {
		return etcdCfg, err
	}
	etcdCfg.Logger = zap.NewNop()
	etcdCfg.DialKeepAliveTime = 30 * time.Second
	etcdCfg.DialKeepAliveTimeout = 10 * time.Second
	return etcdCfg, nil
}

// discoverEndpoints replaces the endpoints with those of the DNS SRV records of domain
// (--discovery-srv or ETCD_DISCOVERY_SRV). ETCD_DISCOVERY_DNS (host:port), for tests only,
// sends the lookups to that DNS server. It returns an exit code, 0 to go on.
func discoverEndpoints(domain string, etcdCfg *clientv3.Config, log *slog.Logger) int {
	var r *net.Resolver
	if addr := os.Getenv("ETCD_DISCOVERY_DNS"); addr != "" {
		r = discovery.Resolver(addr)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var err error
	if etcdCfg.Endpoints, err = discovery.Endpoints(ctx, r, domain); err != nil {
		log.Error("DNS discovery of the etcd endpoints failed", "domain", domain, "err", err)
		return 1
	}
	log.Info("etcd endpoints discovered", "domain", domain, "endpoints", etcdCfg.Endpoints)
	return 0
}

// startedSource is the source running before the apply path exists: its first apply waits
// until applyThrough gives it one.
type startedSource struct {
	*source.Source
	done   chan error // Run's result
	apply  source.ApplyFunc
	ready  chan struct{} // closed once apply is set
	lifted func()        // stops the start timeout; nil without one
}

// startSource starts the source's Run; the start timeout (--start-timeout) covers it until
// the first batch is applied.
func startSource(ctx context.Context, cfg config.Config, etcdCfg clientv3.Config, m *metrics.Metrics, log *slog.Logger) *startedSource {
	s := &startedSource{done: make(chan error, 1), ready: make(chan struct{})}
	s.Source = source.New(source.Options{Config: etcdCfg, Prefix: cfg.Prefix, Once: cfg.Once,
		CheckInterval: cfg.CheckInterval, Coalesce: cfg.Coalesce, Logger: log, Observer: m})
	log.Info("starting", "version", version, "prefix", source.NormalizePrefix(cfg.Prefix), "target", cfg.Target,
		"endpoints", etcdCfg.Endpoints, "pid", os.Getpid())
	runCtx := ctx
	if cfg.StartTimeout > 0 {
		var stopTimer context.CancelFunc
		runCtx, stopTimer = context.WithCancel(ctx)
		timer := time.AfterFunc(cfg.StartTimeout, stopTimer)
		s.lifted = func() { timer.Stop() }
	}
	go func() {
		s.done <- s.Run(runCtx, func(ctx context.Context, b source.Batch) error {
			select {
			case <-s.ready:
			case <-ctx.Done():
				return ctx.Err()
			}
			return s.apply(ctx, b)
		})
	}()
	return s
}

// applyThrough lets the source apply its batches through d.
func (s *startedSource) applyThrough(d *apply.Pipeline) {
	if s.lifted != nil {
		d.FirstApplied(s.lifted)
	}
	d.DelayedFailures(s.Failed)
	s.apply = d.Func()
	close(s.ready)
}

// stop ends the source before anything was applied. A nil s is not running.
func (s *startedSource) stop(cancel context.CancelFunc) {
	if s == nil {
		return
	}
	cancel()
	<-s.done
}

func newLogger(cfg config.Config) *slog.Logger {
	var level slog.Level
	_ = level.UnmarshalText([]byte(cfg.LogLevel))
	opts := &slog.HandlerOptions{Level: level}
	var h slog.Handler = slog.NewTextHandler(os.Stderr, opts)
	if cfg.LogFormat == "json" {
		h = slog.NewJSONHandler(os.Stderr, opts)
	}
	return slog.New(h)
}
