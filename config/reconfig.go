package config

import (
	"errors"
	"fmt"
	"net"
	"path"
	"strconv"
	"strings"

	"github.com/spf13/pflag"
)

// reconfigFlags adds reconfig's options that have no name of ours, and returns the function
// that maps them onto the Config once fs is parsed. reconfig's short -o (--onetime) and -s
// (--ssl) keep the original dispenser's meaning (--owner, --signal).
func reconfigFlags(fs *pflag.FlagSet) func(c *Config) []error {
	var onetime, notreally, debug, ssl bool
	var srv, host, port, cafile, cert, key, passphrase string
	fs.BoolVar(&onetime, "onetime", false, "reconfig's name of --once")
	fs.BoolVarP(&notreally, "notreally", "n", false, "reconfig's name of --dry-run")
	fs.BoolVarP(&debug, "debug", "d", false, "reconfig's option: --log-level=debug")
	fs.StringVar(&srv, "srv", "", "reconfig's name of --discovery-srv")
	fs.StringVar(&host, "host", "", "reconfig's option: the etcd host (ETCD_ENDPOINTS=HOST:PORT)")
	fs.StringVar(&port, "port", "", "reconfig's option: the etcd port, with --host (default 2379)")
	fs.BoolVar(&ssl, "ssl", false, "reconfig's option: connect to --host over TLS")
	fs.StringVar(&cafile, "ssl_cafile", "", "reconfig's option: ETCD_SERVER_CA_FILE")
	fs.StringVar(&cert, "ssl_cert", "", "reconfig's option: ETCD_CLIENT_CERT_FILE")
	fs.StringVar(&key, "ssl_key", "", "reconfig's option: ETCD_CLIENT_KEY_FILE")
	fs.StringVar(&passphrase, "ssl_passphrase", "", "reconfig's option: refused (encrypted keys are not supported)")
	for _, name := range []string{"onetime", "notreally", "debug", "srv", "host", "port", "ssl", "ssl_cafile", "ssl_cert", "ssl_key", "ssl_passphrase"} {
		_ = fs.MarkHidden(name) // listed in the README's reconfig section, not in --help
	}
	_ = fs.MarkHidden("cfgdir")
	return func(c *Config) []error {
		var errs []error
		c.Once = c.Once || onetime
		c.DryRun = c.DryRun || notreally
		if debug {
			c.LogLevel = "debug"
		}
		if srv != "" {
			c.DiscoverySRV = srv
		}
		env := map[string]string{}
		if host != "" || port != "" {
			if port == "" {
				port = "2379"
			}
			if _, err := strconv.ParseUint(port, 10, 16); err != nil {
				errs = append(errs, fmt.Errorf("--port %q: not a port number", port))
			}
			ep := net.JoinHostPort(defaultTo(host, "127.0.0.1"), port)
			if ssl {
				ep = "https://" + ep
			}
			env["ETCD_ENDPOINTS"] = ep
		}
		for name, v := range map[string]string{"ETCD_SERVER_CA_FILE": cafile, "ETCD_CLIENT_CERT_FILE": cert, "ETCD_CLIENT_KEY_FILE": key} {
			if v != "" {
				env[name] = v
			}
		}
		if passphrase != "" {
			errs = append(errs, errors.New("--ssl_passphrase: encrypted client keys are not supported; decrypt the key (openssl pkey -in enc.key -out key.pem) and give --ssl_key or ETCD_CLIENT_KEY_FILE"))
		}
		if len(env) > 0 {
			c.EtcdEnv = env
		}
		return errs
	}
}

func defaultTo(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// CheckGlob reports whether g is a well-formed --include/--exclude pattern: path.Match's
// syntax in each /-separated segment, or a segment that is exactly **.
func CheckGlob(g string) error {
	if g == "" {
		return errors.New("empty pattern")
	}
	for _, seg := range strings.Split(g, "/") {
		if seg == "**" {
			continue
		}
		if strings.Contains(seg, "**") {
			return errors.New("** must be a whole segment, like a/**/b or **/*.pem")
		}
		if _, err := path.Match(seg, ""); err != nil {
			return fmt.Errorf("%w; use *, ?, [a-z] and ** (any number of segments)", err)
		}
	}
	return nil
}
