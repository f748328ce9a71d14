package config

import (
	"errors"
	"fmt"
	"maps"
	"net"
	"os"
	"os/exec"
	"slices"
	"strings"

	"github.com/etcd-config-dispenser/etcd-config-dispenser/hook"
	"github.com/etcd-config-dispenser/etcd-config-dispenser/render"
)

// Validate finds what Parse cannot, because it is outside the command line: a target that is
// a file, a template that is missing or does not parse, a check or reload program that is not
// there, a bad ETCD_* variable. A mistake there would otherwise show only after the target
// was created or etcd was read. Validate changes nothing; main calls it before anything else.
func (c Config) Validate() error {
	errs := append([]error{checkTarget(c.Target)}, checkFiles(c)...)
	return errors.Join(append(errs, CheckEnv(c.DiscoverySRV))...)
}

// checkTarget refuses a target that exists and is not a directory.
func checkTarget(target string) error {
	if target == "" {
		return nil
	}
	st, err := os.Stat(target)
	if err != nil || st.IsDir() {
		return nil // missing: it is created; unreadable: the writer says why
	}
	return fmt.Errorf("--target %s: exists and is not a directory", target)
}

// checkListen accepts HOST:PORT with HOST empty, an IP address or a host name, and PORT a
// number or a service name.
func checkListen(addr string) error {
	if addr == "" {
		return nil
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("%q: not HOST:PORT; use :9090, 127.0.0.1:9090 or [::1]:9090", addr)
	}
	if host != "" && !ValidHost(host) {
		return fmt.Errorf("%q: %q is not an IP address or a host name", addr, host)
	}
	if _, err := net.LookupPort("tcp", port); err != nil || port == "" {
		return fmt.Errorf("%q: %q is not a port (0 to 65535)", addr, port)
	}
	return nil
}

// ValidHost reports whether h is an IP address or a syntactically valid host name.
func ValidHost(h string) bool {
	if net.ParseIP(h) != nil {
		return true
	}
	h = strings.TrimSuffix(h, ".")
	if h == "" || len(h) > 253 {
		return false
	}
	for _, label := range strings.Split(h, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for _, r := range label {
			if !('a' <= r && r <= 'z' || 'A' <= r && r <= 'Z' || '0' <= r && r <= '9' || r == '-' || r == '_') {
				return false
			}
		}
	}
	return true
}

// checkFiles reads and parses every template and finds the programs of the check and reload
// commands, so that a missing file is reported now, not after the first sync.
func checkFiles(c Config) []error {
	var errs []error
	for _, s := range c.Templates {
		if _, err := render.New(render.Options{Templates: []render.Spec{s}}); err != nil {
			flag := fmt.Sprintf("--template %s:%s", s.Src, s.Dest)
			if _, ok := c.Hooks[s.Dest]; ok {
				flag = "--config-dir binding of " + s.Dest
			}
			errs = append(errs, fmt.Errorf("%s: %w", flag, err))
		}
	}
	type named struct {
		flag string
		cmd  hook.Command
	}
	// Without templates --check-cmd checks the mirror, and is kept as MirrorCheck.
	cmds := []named{{"--check-cmd", c.Check}, {"--check-mirror-cmd", c.MirrorCheck}, {"--reload-cmd", c.Reload}}
	if len(c.Templates) == 0 && len(c.Check.Argv) == 0 {
		cmds[1].flag = "--check-cmd"
	}
	for _, dest := range slices.Sorted(maps.Keys(c.Hooks)) {
		h := c.Hooks[dest]
		cmds = append(cmds, named{"--config-dir checkcmd of " + dest, h.Check}, named{"--config-dir reloadcmd of " + dest, h.Reload})
	}
	for _, f := range cmds {
		if len(f.cmd.Argv) == 0 || strings.Contains(f.cmd.Argv[0], "{{") {
			continue
		}
		if _, err := exec.LookPath(f.cmd.Argv[0]); err != nil {
			errs = append(errs, fmt.Errorf("%s %q: %v", f.flag, strings.Join(f.cmd.Argv, " "), err))
		}
	}
	return errs
}
