package e2e

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/etcd-config-dispenser/etcd-config-dispenser/internal/etcdtest"
)

const nginxBin = "/usr/sbin/nginx"

// nginx reads ssl_certificate and ssl_certificate_key in two lookups through ..data. If a
// second version is swapped in between, it loads a certificate with the other version's key
// and refuses the reload ("key values mismatch"). Rotating pairs a few ms apart, one txn
// each, must never do that, and the last pair must end up served.
func TestNginxNeverLoadsAMismatchedPair(t *testing.T) {
	if _, err := os.Stat(nginxBin); err != nil {
		t.Skipf("nginx is not installed (%v); on Debian: apt-get install nginx-light", err)
	}
	if testing.Short() {
		t.Skip("-short: the nginx rotation takes about 20 s")
	}
	const rotations = 1000
	// RSA and EC alternately, so every rotation changes both files; the last pair is used
	// only by the last rotation, so that serving it proves the last version was loaded.
	pairs := make([]pemPair, 5)
	for i := range pairs {
		pairs[i] = newPair(t, i)
	}
	last := pairs[4]
	pairs = pairs[:4]
	e := etcdtest.Start(t)
	c := e.Client()
	txn(t, c, "/tls/cert.pem", pairs[0].cert, "/tls/key.pem", pairs[0].key)

	dir := t.TempDir()
	port := freePort(t)
	target := filepath.Join(dir, "certs")
	errLog := filepath.Join(dir, "error.log")
	conf := filepath.Join(dir, "nginx.conf")
	writeNginxConf(t, conf, dir, target, port)
	d := startAs(t, e, runOpts{Target: target}, "", append(append([]string{"--prefix=/tls"}, nginxSettle...),
		"--", nginxBin, "-p", dir, "-c", conf, "-e", errLog, "-g", "daemon off;")...)
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	waitServed(t, addr, pairs[0], 30*time.Second)

	tick := time.NewTicker(3 * time.Millisecond) // paces the writes; nothing waits on it
	defer tick.Stop()
	begin := time.Now()
	for i := 1; i <= rotations; i++ {
		<-tick.C
		p := pairs[i%len(pairs)]
		if i == rotations {
			p = last
		}
		// The counter makes every version differ, so every applied batch is signalled.
		txn(t, c, "/tls/cert.pem", p.cert, "/tls/key.pem", p.key, "/tls/rotation", fmt.Sprint(i))
	}
	elapsed := time.Since(begin)
	t.Logf("%d rotations in %v", rotations, elapsed.Round(time.Millisecond))
	waitServed(t, addr, last, 30*time.Second)

	b, err := os.ReadFile(errLog)
	if err != nil {
		t.Fatal(err)
	}
	var failed []string
	for _, line := range strings.Split(string(b), "\n") {
		if strings.Contains(line, "mismatch") || strings.Contains(line, "[emerg]") {
			failed = append(failed, line)
		}
	}
	reloads := strings.Count(string(b), "(SIGHUP) received")
	signals := len(d.stderr.lines("batch applied", "signal="))
	t.Logf("%d signals sent, %d nginx reloads, %d failed", signals, reloads, len(failed))
	if len(failed) > 0 {
		t.Fatalf("nginx refused %d of %d reloads, e.g.:\n%s", len(failed), reloads, strings.Join(failed[:min(3, len(failed))], "\n"))
	}
	// A burst is applied along the way, one version per settle time, not only at its end.
	if least, most := int(elapsed/defaultSettle)/2, int(elapsed/defaultSettle)+2; signals < least || signals > most {
		t.Fatalf("%d signals for %v of rotations with --settle=%v, want %d to %d", signals, elapsed, defaultSettle, least, most)
	}
}

// nginxSettle are the flags under test: the default --settle alone, without the help of
// --coalesce, which spaces the batches of a burst too.
var nginxSettle = []string{"--coalesce=0"}

// defaultSettle is --settle's default.
const defaultSettle = time.Second

type pemPair struct {
	cert, key string
	der       []byte // the certificate, to compare with what is served
}

// newPair makes a self-signed certificate for 127.0.0.1 and its key: RSA for even i, EC for odd.
func newPair(t *testing.T, i int) pemPair {
	t.Helper()
	var key crypto.Signer
	var err error
	if i%2 == 0 {
		key, err = rsa.GenerateKey(rand.Reader, 2048)
	} else {
		key, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	}
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(int64(i + 1)), Subject: pkix.Name{CommonName: fmt.Sprintf("pair %d", i)},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pemPair{der: der,
		cert: string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})),
		key:  string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}))}
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// writeNginxConf writes a config that keeps everything of nginx's in dir.
func writeNginxConf(t *testing.T, conf, dir, target string, port int) {
	t.Helper()
	text := fmt.Sprintf(`worker_processes 1;
pid %[1]s/nginx.pid;
error_log %[1]s/error.log notice;
events { worker_connections 64; }
http {
    access_log off;
    client_body_temp_path %[1]s/body;
    proxy_temp_path %[1]s/proxy;
    fastcgi_temp_path %[1]s/fastcgi;
    uwsgi_temp_path %[1]s/uwsgi;
    scgi_temp_path %[1]s/scgi;
    server {
        listen 127.0.0.1:%[3]d ssl;
        ssl_certificate %[2]s/cert.pem;
        ssl_certificate_key %[2]s/key.pem;
        return 200 "ok\n";
    }
}
`, dir, target, port)
	if err := os.WriteFile(conf, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
}

// waitServed waits until a TLS handshake with addr shows the pair's certificate.
func waitServed(t *testing.T, addr string, p pemPair, timeout time.Duration) {
	t.Helper()
	etcdtest.Eventually(t, timeout, func() error {
		conn, err := tls.DialWithDialer(&net.Dialer{Timeout: time.Second}, "tcp", addr, &tls.Config{InsecureSkipVerify: true})
		if err != nil {
			return err
		}
		defer conn.Close()
		leaf := conn.ConnectionState().PeerCertificates[0]
		if !bytes.Equal(leaf.Raw, p.der) {
			return fmt.Errorf("nginx serves %q, want %q", leaf.Subject.CommonName, pemSubject(p))
		}
		return nil
	})
}

func pemSubject(p pemPair) string {
	c, err := x509.ParseCertificate(p.der)
	if err != nil {
		return err.Error()
	}
	return c.Subject.CommonName
}
