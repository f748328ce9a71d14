package discovery

import (
	"context"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/etcd-config-dispenser/etcd-config-dispenser/internal/dnstest"
)

func TestEndpointsHTTPSFirstThenHTTP(t *testing.T) {
	dns := dnstest.Start(t, dnstest.Records{
		SRV: map[string][]dnstest.SRV{
			"_etcd-client-ssl._tcp.example.test": {{Target: "etcd1.example.test.", Port: 2379}},
			"_etcd-client._tcp.example.test":     {{Target: "etcd2.example.test.", Port: 2380}},
		},
		A: map[string]net.IP{"etcd1.example.test": net.IPv4(127, 0, 0, 1)},
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	got, err := Endpoints(ctx, Resolver(dns), "example.test")
	want := []string{"https://etcd1.example.test:2379", "http://etcd2.example.test:2380"}
	if err != nil || !slices.Equal(got, want) {
		t.Fatalf("Endpoints = %q, %v; want %q", got, err, want)
	}
	if addrs, err := Resolver(dns).LookupHost(ctx, "etcd1.example.test"); err != nil || !slices.Equal(addrs, []string{"127.0.0.1"}) {
		t.Fatalf("the test server's A record: %q, %v", addrs, err)
	}
}

func TestEndpointsOnlyHTTP(t *testing.T) {
	dns := dnstest.Start(t, dnstest.Records{SRV: map[string][]dnstest.SRV{
		"_etcd-client._tcp.example.test": {{Target: "localhost.", Port: 12379}},
	}})
	got, err := Endpoints(context.Background(), Resolver(dns), "example.test")
	if err != nil || !slices.Equal(got, []string{"http://localhost:12379"}) {
		t.Fatalf("Endpoints = %q, %v", got, err)
	}
}

func TestNoRecordsNamesBothServices(t *testing.T) {
	dns := dnstest.Start(t, dnstest.Records{})
	_, err := Endpoints(context.Background(), Resolver(dns), "example.test")
	if err == nil || !strings.Contains(err.Error(), "_etcd-client-ssl._tcp.example.test") ||
		!strings.Contains(err.Error(), "_etcd-client._tcp.example.test") {
		t.Fatalf("error %v, want one naming both lookups", err)
	}
}

func TestDomainRefusesEndpointsAndDiscoveryTogether(t *testing.T) {
	env := map[string]string{"ETCD_ENDPOINTS": "http://a:2379", "ETCD_DISCOVERY_SRV": "example.test"}
	_, err := Domain("", func(k string) string { return env[k] })
	if err == nil || !strings.Contains(err.Error(), "ETCD_ENDPOINTS") || !strings.Contains(err.Error(), "ETCD_DISCOVERY_SRV") {
		t.Fatalf("error %v, want one naming both", err)
	}
	if d, err := Domain("example.test", func(string) string { return "" }); d != "example.test" || err != nil {
		t.Fatalf("Domain = %q, %v", d, err)
	}
}
