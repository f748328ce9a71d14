// Command demo shows etcd-config-dispenser at work on a machine with nothing
// but Go: it starts a throwaway etcd in-process on loopback, builds the real
// binary, runs it with a small shell program as the child, changes two files
// in one etcd transaction and shows what the child saw.
//
//	go run ./cmd/demo
package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/etcd-config-dispenser/etcd-config-dispenser/internal/etcdtest"
)

// child is the "real program": it prints its files at start and at each SIGHUP.
const child = `show() { for f in cert.pem key.pem; do printf '  %s: %s\n' "$f" "$(cat "$DIR/$f")"; done; }
trap 'echo "child: got SIGHUP, reloading:"; show' HUP
trap 'echo "child: got SIGTERM, exiting"; exit 0' TERM
echo "child: started, my files:"; show
while :; do sleep 1 & wait $!; done`

func main() {
	if err := demo(); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

func demo() error {
	tmp, err := os.MkdirTemp("", "etcd-config-dispenser-demo-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	target := filepath.Join(tmp, "config")

	step("starting a throwaway etcd on loopback")
	cfg, err := etcdtest.Config(filepath.Join(tmp, "etcd"))
	if err != nil {
		return err
	}
	e, cli, err := etcdtest.Run(cfg)
	if err != nil {
		return err
	}
	defer e.Close()
	defer cli.Close()
	endpoint := cfg.ListenClientUrls[0].String()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	step("building etcd-config-dispenser")
	bin := filepath.Join(tmp, "etcd-config-dispenser")
	build := exec.Command("go", "build", "-o", bin, "github.com/etcd-config-dispenser/etcd-config-dispenser")
	build.Stdout, build.Stderr = os.Stdout, os.Stderr
	if err := build.Run(); err != nil {
		return fmt.Errorf("go build: %w", err)
	}

	step("etcdctl put /demo/cert.pem, /demo/key.pem, /demo/nginx/site.conf")
	if _, err := cli.Txn(ctx).Then(
		clientv3.OpPut("/demo/cert.pem", "certificate v1"),
		clientv3.OpPut("/demo/key.pem", "key v1"),
		clientv3.OpPut("/demo/nginx/site.conf", "server { listen 80; }"),
	).Commit(); err != nil {
		return err
	}

	args := []string{"--prefix=/demo", "--target=" + target, "--signal=SIGHUP", "--", "/bin/sh", "-c", child}
	step("running: ETCD_ENDPOINTS=%s etcd-config-dispenser %s", endpoint, strings.Join(args[:3], " ")+" -- /bin/sh -c '…'")
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), "ETCD_ENDPOINTS="+endpoint, "DIR="+target)
	cmd.Stderr = prefixed("  dispenser | ")
	out, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	if err := cmd.Start(); err != nil {
		return err
	}
	lines := make(chan string, 100)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			fmt.Println("  " + sc.Text())
			lines <- sc.Text()
		}
		close(lines)
	}()
	if err := waitLine(lines, "child: started"); err != nil {
		return err
	}
	if err := waitLine(lines, "key.pem"); err != nil {
		return err
	}

	step("one transaction: new cert.pem and key.pem together, site.conf deleted")
	if _, err := cli.Txn(ctx).Then(
		clientv3.OpPut("/demo/cert.pem", "certificate v2"),
		clientv3.OpPut("/demo/key.pem", "key v2"),
		clientv3.OpDelete("/demo/nginx/site.conf"),
	).Commit(); err != nil {
		return err
	}
	if err := waitLine(lines, "key.pem: key v2"); err != nil {
		return err
	}

	step("the target directory now (%s)", target)
	if err := list(target); err != nil {
		return err
	}

	step("docker stop: SIGTERM to the dispenser, forwarded to the child")
	_ = cmd.Process.Signal(syscall.SIGTERM)
	for range lines {
	}
	err = cmd.Wait()
	step("dispenser exited with code %d (the child's)", cmd.ProcessState.ExitCode())
	if err != nil {
		return err
	}
	return nil
}

func step(format string, a ...any) { fmt.Printf("\n==> "+format+"\n", a...) }

func waitLine(lines <-chan string, want string) error {
	timeout := time.After(30 * time.Second)
	for {
		select {
		case l, ok := <-lines:
			if !ok {
				return fmt.Errorf("the dispenser stopped before printing %q", want)
			}
			if strings.Contains(l, want) {
				return nil
			}
		case <-timeout:
			return fmt.Errorf("no %q after 30s", want)
		}
	}
}

func list(dir string) error {
	return filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || p == dir {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		info, err := d.Info()
		if err != nil {
			return err
		}
		line := fmt.Sprintf("  %s %s", info.Mode(), rel)
		if d.Type()&fs.ModeSymlink != 0 {
			to, _ := os.Readlink(p)
			line += " -> " + to
		}
		fmt.Println(line)
		return nil
	})
}

type prefixWriter struct{ prefix string }

func prefixed(p string) io.Writer { return prefixWriter{p} }

func (w prefixWriter) Write(b []byte) (int, error) {
	for _, l := range strings.Split(strings.TrimRight(string(b), "\n"), "\n") {
		fmt.Println(w.prefix + l)
	}
	return len(b), nil
}
