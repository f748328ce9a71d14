// Package discovery finds etcd's client endpoints from DNS SRV records, as etcdctl
// --discovery-srv does: _etcd-client-ssl._tcp.DOMAIN gives https endpoints, then
// _etcd-client._tcp.DOMAIN http ones. Endpoints keep the SRV target's host name, so TLS
// verifies the server against that name, not an address.
package discovery

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
)

// Domain returns the SRV domain to look up: --discovery-srv (flag) or ETCD_DISCOVERY_SRV,
// "" when neither is set. Endpoints given in ETCD_ENDPOINTS (or ETCD_ENDPOINTS_FILE) as well
// are an error: which one to use would be a guess.
func Domain(flag string, getenv func(string) string) (string, error) {
	env := getenv("ETCD_DISCOVERY_SRV")
	if flag != "" && env != "" && flag != env {
		return "", fmt.Errorf("--discovery-srv %q and ETCD_DISCOVERY_SRV %q are both set: give one", flag, env)
	}
	domain := flag
	if domain == "" {
		domain = env
	}
	if domain == "" {
		return "", nil
	}
	for _, v := range []string{"ETCD_ENDPOINTS", "ETCD_ENDPOINTS_FILE"} {
		if getenv(v) != "" {
			return "", fmt.Errorf("%s and DNS discovery (--discovery-srv or ETCD_DISCOVERY_SRV %q) are both set: give one", v, domain)
		}
	}
	return domain, nil
}

// Endpoints looks up the SRV records of domain with r (nil: the system resolver) and returns
// the https endpoints, then the http ones, in the order of the records. It is an error when
// neither lookup finds a record.
func Endpoints(ctx context.Context, r *net.Resolver, domain string) ([]string, error) {
	if r == nil {
		r = net.DefaultResolver
	}
	var endpoints []string
	var errs []error
	for _, s := range []struct{ service, scheme string }{{"etcd-client-ssl", "https"}, {"etcd-client", "http"}} {
		_, srvs, err := r.LookupSRV(ctx, s.service, "tcp", domain)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		for _, srv := range srvs {
			host := strings.TrimSuffix(srv.Target, ".")
			endpoints = append(endpoints, s.scheme+"://"+net.JoinHostPort(host, strconv.Itoa(int(srv.Port))))
		}
	}
	if len(endpoints) == 0 {
		return nil, fmt.Errorf("no etcd endpoints in the SRV records of _etcd-client-ssl._tcp.%s or _etcd-client._tcp.%s: %w",
			domain, domain, errors.Join(errs...))
	}
	return endpoints, nil
}

// Resolver returns a resolver that asks only the DNS server at addr (host:port over UDP).
// It exists for tests (ETCD_DISCOVERY_DNS), which serve their own records.
func Resolver(addr string) *net.Resolver {
	return &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "udp", addr)
	}}
}
