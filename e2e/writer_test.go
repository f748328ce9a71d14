package e2e

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/etcd-config-dispenser/etcd-config-dispenser/internal/etcdtest"
)

// etcdctl put k "": etcd stores an empty value (and returns nil for it). The target has an
// empty file, the revoked secret's bytes are gone, and the child is signalled once.
func TestEmptyValueBecomesAnEmptyFile(t *testing.T) {
	e := etcdtest.Start(t)
	c := e.Client()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	txn(t, c, "/p/a", "A", "/p/secret", "s3cr3t")
	if _, err := c.Put(ctx, "/p/empty", ""); err != nil {
		t.Fatal(err)
	}
	d := start(t, e, "reader", "--prefix=/p")
	evs := d.waitEvent("start", func(ev event) bool { return ev.What == "start" })
	if want := map[string]string{"a": "A", "secret": "s3cr3t", "empty": ""}; fmt.Sprint(evs[0].Files) != fmt.Sprint(want) {
		t.Fatalf("child saw %v at start, want %v", evs[0].Files, want)
	}
	if _, err := c.Put(ctx, "/p/secret", ""); err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"a": "A", "secret": "", "empty": ""}
	etcdtest.Eventually(t, 30*time.Second, equalTree(t, d.target, want))
	d.waitEvent("the cleared secret", func(ev event) bool {
		return ev.What == "hangup" && fmt.Sprint(ev.Files) == fmt.Sprint(want)
	})
	// The next change still applies.
	txn(t, c, "/p/a", "A2")
	want["a"] = "A2"
	etcdtest.Eventually(t, 30*time.Second, equalTree(t, d.target, want))
	d.waitEvent("the next change", func(ev event) bool { return ev.What == "hangup" && ev.Files["a"] == "A2" })
	if n := d.finalSignals(); n != 2 {
		t.Errorf("child got %d signals for two changes, one at a time, want 2", n)
	}
	if lines := d.stderr.lines("level=ERROR"); len(lines) > 0 {
		t.Errorf("errors logged:\n%s", strings.Join(lines, "\n"))
	}
}

// A second dispenser on a target in use exits 1 with one line naming the target and the
// holder's pid, and the first one's files stay as they were.
func TestSecondDispenserOnATargetIsRefused(t *testing.T) {
	e := etcdtest.Start(t)
	txn(t, e.Client(), "/p/x", "X", "/q/y", "Y")
	first := start(t, e, "reader", "--prefix=/p")
	first.waitEvent("start", func(ev event) bool { return ev.What == "start" })
	second := startAs(t, e, runOpts{Target: first.target}, "", "--prefix=/q")
	if code := second.wait(30 * time.Second); code != 1 {
		t.Fatalf("second dispenser exited %d, want 1:\n%s", code, second.stderr.String())
	}
	errs := second.stderr.lines("level=ERROR")
	if len(errs) != 1 {
		t.Fatalf("%d error lines, want 1:\n%s", len(errs), second.stderr.String())
	}
	for _, want := range []string{first.target, "pid " + strconv.Itoa(first.cmd.Process.Pid)} {
		if !strings.Contains(errs[0], want) {
			t.Errorf("the error line does not name %q: %s", want, errs[0])
		}
	}
	if got := tree(t, first.target); fmt.Sprint(got) != fmt.Sprint(map[string]string{"x": "X"}) {
		t.Errorf("first dispenser's target now has %v", got)
	}
}

// Run as an ordinary user (nobody), every mode works, including modes that keep the owner
// from reading (0200) or writing (0400) its files; files get exactly the mode asked.
func TestNonRootWritesWithEveryMode(t *testing.T) {
	e := etcdtest.Start(t)
	for _, mode := range []string{"0400", "0440", "0200", "0600"} {
		t.Run(mode, func(t *testing.T) {
			target := nobodyTarget(t)
			prefix := "/nonroot" + mode
			run := func(want map[string]string) {
				t.Helper()
				d := startAs(t, e, runOpts{Target: target, Attr: asNobody()}, "", "--prefix="+prefix, "--once", "--mode="+mode, "--start-timeout=20s")
				if code := d.wait(60 * time.Second); code != 0 {
					t.Fatalf("exit code %d as uid %d with --mode=%s:\n%s", code, nobody, mode, d.stderr.String())
				}
				if got := tree(t, target); fmt.Sprint(got) != fmt.Sprint(want) {
					t.Fatalf("target %v, want %v", got, want)
				}
				ownedBy(t, target, nobody, mode)
			}
			txn(t, e.Client(), prefix+"/a", "A", prefix+"/sub/b", "B")
			run(map[string]string{"a": "A", "sub/b": "B"})
			// A second run reads its own files back (0200: not readable by their owner).
			txn(t, e.Client(), prefix+"/a", "A2", prefix+"/c", "C")
			run(map[string]string{"a": "A2", "sub/b": "B", "c": "C"})
		})
	}
}

// nobody is the user the non-root tests run the dispenser as.
const nobody = 65534

