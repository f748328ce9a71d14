// Package config turns the command line into a Config. Every bad value is
// reported with the flag's name and what it accepts, so main can print one
// line and exit 2.
package config

import (
	"errors"
	"fmt"
	"io"
	"os/user"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/pflag"
	"golang.org/x/sys/unix"
)

// Config is everything the command line says.
type Config struct {
	Prefix        string
	Target        string
	Signal        syscall.Signal
	Mode          uint32
	UID, GID      int // -1: leave as created
	Layout        string
	Once          bool
	Fsync         bool
	KillTimeout   time.Duration
	SignalGroup   bool
	RewriteSignal map[syscall.Signal]syscall.Signal // --rewrite-signal: received → sent to the child; 0 drops
	RemapExit     []int                             // --remap-exit: exit codes reported as 0
	ParentDeath   syscall.Signal                    // --parent-death-signal; 0 for none
	StartTimeout  time.Duration
	CheckInterval time.Duration
	Coalesce      time.Duration
	Settle        time.Duration // least time each applied version stays live before the next
	PassSecrets   bool
	OnChange      string // signal, restart or none: what the command gets after each change
	DiscoverySRV  string // DNS domain whose SRV records name the etcd endpoints
	LogFormat     string
	LogLevel      string
	Listen        string // address of the metrics and health server; "" for none
	Version       bool
	Help          bool
	Command       []string
	Templating    // templates, check and reload commands (templates.go)
}

// ErrHelp is returned when --help was asked for; the usage was written.
var ErrHelp = pflag.ErrHelp

