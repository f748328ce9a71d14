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

	"github.com/etcd-config-dispenser/etcd-config-dispenser/config"
	"github.com/etcd-config-dispenser/etcd-config-dispenser/discovery"
	"github.com/etcd-config-dispenser/etcd-config-dispenser/metrics"
	"github.com/etcd-config-dispenser/etcd-config-dispenser/quiesce"
	"github.com/etcd-config-dispenser/etcd-config-dispenser/render"
	"github.com/etcd-config-dispenser/etcd-config-dispenser/source"
	"github.com/etcd-config-dispenser/etcd-config-dispenser/supervisor"
	"github.com/etcd-config-dispenser/etcd-config-dispenser/writer"
)

// version is stamped at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() { os.Exit(run(os.Args[1:])) }

func run(args []string) int {
	cfg, err := config.Parse(args, os.Stderr)
	switch {
	case errors.Is(err, config.ErrHelp):
		return 0
	case err != nil:
		fmt.Fprintf(os.Stderr, "etcd-config-dispenser: %v\nRun etcd-config-dispenser --help for the flags.\n",
			strings.ReplaceAll(err.Error(), "\n", "\netcd-config-dispenser: "))
		return 2
	case cfg.Version:
		fmt.Println("etcd-config-dispenser", version)
		return 0
	}
	log := newLogger(cfg)

	// Take over signals and reaping first: we may be PID 1.
	sup, err := supervisor.New(supervisor.Options{KillTimeout: cfg.KillTimeout, ProcessGroup: cfg.SignalGroup, Logger: log})
	if err != nil {
		log.Error("cannot supervise", "err", err)
		return 1
	}

	etcdCfg := clientconfig.Defaults()
	etcdCfg.Endpoints = []string{"127.0.0.1:2379"}
	etcdCfg, err = clientconfig.Apply(etcdCfg)
	if err != nil {
		fmt.Fprintf(os.Stderr, "etcd-config-dispenser: etcd settings from the environment: %v\n", err)
		return 2
	}
	if code := discoverEndpoints(cfg, &etcdCfg, log); code != 0 {
		sup.Shutdown()
		return code
	}
	etcdCfg.Logger = zap.NewNop()
	etcdCfg.DialKeepAliveTime = 30 * time.Second
	etcdCfg.DialKeepAliveTimeout = 10 * time.Second
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
		return dryRun(cfg, client, log, os.Stdout)
	}

	layout := writer.Atomic
	if cfg.Layout == "plain" {
		layout = writer.Plain
	}
	w, err := writer.Open(writer.Options{Dir: cfg.Target, Layout: layout, Mode: os.FileMode(cfg.Mode),
		UID: cfg.UID, GID: cfg.GID, NoSync: !cfg.Fsync, Logger: log, Check: versionCheck(cfg, sup)})
	if err != nil {
		log.Error("cannot use the target directory", "target", cfg.Target, "err", err)
		return 1
	}
	defer w.Close()
	r, err := newRenderer(cfg, sup, log)
	if err != nil {
		fmt.Fprintf(os.Stderr, "etcd-config-dispenser: --%v\n", err)
		sup.Shutdown()
		return 2
	}

	var m *metrics.Metrics // nil (counting nothing) without --listen
	if cfg.Listen != "" {
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
	d := &dispenser{cfg: cfg, log: log, sup: sup, w: w, r: r, m: m, started: make(chan error, 1)}
	src := source.New(source.Options{Config: etcdCfg, Prefix: cfg.Prefix, Once: cfg.Once,
		CheckInterval: cfg.CheckInterval, Coalesce: cfg.Coalesce, Logger: log, Observer: m})
	log.Info("starting", "version", version, "prefix", source.NormalizePrefix(cfg.Prefix), "target", cfg.Target,
		"endpoints", etcdCfg.Endpoints, "pid", os.Getpid())

	runCtx := ctx
	if cfg.StartTimeout > 0 {
		// The timeout covers only the first sync; it is lifted once the
		// first batch is applied.
		var stopTimer context.CancelFunc
		runCtx, stopTimer = context.WithCancel(ctx)
		timer := time.AfterFunc(cfg.StartTimeout, stopTimer)
		d.firstApplied = func() { timer.Stop() }
	}
	srcDone := make(chan error, 1)
	apply := d.applyFunc()
	defer d.stop() // before the writer closes: deferred calls run last first
	go func() { srcDone <- src.Run(runCtx, apply) }()

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
	case err := <-d.started:
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

// discoverEndpoints replaces the endpoints with those of the DNS SRV records when
// --discovery-srv or ETCD_DISCOVERY_SRV is set. ETCD_DISCOVERY_DNS (host:port), for tests
// only, sends the lookups to that DNS server. It returns an exit code, 0 to go on.
func discoverEndpoints(cfg config.Config, etcdCfg *clientv3.Config, log *slog.Logger) int {
	domain, err := discovery.Domain(cfg.DiscoverySRV, os.Getenv)
	if err != nil {
		fmt.Fprintf(os.Stderr, "etcd-config-dispenser: %v\n", err)
		return 2
	}
	if domain == "" {
		return 0
	}
	var r *net.Resolver
	if addr := os.Getenv("ETCD_DISCOVERY_DNS"); addr != "" {
		r = discovery.Resolver(addr)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if etcdCfg.Endpoints, err = discovery.Endpoints(ctx, r, domain); err != nil {
		log.Error("DNS discovery of the etcd endpoints failed", "domain", domain, "err", err)
		return 1
	}
	log.Info("etcd endpoints discovered", "domain", domain, "endpoints", etcdCfg.Endpoints)
	return 0
}

// dispenser connects the three parts: each batch from the source goes to the
// writer; the first one starts the child, later ones that changed something
// signal it.
type dispenser struct {
	cfg          config.Config
	log          *slog.Logger
	sup          *supervisor.Supervisor
	w            *writer.Writer
	r            *render.Renderer // nil without templates
	quiet        *quiesce.Buffer  // nil without --wait
	m            *metrics.Metrics // nil without --listen: counts nothing
	started      chan error       // receives once, when the first batch has been applied
	first        bool
	firstApplied func()
}

func (d *dispenser) apply(ctx context.Context, b source.Batch) error {
	wb := writer.Batch{Revision: b.Revision, Full: b.Full, Changes: make([]writer.Change, len(b.Changes))}
	for i, c := range b.Changes {
		wb.Changes[i] = writer.Change(c)
	}
	d.fold(b)
	res, err := d.w.Apply(wb)
	if err != nil {
		if d.checkFailed(err, b.Revision) && d.first {
			return nil
		}
		return err
	}
	rendered, err := d.render()
	if err != nil {
		return err
	}
	d.m.BatchApplied(res.Written, res.Removed, res.Skipped)
	if !d.first {
		d.first = true
		d.m.Synced()
		if d.firstApplied != nil {
			d.firstApplied()
		}
		if len(d.cfg.Command) > 0 && !d.cfg.Once {
			d.started <- d.sup.Start(d.cfg.Command, childEnv(os.Environ(), d.cfg.PassSecrets))
		} else {
			d.started <- nil
		}
		return nil
	}
	if res.Changed || rendered {
		d.notify(ctx, b.Revision)
	}
	return nil
}

// secretEnv are the variables that hold credentials themselves; the child
// does not get them unless asked (their _FILE variants only name a path).
var secretEnv = []string{"ETCD_PASSWORD", "ETCD_USERNAME_AND_PASSWORD", "ETCD_CLIENT_KEY"}

func childEnv(env []string, passSecrets bool) []string {
	if passSecrets {
		return env
	}
	out := env[:0:0]
	for _, kv := range env {
		name, _, _ := strings.Cut(kv, "=")
		secret := false
		for _, s := range secretEnv {
			secret = secret || name == s
		}
		if !secret {
			out = append(out, kv)
		}
	}
	return out
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