// nobodyTarget makes an empty target owned by nobody, which nobody can reach, as is the
// binary; or skips the test, saying why, when not run as root.
func nobodyTarget(t *testing.T) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("switching to uid 65534 needs root")
	}
	if err := os.Chmod(filepath.Dir(binary), 0o755); err != nil {
		t.Fatal(err)
	}
	parent, err := os.MkdirTemp("", "e2e-nonroot-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(parent) })
	target := filepath.Join(parent, "config")
	if err := os.Chmod(parent, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(target, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(target, nobody, nobody); err != nil {
		t.Fatal(err)
	}
	return target
}

// asNobody runs the dispenser as nobody.
func asNobody() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: nobody, Gid: nobody}}
}

// ownedBy checks that everything the dispenser made in target (but its lock) is owned by uid,
// and that every file has the given mode. An old version being removed meanwhile is skipped.
func ownedBy(t *testing.T, target string, uid uint32, mode string) {
	t.Helper()
	filepath.WalkDir(target, func(p string, de fs.DirEntry, err error) error {
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		if err != nil || de.Type()&fs.ModeSymlink != 0 || p == target || strings.HasPrefix(de.Name(), "..etcd") {
			return err
		}
		fi, err := de.Info()
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		if err != nil {
			t.Errorf("%s: %v", p, err)
			return nil
		}
		if st := fi.Sys().(*syscall.Stat_t); st.Uid != uid {
			t.Errorf("%s: owned by %d, want %d", p, st.Uid, uid)
		}
		if !fi.IsDir() && fmt.Sprintf("%04o", fi.Mode().Perm()) != mode {
			t.Errorf("%s: mode %04o, want %s", p, fi.Mode().Perm(), mode)
		}
		return nil
	})
}

// A target removed while the dispenser runs is recreated at the next change and filled by the
// resync that follows; the child is signalled for it.
func TestRemovedTargetIsRecreatedAtTheNextChange(t *testing.T) {
	e := etcdtest.Start(t)
	c := e.Client()
	txn(t, c, "/p/a", "A", "/p/sub/b", "B")
	d := start(t, e, "reader", "--prefix=/p")
	d.waitEvent("start", func(ev event) bool { return ev.What == "start" })
	if err := os.RemoveAll(d.target); err != nil {
		t.Fatal(err)
	}
	txn(t, c, "/p/c", "C")
	want := map[string]string{"a": "A", "sub/b": "B", "c": "C"}
	etcdtest.Eventually(t, 30*time.Second, equalTree(t, d.target, want))
	d.waitEvent("the recreated target", func(ev event) bool {
		return ev.What == "hangup" && fmt.Sprint(ev.Files) == fmt.Sprint(want)
	})
	if lines := d.stderr.lines("removed or replaced"); len(lines) == 0 {
		t.Errorf("no log line says the target was removed:\n%s", d.stderr.String())
	}
}

// On a full disk the dispenser removes the previous version, applies at once, and says "no
// space left" (an etcd problem it is not).
func TestDiskFullIsNamedAndThePreviousVersionMakesRoom(t *testing.T) {
	mnt := tmpfs(t, "size=1m")
	e := etcdtest.Start(t)
	c := e.Client()
	value := func(ch string) string { return strings.Repeat(ch, 200_000) }
	txn(t, c, "/p/a", value("1"), "/p/b", value("1"))
	d := startAs(t, e, runOpts{Target: filepath.Join(mnt, "config")}, "reader", "--prefix=/p")
	d.waitEvent("start", func(ev event) bool { return ev.What == "start" })
	for _, v := range []string{"2", "3", "4"} {
		txn(t, c, "/p/a", value(v), "/p/b", value(v))
		want := fmt.Sprint(map[string]string{"a": "200000×" + v, "b": "200000×" + v})
		etcdtest.Eventually(t, 30*time.Second, func() error {
			files, err := readTree(d.target, d.target)
			got := map[string]string{} // sizes and contents, not 200 KB values, in a failure
			for k, f := range files {
				c := "mixed"
				if f != "" && strings.Count(f, f[:1]) == len(f) {
					c = f[:1]
				}
				got[k] = fmt.Sprintf("%d×%s", len(f), c)
			}
			if err == nil && fmt.Sprint(got) != want {
				err = fmt.Errorf("target has %v, want %v", got, want)
			}
			return err
		})
	}
	if lines := d.stderr.lines("no space left"); len(lines) == 0 {
		t.Errorf("no log line says no space left:\n%s", d.stderr.String())
	}
	if lines := d.stderr.lines("level=ERROR"); len(lines) > 0 {
		t.Errorf("errors logged although every version fit once the previous one was gone:\n%s", strings.Join(lines, "\n"))
	}
}

// tmpfs mounts a tmpfs with the given options (size=1m,nr_inodes=...) for the test, or skips
// it, saying why, when that is not possible.
func tmpfs(t *testing.T, options string) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("mounting a tmpfs needs root")
	}
	mnt := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", options, "tmpfs", mnt).CombinedOutput(); err != nil {
		t.Skipf("cannot mount a tmpfs (%s): %v: %s", options, err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", "-l", mnt).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v: %s", mnt, err, out)
		}
	})
	return mnt
}
