package config

import (
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestBadValuesFoundByParseNameFlagAndValue(t *testing.T) {
	for _, tc := range []struct {
		flag, want string
	}{
		{"--mode=4755", `--mode "4755": has the setuid, setgid or sticky bit (4000)`},
		{"--mode=1777", `--mode "1777": has the setuid, setgid or sticky bit (1000)`},
		{"--listen=bogus", `--listen "bogus": not HOST:PORT`},
		{"--listen=:99999", `--listen ":99999": "99999" is not a port`},
		{"--listen=bad!:80", `--listen "bad!:80": "bad!" is not an IP address or a host name`},
		{"--kill-timeout=-1s", "--kill-timeout -1s: must not be negative"},
		{"--coalesce=-1ms", "--coalesce -1ms: must not be negative"},
		{"--check-interval=0s", "--check-interval 0s: must be positive"},
		{"--settle=-2s", "--settle -2s: must not be negative"},
		{"--owner=4294967295", `--owner "4294967295": a numeric user id must be from 0 to 4294967294`},
	} {
		_, err := Parse([]string{"-p", "/a", "-t", "/b", tc.flag}, io.Discard)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: error %v, want %q", tc.flag, err, tc.want)
		}
	}
	for _, ok := range []string{"--listen=:9090", "--listen=127.0.0.1:0", "--listen=[::1]:http", "--listen=localhost:9090", "--mode=0777", "--settle=0"} {
		if _, err := Parse([]string{"-p", "/a", "-t", "/b", ok}, io.Discard); err != nil {
			t.Errorf("%s refused: %v", ok, err)
		}
	}
}

func TestEndpoints(t *testing.T) {
	for _, ok := range []string{"127.0.0.1:2379", "etcd-1.example.com:2379", "[::1]:2379", "http://etcd1:2379",
		"https://10.0.0.1:2379/", "unix:///run/etcd.sock", "unix:etcd.sock", "unixs://etcd.sock"} {
		if err := checkEndpoint(ok); err != nil {
			t.Errorf("%q refused: %v", ok, err)
		}
	}
	for _, bad := range []string{"", "garbage!!", "etcd1", "etcd1:0", "etcd1:99999", "etcd1:port", "ftp://etcd1:2379",
		"https://:2379", "https://etcd1", "http://etcd1:2379/v3", "http://u:p@etcd1:2379", " etcd1:2379", "etcd1:2379\n", "unix://"} {
		if err := checkEndpoint(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func TestCheckEnvNamesTheVariable(t *testing.T) {
	file := filepath.Join(t.TempDir(), "endpoints")
	os.WriteFile(file, []byte("10.0.0.1:2379\n"), 0o600)
	for _, tc := range []struct {
		env         map[string]string
		want, never string
	}{
		{map[string]string{"ETCD_ENDPOINTS": ",,,"}, `ETCD_ENDPOINTS ",,,": an empty endpoint`, ""},
		{map[string]string{"ETCD_ENDPOINTS": "garbage!!"}, `ETCD_ENDPOINTS "garbage!!": "garbage!!" is not HOST:PORT`, ""},
		{map[string]string{"ETCD_ENDPOINTS_FILE": file}, "ETCD_ENDPOINTS_FILE " + file + ` holds "10.0.0.1:2379\n"`, ""},
		{map[string]string{"ETCD_USERNAME": "alice"}, `ETCD_USERNAME "alice" is set without ETCD_PASSWORD`, ""},
		{map[string]string{"ETCD_PASSWORD": "hunter2"}, "ETCD_PASSWORD is set without ETCD_USERNAME", "hunter2"},
		{map[string]string{"ETCD_USERNAME_AND_PASSWORD": "hunter2"}, "ETCD_USERNAME_AND_PASSWORD", "hunter2"},
		{map[string]string{"ETCD_INSECURE_SKIP_VERIFY": "maybe"}, `ETCD_INSECURE_SKIP_VERIFY as bool ("maybe")`, ""},
		{map[string]string{"ETCD_DISCOVERY_SRV": "bad domain"}, `ETCD_DISCOVERY_SRV "bad domain": not a DNS domain name`, ""},
		{map[string]string{"ETCD_DISCOVERY_SRV": "example.com", "ETCD_DISCOVERY_DNS": "x"}, `ETCD_DISCOVERY_DNS "x"`, ""},
	} {
		t.Run(tc.want, func(t *testing.T) {
			for _, v := range []string{"ENDPOINTS", "USERNAME", "PASSWORD", "USERNAME_AND_PASSWORD", "INSECURE_SKIP_VERIFY",
				"SERVER_CA", "CLIENT_CERT", "CLIENT_KEY", "DISCOVERY_SRV", "DISCOVERY_DNS"} {
				t.Setenv("ETCD_"+v, "")
				t.Setenv("ETCD_"+v+"_FILE", "")
			}
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			err := CheckEnv("")
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want %q", err, tc.want)
			}
			if tc.never != "" && strings.Contains(err.Error(), tc.never) {
				t.Fatalf("the error shows the secret: %v", err)
			}
		})
	}
}

func TestValidateReadsTemplatesAndFindsCommands(t *testing.T) {
	dir := t.TempDir()
	good, bad := filepath.Join(dir, "good.tmpl"), filepath.Join(dir, "bad.tmpl")
	os.WriteFile(good, []byte("{{ get \"a\" }}"), 0o600)
	os.WriteFile(bad, []byte("{{ get "), 0o600)
	out := filepath.Join(dir, "out")
	for _, tc := range []struct {
		args []string
		want string // "" for none
	}{
		{[]string{"--template", good + ":" + out, "--check-cmd", "true {{staged}}"}, ""},
		{[]string{"--template", "/no/such.tmpl:" + out}, "--template /no/such.tmpl:" + out + ": template /no/such.tmpl: open /no/such.tmpl: no such file or directory"},
		{[]string{"--template", bad + ":" + out}, "--template " + bad + ":" + out + ": template " + bad},
		{[]string{"--check-cmd", "no-such-checker-here {{staged}}"}, `--check-cmd "no-such-checker-here {{staged}}": exec: "no-such-checker-here": executable file not found`},
		{[]string{"--reload-cmd", "/no/such/reload"}, `--reload-cmd "/no/such/reload"`},
		{[]string{"-t", good}, "--target " + good + ": exists and is not a directory"},
	} {
		c, err := Parse(append([]string{"-p", "/a", "-t", filepath.Join(dir, "target")}, tc.args...), io.Discard)
		if err != nil {
			t.Fatalf("%q: %v", tc.args, err)
		}
		err = c.Validate()
		if (tc.want == "") != (err == nil) || err != nil && !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: Validate() = %v, want %q", tc.args, err, tc.want)
		}
	}
}