// Parse reads the arguments (without the program name). Usage and help go to
// out.
func Parse(args []string, out io.Writer) (Config, error) {
	c := Config{UID: -1, GID: -1}
	fs := pflag.NewFlagSet("etcd-config-dispenser", pflag.ContinueOnError)
	fs.SetOutput(out)
	fs.SetInterspersed(false) // the first non-flag word starts the child's command
	fs.SortFlags = false
	var signal, mode, owner, group string
	var rewriteSignal []string
	var parentDeath string
	fs.VarP(&onceString{p: &c.Prefix}, "prefix", "p", "etcd key prefix to mirror; a directory boundary (/app never matches /app2)")
	fs.StringVarP(&c.Target, "target", "t", "", "directory to mirror the keys into")
	fs.StringVarP(&signal, "signal", "s", "SIGHUP", "signal sent to the child after each applied change (name like SIGHUP or HUP, or a number)")
	fs.StringVarP(&mode, "mode", "m", "0600", "octal mode of the files written")
	fs.StringVarP(&owner, "owner", "o", "", "owner of the files written: user name or numeric uid")
	fs.StringVarP(&group, "group", "g", "", "group of the files written: group name or numeric gid")
	fs.StringVar(&c.OnChange, "on-change", "signal", "after each applied change: signal the command (--signal), restart it (SIGTERM, then start again), or none (files only)")
	fs.StringVar(&c.DiscoverySRV, "discovery-srv", "", "DNS domain whose SRV records (_etcd-client-ssl._tcp, _etcd-client._tcp) name the etcd endpoints; also ETCD_DISCOVERY_SRV")
	fs.StringVar(&c.Layout, "layout", "atomic", "atomic: versions swapped through a ..data symlink; plain: files replaced in place, one rename each")
	fs.BoolVar(&c.Once, "once", false, "sync once and exit 0 (exit 1 if the sync failed); for init containers")
	fs.BoolVar(&c.Fsync, "fsync", true, "fsync files and directories before a new version goes live")
	fs.DurationVar(&c.KillTimeout, "kill-timeout", 0, "time between a forwarded SIGTERM or SIGINT and our SIGKILL; 0: never, the orchestrator kills after its own grace (restarts and leftover processes: 10s)")
	fs.BoolVar(&c.SignalGroup, "signal-group", false, "send signals to the child's whole process group, not only the child")
	fs.StringArrayVar(&rewriteSignal, "rewrite-signal", nil, "FROM:TO: a FROM signal received is sent to the child as TO (TERM:QUIT for nginx's graceful stop; TO 0 drops it); repeatable (dumb-init -r)")
	fs.IntSliceVar(&c.RemapExit, "remap-exit", nil, "exit with 0 when the child's exit code is CODE, e.g. 143 for a JVM stopped by SIGTERM; repeatable (tini -e)")
	fs.StringVar(&parentDeath, "parent-death-signal", "", "when not PID 1: the signal we get when our parent dies, e.g. SIGTERM, so the child does not outlive a killed supervisor (tini -p)")
	fs.DurationVar(&c.StartTimeout, "start-timeout", 0, "give up when the first sync has not succeeded after this long (0: wait forever; with --once: 1m)")
	fs.DurationVar(&c.CheckInterval, "check-interval", 30*time.Second, "how often to list the prefix's keys (keys only) and compare them with what was applied, to catch a wiped or restored etcd")
	fs.DurationVar(&c.Coalesce, "coalesce", 50*time.Millisecond, "during a burst, apply at most one batch (and send one signal) per DURATION, merging what arrives meanwhile; a change that finds the dispenser idle goes at once (0: never hold)")
	fs.DurationVar(&c.Settle, "settle", time.Second, "keep each applied version live at least DURATION after its signal, so the command reads all its files from it; changes meanwhile are merged, a change after it is applied at once (0: off)")
	fs.BoolVar(&c.PassSecrets, "pass-etcd-secrets", false, "pass ETCD_PASSWORD, ETCD_USERNAME_AND_PASSWORD and ETCD_CLIENT_KEY on to the child")
	fs.StringVar(&c.LogFormat, "log-format", "text", "log format: text or json")
	fs.StringVar(&c.LogLevel, "log-level", "info", "log level: debug, info, warn or error")
	fs.StringVar(&c.Listen, "listen", "", "serve /metrics, /healthz and /readyz over HTTP on this address, e.g. :9090 (default off)")
	fs.BoolVar(&c.Version, "version", false, "print the version and exit")
	fs.BoolVarP(&c.Help, "help", "h", false, "print this help and exit")
	checkTemplating := templatingFlags(fs, &c.Templating)
	fs.Usage = func() {
		fmt.Fprintf(out, "Usage: etcd-config-dispenser --prefix=/key/prefix --target=/dir [flags] [-- command args...]\n\n"+
			"Mirrors an etcd prefix into a directory, starts the command, and signals it after each change.\n"+
			"Without a command it keeps the directory in sync (a sidecar). etcd is configured with ETCD_* variables.\n\nFlags:\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	if c.Help {
		fs.Usage()
		return c, ErrHelp
	}
	if c.Version {
		return c, nil
	}
	c.Command = fs.Args()

	var errs []error
	check := func(err error) {
		if err != nil {
			errs = append(errs, err)
		}
	}
	var err error
	c.Signal, err = ParseSignal(signal)
	check(flagErr("signal", err))
	c.RewriteSignal, err = parseRewrites(rewriteSignal)
	check(flagErr("rewrite-signal", err))
	for _, code := range c.RemapExit {
		if code < 0 || code > 255 {
			check(fmt.Errorf("--remap-exit %d: an exit code is between 0 and 255", code))
		}
	}
	if parentDeath != "" {
		c.ParentDeath, err = ParseSignal(parentDeath)
		check(flagErr("parent-death-signal", err))
	}
	c.Mode, err = parseMode(mode)
	check(flagErr("mode", err))
	if owner != "" {
		c.UID, err = lookupID(owner, "user", func(n string) (string, error) {
			u, err := user.Lookup(n)
			if err != nil {
				return "", err
			}
			return u.Uid, nil
		})
		check(flagErr("owner", err))
	}
	if group != "" {
		c.GID, err = lookupID(group, "group", func(n string) (string, error) {
			g, err := user.LookupGroup(n)
			if err != nil {
				return "", err
			}
			return g.Gid, nil
		})
		check(flagErr("group", err))
	}
	if c.Layout != "atomic" && c.Layout != "plain" {
		check(fmt.Errorf("--layout %q: accepted values are atomic and plain", c.Layout))
	}
	switch c.OnChange {
	case "signal", "restart", "none":
	default:
		check(fmt.Errorf("--on-change %q: accepted values are signal, restart and none", c.OnChange))
	}
	if c.LogFormat != "text" && c.LogFormat != "json" {
		check(fmt.Errorf("--log-format %q: accepted values are text and json", c.LogFormat))
	}
	switch c.LogLevel {
	case "debug", "info", "warn", "error":
	default:
		check(fmt.Errorf("--log-level %q: accepted values are debug, info, warn and error", c.LogLevel))
	}
	for _, d := range []struct {
		name  string
		value time.Duration
	}{{"kill-timeout", c.KillTimeout}, {"start-timeout", c.StartTimeout}, {"coalesce", c.Coalesce}} {
		if d.value < 0 {
			check(fmt.Errorf("--%s %v: must not be negative", d.name, d.value))
		}
	}
	if c.CheckInterval <= 0 {
		check(fmt.Errorf("--check-interval %v: must be positive", c.CheckInterval))
	}
	check(flagErr("listen", checkListen(c.Listen)))
	if c.Settle < 0 {
		check(fmt.Errorf("--settle %v: must not be negative (0 turns it off)", c.Settle))
	}
	if c.Once && len(c.Command) > 0 {
		check(fmt.Errorf("--once syncs and exits, so it takes no command (got %q): drop --once to run the command", c.Command[0]))
	}
	errs = append(errs, checkTemplating(&c)...)
	templatesOnly := len(c.Templates) > 0 && c.Target == "" // nothing mirrored: --prefix optional
	if c.Target == "" && len(c.Templates) == 0 {
		check(errors.New("--target is required: the directory to write the files into (or give --template or --config-dir to render templates only)"))
	}
	if c.Prefix == "" && !templatesOnly {
		check(errors.New("--prefix is required: the etcd key prefix to mirror, for example --prefix=/certificates"))
	}
	if c.Once && c.StartTimeout == 0 {
		c.StartTimeout = time.Minute
	}
	return c, errors.Join(errs...)
}

func flagErr(name string, err error) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf("--%s %w", name, err)
}

