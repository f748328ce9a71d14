package config

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"strconv"
	"strings"

	clientconfig "github.com/Jille/etcd-client-from-env"

	"github.com/etcd-config-dispenser/etcd-config-dispenser/discovery"
)

// CheckEnv checks the ETCD_* variables (and their _FILE forms) before anything is done with
// them, so that a bad one is exit 2 naming the variable and its value (never a secret's), not
// a connection that times out later. discoverySRV is --discovery-srv.
func CheckEnv(discoverySRV string) error {
	if _, err := clientconfig.Apply(clientconfig.Defaults()); err != nil {
		return fmt.Errorf("etcd settings from the environment: %w", err)
	}
	for _, v := range []string{"USERNAME", "PASSWORD"} {
		other := map[string]string{"USERNAME": "PASSWORD", "PASSWORD": "USERNAME"}[v]
		if set("ETCD_"+v) && !set("ETCD_"+other) {
			what := ""
			if v == "USERNAME" {
				what = fmt.Sprintf(" %q", os.Getenv("ETCD_USERNAME"))
			}
			return fmt.Errorf("ETCD_%s%s is set without ETCD_%s: give both, or ETCD_USERNAME_AND_PASSWORD as user:password", v, what, other)
		}
	}
	name, value := "ETCD_ENDPOINTS", os.Getenv("ETCD_ENDPOINTS")
	if f := os.Getenv("ETCD_ENDPOINTS_FILE"); f != "" {
		b, err := os.ReadFile(f) // Apply read it already; this only fails on a race
		if err != nil {
			return fmt.Errorf("ETCD_ENDPOINTS_FILE %s: %w", f, err)
		}
		name, value = "ETCD_ENDPOINTS_FILE "+f+" holds", string(b)
	}
	if value != "" {
		for _, ep := range strings.Split(value, ",") {
			if err := checkEndpoint(ep); err != nil {
				return fmt.Errorf("%s %q: %w; give comma-separated endpoints like 10.0.0.1:2379,https://etcd2:2379", name, value, err)
			}
		}
	}
	domain, err := discovery.Domain(discoverySRV, os.Getenv)
	if err != nil {
		return err
	}
	if domain != "" && !ValidHost(domain) {
		from := "ETCD_DISCOVERY_SRV"
		if discoverySRV != "" {
			from = "--discovery-srv"
		}
		return fmt.Errorf("%s %q: not a DNS domain name", from, domain)
	}
	if addr := os.Getenv("ETCD_DISCOVERY_DNS"); addr != "" {
		if host, port, err := net.SplitHostPort(addr); err != nil || !ValidHost(host) || port == "" {
			return fmt.Errorf("ETCD_DISCOVERY_DNS %q: not HOST:PORT of a DNS server", addr)
		}
	}
	return nil
}

// set reports whether the variable or its _FILE form is set.
func set(name string) bool { return os.Getenv(name) != "" || os.Getenv(name+"_FILE") != "" }

// checkEndpoint accepts what the etcd client accepts: HOST:PORT, http:// or https://
// HOST:PORT, or a unix socket (unix:PATH, unix://PATH, unixs:…).
func checkEndpoint(ep string) error {
	switch {
	case ep == "":
		return errors.New("an empty endpoint")
	case strings.TrimSpace(ep) != ep:
		return fmt.Errorf("%q has white space (a newline at the end of a _FILE?)", ep)
	}
	for _, p := range []string{"unix://", "unixs://", "unix:", "unixs:"} {
		if rest, ok := strings.CutPrefix(ep, p); ok {
			if rest == "" {
				return fmt.Errorf("%q names no socket", ep)
			}
			return nil
		}
	}
	hostport := ep
	if scheme, _, ok := strings.Cut(ep, "://"); ok {
		if scheme != "http" && scheme != "https" {
			return fmt.Errorf("%q: the scheme must be http, https, unix or unixs", ep)
		}
		u, err := url.Parse(ep)
		if err != nil {
			return fmt.Errorf("%q is not a URL", ep)
		}
		if (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.User != nil {
			return fmt.Errorf("%q: an endpoint has no path, query or user", ep)
		}
		hostport = u.Host
	}
	host, port, err := net.SplitHostPort(hostport)
	if err != nil {
		return fmt.Errorf("%q is not HOST:PORT", ep)
	}
	if !ValidHost(host) {
		return fmt.Errorf("%q: %q is not an IP address or a host name", ep, host)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return fmt.Errorf("%q: the port must be from 1 to 65535", ep)
	}
	return nil
}