// ParseSignal accepts SIGHUP, HUP, hup, SIGRTMIN+3, RTMAX-1 or a number.
func ParseSignal(s string) (syscall.Signal, error) {
	const rtmin, rtmax = 34, 64 // as glibc and musl expose them to programs
	bad := fmt.Errorf("%q: not a signal; use a name like SIGHUP, HUP or SIGUSR1, SIGRTMIN+N, or a number from 1 to %d", s, rtmax)
	if n, err := strconv.Atoi(s); err == nil {
		if n < 1 || n > rtmax {
			return 0, bad
		}
		return syscall.Signal(n), nil
	}
	name := strings.ToUpper(strings.TrimSpace(s))
	if !strings.HasPrefix(name, "SIG") {
		name = "SIG" + name
	}
	for base, n := range map[string]int{"SIGRTMIN": rtmin, "SIGRTMAX": rtmax} {
		if rest, ok := strings.CutPrefix(name, base); ok {
			off := 0
			if rest != "" {
				var err error
				if off, err = strconv.Atoi(rest); err != nil || (rest[0] != '+' && rest[0] != '-') {
					return 0, bad
				}
			}
			if n+off < rtmin || n+off > rtmax {
				return 0, bad
			}
			return syscall.Signal(n + off), nil
		}
	}
	if sig := unix.SignalNum(name); sig != 0 {
		return sig, nil
	}
	return 0, bad
}

func parseMode(s string) (uint32, error) {
	t := strings.TrimPrefix(strings.TrimPrefix(s, "0o"), "0O")
	n, err := strconv.ParseUint(t, 8, 32)
	if err != nil || n > 0o7777 || n == 0 {
		return 0, fmt.Errorf("%q: not a file mode; use octal digits like 0600, 0640 or 0644", s)
	}
	if n > 0o777 {
		return 0, fmt.Errorf("%q: has the setuid, setgid or sticky bit (%04o); files get permission bits only, like 0600, 0640 or 0644", s, n&^0o777)
	}
	return uint32(n), nil
}

// lookupID takes a number as it is (a FROM scratch image has no /etc/passwd)
// and looks a name up.
func lookupID(s, kind string, lookup func(string) (string, error)) (int, error) {
	if n, err := strconv.Atoi(s); err == nil {
		if n < 0 || n > 1<<32-2 {
			return 0, fmt.Errorf("%q: a numeric %s id must be from 0 to 4294967294", s, kind)
		}
		return n, nil
	}
	id, err := lookup(s)
	if err != nil {
		return 0, fmt.Errorf("%q: no such %s (%v); give a numeric id in images without /etc/passwd or /etc/group", s, kind, err)
	}
	return strconv.Atoi(id)
}

// parseRewrites reads --rewrite-signal values, FROM:TO each; TO may be 0 (drop).
func parseRewrites(pairs []string) (map[syscall.Signal]syscall.Signal, error) {
	if len(pairs) == 0 {
		return nil, nil
	}
	m := map[syscall.Signal]syscall.Signal{}
	for _, pair := range pairs {
		from, to, ok := strings.Cut(pair, ":")
		if !ok {
			return nil, fmt.Errorf("%q: use FROM:TO, e.g. TERM:QUIT, or TERM:0 to drop it", pair)
		}
		f, err := ParseSignal(from)
		if err != nil {
			return nil, err
		}
		if f == syscall.SIGKILL || f == syscall.SIGSTOP || f == syscall.SIGCHLD {
			return nil, fmt.Errorf("%q: %s cannot be caught or is the dispenser's own", pair, from)
		}
		var t syscall.Signal
		if to != "0" {
			if t, err = ParseSignal(to); err != nil {
				return nil, err
			}
		}
		m[f] = t
	}
	return m, nil
}

// onceString is a string flag that refuses to be given twice, so that a second --prefix is
// never silently dropped.
type onceString struct {
	p   *string
	set bool
}

func (o *onceString) String() string {
	if o.p == nil {
		return ""
	}
	return *o.p
}

func (o *onceString) Set(v string) error {
	if o.set {
		return fmt.Errorf("given twice (%s and %s): one dispenser mirrors one prefix; run one per prefix, or pick the common parent with --include", *o.p, v)
	}
	*o.p, o.set = v, true
	return nil
}

func (o *onceString) Type() string { return "string" }
