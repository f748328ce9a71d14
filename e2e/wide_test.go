package e2e

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/etcd-config-dispenser/etcd-config-dispenser/internal/etcdtest"
)

// Wide prefixes: the writer stores a top level of more than 256 names in buckets
// (..data/..X/..Y/..Z/NAME, each top-level link pointing there), and flat again below 128.
// These helpers read a target in either form and check what a user relies on.

// maxTxnOps is etcd's default limit of operations in one transaction.
const maxTxnOps = 128

// putAll commits the pairs (key, value; an empty value deletes) in order, in as few
// transactions as etcd takes, and returns the last one's revision.
func putAll(t testing.TB, c *clientv3.Client, kv ...string) int64 {
	t.Helper()
	var rev int64
	for i := 0; i < len(kv); i += 2 * maxTxnOps {
		rev = etcdtest.Txn(t, c, kv[i:min(i+2*maxTxnOps, len(kv))]...)
	}
	return rev
}

// flatKeys are the pairs prefix/kNNNN = value for NNNN in [from, to): flat top-level keys.
func flatKeys(prefix string, from, to int, value string) []string {
	var kv []string
	for i := from; i < to; i++ {
		kv = append(kv, fmt.Sprintf("%s/k%04d", prefix, i), value)
	}
	return kv
}

// isBucket reports whether name is one of the writer's bucket directories (..0 to ..7).
func isBucket(name string) bool {
	return len(name) == 3 && name[:2] == ".." && name[2] >= '0' && name[2] <= '7'
}

// liveVersion reads the version ..data points at, keyed like the target, in either form.
// A root holding both forms (a switch cut short by a kill) must hold the same tree in both.
func liveVersion(target string) (files map[string]string, bucketed bool, err error) {
	return versionFiles(filepath.Join(target, "..data"))
}

// versionFiles reads the version whose root object is data, in either form.
func versionFiles(data string) (files map[string]string, bucketed bool, err error) {
	entries, err := os.ReadDir(data)
	if err != nil {
		return nil, false, err
	}
	flat, inBuckets := map[string]string{}, map[string]string{}
	hasFlat := false
	for _, e := range entries {
		switch name := e.Name(); {
		case isBucket(name):
			bucketed = true
			if err := readBuckets(filepath.Join(data, name), 1, inBuckets); err != nil {
				return nil, false, err
			}
		case strings.HasPrefix(name, ".."):
			return nil, false, fmt.Errorf("..data holds %s, neither a bucket nor a key", name)
		default:
			hasFlat = true
			if err := readEntry(data, name, flat); err != nil {
				return nil, false, err
			}
		}
	}
	if !bucketed {
		return flat, false, nil
	}
	if hasFlat && !maps.Equal(flat, inBuckets) {
		return nil, true, fmt.Errorf("a root of both forms whose halves differ: %s", diffTrees(flat, inBuckets))
	}
	return inBuckets, true, nil
}

// wantForm waits until every top-level link of target points into the given form
// (..data/..X/..Y/..Z/NAME or ..data/NAME): a test of a wide prefix must not lose its point
// silently if the thresholds move. (A switch follows the swap of a change, and after it the
// live root holds both forms until the next change; the links say which one is in use.)
func wantForm(t *testing.T, target string, bucketed bool) {
	t.Helper()
	etcdtest.Eventually(t, 30*time.Second, func() error {
		entries, err := os.ReadDir(target)
		if err != nil {
			return err
		}
		for _, e := range entries {
			if strings.HasPrefix(e.Name(), "..") {
				continue
			}
			link, err := os.Readlink(filepath.Join(target, e.Name()))
			if err != nil {
				return err
			}
			if got := strings.HasPrefix(link, "..data/.."); got != bucketed {
				return fmt.Errorf("top-level link %s -> %s: bucketed=%v, want bucketed=%v", e.Name(), link, got, bucketed)
			}
		}
		return nil
	})
}

// readBuckets reads the top-level names under bucket dir, of the given level (1 to 3).
func readBuckets(dir string, level int, into map[string]string) error {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	for _, e := range entries {
		switch {
		case level < 3 && isBucket(e.Name()):
			if err := readBuckets(filepath.Join(dir, e.Name()), level+1, into); err != nil {
				return err
			}
		case level < 3 || strings.HasPrefix(e.Name(), ".."):
			return fmt.Errorf("bucket %s (level %d) holds %s", dir, level, e.Name())
		default:
			if _, dup := into[e.Name()]; dup {
				return fmt.Errorf("top-level name %s is in two buckets", e.Name())
			}
			if err := readEntry(dir, e.Name(), into); err != nil {
				return err
			}
		}
	}
	return nil
}

// readEntry reads name in dir, a file or a directory (symlinks followed), into files keyed
// from dir.
func readEntry(dir, name string, files map[string]string) error {
	p := filepath.Join(dir, name)
	st, err := os.Stat(p)
	if err != nil {
		return err
	}
	if !st.IsDir() {
		b, err := os.ReadFile(p)
		files[name] = string(b)
		return err
	}
	sub, err := readTree(dir, p)
	maps.Copy(files, sub)
	return err
}

// shownVersion checks what a user sees in an atomic target at this instant: ..data holds a
// whole version (returned), every top-level name of it resolves through the target's link to
// the same content, and nothing else does. A link may dangle only for a name the version does
// not hold (a new name linked just before a swap a kill -9 cut off); those are returned.
func shownVersion(target string) (version map[string]string, dangling []string, err error) {
	version, _, err = liveVersion(target)
	if err != nil {
		return nil, nil, fmt.Errorf("reading ..data: %w", err)
	}
	entries, err := os.ReadDir(target)
	if err != nil {
		return nil, nil, err
	}
	shown := map[string]string{}
	for _, e := range entries {
		name := e.Name()
		if strings.HasPrefix(name, "..") {
			continue
		}
		if e.Type()&fs.ModeSymlink == 0 {
			return nil, nil, fmt.Errorf("top-level entry %s is not a symlink", name)
		}
		err := readEntry(target, name, shown)
		if errors.Is(err, fs.ErrNotExist) {
			dangling = append(dangling, name)
			continue
		}
		if err != nil {
			return nil, nil, err
		}
	}
	for _, name := range dangling {
		if _, ok := version[name]; ok || hasDir(version, name) {
			return nil, nil, fmt.Errorf("top-level name %s of the live version does not resolve", name)
		}
	}
	if !maps.Equal(shown, version) {
		return nil, nil, fmt.Errorf("the top-level names show another tree than ..data: %s", diffTrees(shown, version))
	}
	return version, dangling, nil
}

// hasDir reports whether files holds a path below directory d.
func hasDir(files map[string]string, d string) bool {
	for p := range files {
		if strings.HasPrefix(p, d+"/") {
			return true
		}
	}
	return false
}

// convergedTo is a condition: the target shows exactly want, with no dangling link.
func convergedTo(target string, want map[string]string) func() error {
	return func() error {
		got, dangling, err := shownVersion(target)
		if err != nil {
			return err
		}
		if len(dangling) > 0 {
			return fmt.Errorf("dangling top-level links: %v", dangling)
		}
		if !maps.Equal(got, want) {
			return fmt.Errorf("target differs from etcd: %s", diffTrees(got, want))
		}
		return nil
	}
}

// diffTrees says how got differs from want, in a few lines however wide the trees are.
func diffTrees(got, want map[string]string) string {
	var missing, extra, changed []string
	for k, v := range want {
		g, ok := got[k]
		switch {
		case !ok:
			missing = append(missing, k)
		case g != v:
			changed = append(changed, fmt.Sprintf("%s=%.20q (want %.20q)", k, g, v))
		}
	}
	for k := range got {
		if _, ok := want[k]; !ok {
			extra = append(extra, k)
		}
	}
	few := func(s []string) string {
		slices.Sort(s)
		if len(s) > 5 {
			return fmt.Sprintf("%v... (%d)", s[:5], len(s))
		}
		return fmt.Sprint(s)
	}
	return fmt.Sprintf("%d files, want %d; missing %s, extra %s, changed %s",
		len(got), len(want), few(missing), few(extra), few(changed))
}

// history is every state a prefix went through, as the test wrote it, one per transaction:
// a version a kill -9 left must be one of them, not a mix of several.
type history struct {
	t      testing.TB
	c      *clientv3.Client
	prefix string
	now    map[string]string // keyed like the target
	seen   map[[32]byte]int  // state -> the first transaction that made it
	txns   int
}

func newHistory(t testing.TB, c *clientv3.Client, prefix string) *history {
	h := &history{t: t, c: c, prefix: prefix, now: map[string]string{}, seen: map[[32]byte]int{}}
	h.seen[fingerprint(h.now)] = 0
	return h
}

// txn commits the pairs (keys relative to the prefix; an empty value deletes) as one
// transaction, at most maxTxnOps of them, and records the state it makes.
func (h *history) txn(kv ...string) {
	h.t.Helper()
	full := slices.Clone(kv)
	for i := 0; i < len(kv); i += 2 {
		full[i] = h.prefix + "/" + kv[i]
		if kv[i+1] == "" {
			delete(h.now, kv[i])
		} else {
			h.now[kv[i]] = kv[i+1]
		}
	}
	etcdtest.Txn(h.t, h.c, full...)
	h.txns++
	if _, ok := h.seen[fingerprint(h.now)]; !ok {
		h.seen[fingerprint(h.now)] = h.txns
	}
}

// had reports whether etcd held exactly files after some transaction so far.
func (h *history) had(files map[string]string) bool {
	_, ok := h.seen[fingerprint(files)]
	return ok
}

func fingerprint(files map[string]string) [32]byte {
	s := sha256.New()
	for _, k := range slices.Sorted(maps.Keys(files)) {
		fmt.Fprintf(s, "%q=%q\n", k, files[k])
	}
	var sum [32]byte
	s.Sum(sum[:0])
	return sum
}

// versionObjects counts the version directories at the top of target, and those the live
// version reaches (its root object and every object linked from there).
func versionObjects(target string) (all, reached int, err error) {
	entries, err := os.ReadDir(target)
	if err != nil {
		return 0, 0, err
	}
	for _, e := range entries {
		if e.IsDir() && strings.HasPrefix(e.Name(), "..") {
			all++
		}
	}
	root, err := os.Readlink(filepath.Join(target, "..data"))
	if err != nil {
		return 0, 0, err
	}
	seen := map[string]bool{}
	var walk func(obj string) error
	walk = func(obj string) error {
		if seen[obj] {
			return nil
		}
		seen[obj] = true
		entries, err := os.ReadDir(filepath.Join(target, obj))
		if err != nil {
			return err
		}
		for _, e := range entries {
			if e.Type()&fs.ModeSymlink == 0 {
				continue
			}
			link, err := os.Readlink(filepath.Join(target, obj, e.Name()))
			if err != nil {
				return err
			}
			if child, ok := strings.CutPrefix(link, "../"); ok {
				if err := walk(child); err != nil {
					return err
				}
			}
		}
		return nil
	}
	err = walk(root)
	return all, len(seen), err
}

// A wide prefix on a full disk (a tmpfs of 3 MiB and 4000 inodes; a value of 1000 bytes takes
// a page of 4 KiB there):
//  1. a first start that does not fit is reported as no space left, the child does not start
//     on a part of it, and once space is freed it starts on all of it (bucketed);
//  2. a change that fills the disk, while the keys that follow it cross below the flat
//     threshold, keeps the last whole version shown until space is freed, then converges;
//  3. out of inodes, a change that crosses the bucketed threshold goes live whole, flat; the
//     switch of form that does not fit is reported, and happens at a change once there is room.
func TestDiskFullWithAWidePrefix(t *testing.T) {
	mnt := tmpfs(t, "size=3m,nr_inodes=4000")
	e := etcdtest.Start(t)
	c := e.Client()
	value := strings.Repeat("x", 1000)
	putAll(t, c, flatKeys("/p", 0, 400, value)...)
	filler := filepath.Join(mnt, "filler")
	if err := os.Mkdir(filler, 0o755); err != nil {
		t.Fatal(err)
	}
	fillBytes(t, filepath.Join(filler, "start"), 200*4096)
	target := filepath.Join(mnt, "config")
	d := startAs(t, e, runOpts{Target: target}, "reader", "--prefix=/p")
	noSpace := func(n int) {
		t.Helper()
		etcdtest.Eventually(t, 30*time.Second, func() error {
			if got := len(d.stderr.lines("level=ERROR", "no space left")); got < n {
				return fmt.Errorf("%d error lines say no space left, want %d", got, n)
			}
			return nil
		})
	}

	noSpace(1)
	for _, ev := range d.events() {
		t.Fatalf("the child ran before the first sync fit: %s with %d files", ev.What, len(ev.Files))
	}
	if err := os.Remove(filepath.Join(filler, "start")); err != nil {
		t.Fatal(err)
	}
	want := inEtcd(t, c, "/p/")
	d.waitEvent("start", func(ev event) bool { return ev.What == "start" && maps.Equal(ev.Files, want) })
	etcdtest.Eventually(t, 30*time.Second, convergedTo(target, want))
	wantForm(t, target, true)

	fillBytes(t, filepath.Join(filler, "change"), 0)
	before := want
	putAll(t, c, flatKeys("/p", 0, 100, "new "+value)...)
	putAll(t, c, flatKeys("/p", 100, 400, "")...)
	noSpace(2)
	if err := convergedTo(target, before)(); err != nil {
		t.Fatalf("on a full disk the target no longer shows the last whole version: %v", err)
	}
	if err := os.Remove(filepath.Join(filler, "change")); err != nil {
		t.Fatal(err)
	}
	want = inEtcd(t, c, "/p/")
	etcdtest.Eventually(t, 30*time.Second, convergedTo(target, want))
	d.waitEvent("the change once it fit", func(ev event) bool { return ev.What == "hangup" && maps.Equal(ev.Files, want) })
	wantForm(t, target, false)

	// 200 new names take about 400 inodes in the flat form (a file and a top-level link
	// each), and on a tmpfs each hard link of an existing file into a new object takes one
	// too (Linux 6 does); the switch to buckets needs about 300 more (a directory per
	// bucket) plus a hard link per name. Leave room for the change, not for the switch.
	leave := uint64(500 + 200*hardLinkInodes(t, filler))
	fillInodes(t, filepath.Join(filler, "inodes"), leave)
	errorsBefore := len(d.stderr.lines("level=ERROR"))
	putAll(t, c, flatKeys("/p", 100, 300, "v")...)
	want = inEtcd(t, c, "/p/")
	etcdtest.Eventually(t, 30*time.Second, convergedTo(target, want))
	etcdtest.Eventually(t, 30*time.Second, func() error {
		if len(d.stderr.lines("level=ERROR", "cannot switch", "no space left")) == 0 {
			return errors.New("no error line says the switch of form did not fit")
		}
		return nil
	})
	for _, line := range d.stderr.lines("level=ERROR")[errorsBefore:] {
		if !strings.Contains(line, "cannot switch") {
			t.Errorf("with room for the change (%d inodes), it failed: %s", leave, line)
		}
	}
	wantForm(t, target, false)
	if err := os.RemoveAll(filepath.Join(filler, "inodes")); err != nil {
		t.Fatal(err)
	}
	txn(t, c, "/p/k0000", "after")
	want["k0000"] = "after"
	etcdtest.Eventually(t, 30*time.Second, convergedTo(target, want))
	d.waitEvent("the change after", func(ev event) bool { return ev.What == "hangup" && maps.Equal(ev.Files, want) })
	wantForm(t, target, true)
	if lines := d.stderr.lines("etcd unreachable"); len(lines) > 0 {
		t.Errorf("a full disk was blamed on etcd:\n%s", strings.Join(lines, "\n"))
	}
}

// fillBytes writes zeros to a new file at path until its file system has at most leave bytes
// free (or is full).
func fillBytes(t *testing.T, path string, leave int64) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 64<<10)
	for {
		var st syscall.Statfs_t
		if err := syscall.Statfs(filepath.Dir(path), &st); err != nil {
			t.Fatal(err)
		}
		free := int64(st.Bavail) * st.Bsize
		if free <= leave {
			return
		}
		if _, err := f.Write(buf[:min(int64(len(buf)), free-leave)]); errors.Is(err, syscall.ENOSPC) {
			return
		} else if err != nil {
			t.Fatal(err)
		}
	}
}

// fillInodes creates empty files in a new directory dir until its file system has leave
// inodes free.
func fillInodes(t *testing.T, dir string, leave uint64) {
	t.Helper()
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		t.Fatal(err)
	}
	for i := uint64(0); st.Ffree > leave && i < st.Ffree-leave; i++ {
		if err := os.WriteFile(filepath.Join(dir, fmt.Sprint(i)), nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// hardLinkInodes is how many inodes a hard link takes on the file system of dir (1 on a tmpfs
// with nr_inodes: it charges each link, to bound the memory of its dentries).
func hardLinkInodes(t *testing.T, dir string) uint64 {
	t.Helper()
	free := func() uint64 {
		var st syscall.Statfs_t
		if err := syscall.Statfs(dir, &st); err != nil {
			t.Fatal(err)
		}
		return st.Ffree
	}
	f := filepath.Join(dir, "linked")
	if err := os.WriteFile(f, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	defer os.Remove(f)
	defer os.Remove(f + "2")
	before := free()
	if err := os.Link(f, f+"2"); err != nil {
		t.Fatal(err)
	}
	return before - free()
}

// A wide top level with the names that could confuse its buckets, read all along by a reader
// that opens every name etcd always has, through the real binary's target, while the top
// level crosses the thresholds both ways three times: keys named like buckets or bucket paths
// (skipped: the .. prefix is reserved), names that differ only in case, a name of 255 bytes,
// a key of 32 levels (the most allowed: its lookup follows 36 symlinks when bucketed, of
// Linux's 40), a key shadowed by keys below it at the first start, and a top-level key that
// becomes a directory and back while bucketed or flat. The reader never misses a name.
func TestWideTopLevelEdgeCases(t *testing.T) {
	e := etcdtest.Start(t)
	c := e.Client()
	long := strings.Repeat("L", 255)
	var deep []string
	for i := range 32 {
		deep = append(deep, fmt.Sprintf("d%d", i))
	}
	deepKey := strings.Join(deep, "/")
	kv := []string{"/p/A", "upper", "/p/a", "lower", "/p/shadowed", "a file", "/p/shadowed/below", "a key",
		"/p/..3", "a bucket's name", "/p/..0/..1/..2/s000", "a bucket path", "/p/" + long, "long", "/p/" + deepKey, "deep"}
	stable := []string{"A", "a", "shadowed", long, deepKey}
	for i := range 100 {
		kv = append(kv, fmt.Sprintf("/p/s%03d", i), "s")
		stable = append(stable, fmt.Sprintf("s%03d", i))
	}
	t0 := func(from, to int, v string) []string {
		var kv []string
		for i := from; i < to; i++ {
			kv = append(kv, fmt.Sprintf("/p/t%04d", i), v)
		}
		return kv
	}
	putAll(t, c, append(kv, t0(0, 200, "0")...)...)
	d := startAs(t, e, runOpts{}, "", "--prefix=/p", "--coalesce=0", "--settle=0")
	converged := func(bucketed bool) {
		t.Helper()
		etcdtest.Eventually(t, 30*time.Second, convergedTo(d.target, mirrored(inEtcd(t, c, "/p/"))))
		wantForm(t, d.target, bucketed)
	}
	converged(true)
	for _, key := range []string{"..3", "..0/..1/..2/s000"} {
		if len(d.stderr.lines("key skipped", key)) == 0 {
			t.Errorf("no log line says key %s was skipped", key)
		}
	}

	stop := make(chan struct{})
	var reads atomic.Int64
	var missed []string
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			for _, name := range stable {
				select {
				case <-stop:
					return
				default:
				}
				f, err := os.Open(filepath.Join(d.target, name))
				if err == nil {
					_, err = io.ReadAll(f) // a directory (a, shadowed at times) is opened only
					if errors.Is(err, syscall.EISDIR) {
						err = nil
					}
					f.Close()
				}
				if err != nil && len(missed) < 10 {
					missed = append(missed, err.Error())
				}
				reads.Add(1)
			}
		}
	}()
	for round := range 3 {
		switch round {
		case 0:
			txn(t, c, "/p/a/b", "a is a directory now")
		case 1:
			txn(t, c, "/p/a/b", "", "/p/shadowed/below", "")
		}
		putAll(t, c, t0(0, 200, "")...)
		converged(false)
		putAll(t, c, t0(0, 200, fmt.Sprint(round+1))...)
		converged(true)
	}
	close(stop)
	<-done
	if len(missed) > 0 {
		t.Fatalf("the reader missed a name etcd has (%d reads):\n%s", reads.Load(), strings.Join(missed, "\n"))
	}
	t.Logf("%d reads of the %d stable names, none missed", reads.Load(), len(stable))
}

// mirrored is what the target shows of a prefix: without the keys the writer refuses (a
// segment starting with ..) or that keys below them shadow.
func mirrored(keys map[string]string) map[string]string {
	out := map[string]string{}
	for k, v := range keys {
		if strings.HasPrefix(k, "..") || strings.Contains(k, "/..") || hasDir(keys, k) {
			continue
		}
		out[k] = v
	}
	return out
}

// The first start guesses the form of the top level from the snapshot's first page (100 keys)
// and etcd's key count, and places the values in it as they arrive. A first page that
// misleads (one directory, then hundreds of flat names; or flat names, then thousands of
// keys in one directory) costs a switch after the commit, never a key: the child starts on
// every key, the links end in the right form, and the next change converges.
func TestWideFirstStartWhoseFirstPageMisleads(t *testing.T) {
	nested := func(dir string, n int) []string {
		var kv []string
		for i := range n {
			kv = append(kv, fmt.Sprintf("/p/%s/%04d", dir, i), "nested")
		}
		return kv
	}
	for _, tc := range []struct {
		name     string
		kv       []string
		bucketed bool
	}{
		// Sorted, a/... comes first: one name in the first page, an estimate of 6.
		{"one directory then 400 flat names", append(nested("a", 200), flatKeys("/p", 0, 400, "flat")...), true},
		// 100 names in the first page, of 1100 keys: an estimate of 1100; 101 in fact.
		{"100 flat names then 1000 keys in one directory", append(flatKeys("/p", 0, 100, "flat"), nested("z", 1000)...), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := etcdtest.Start(t)
			c := e.Client()
			putAll(t, c, tc.kv...)
			want := inEtcd(t, c, "/p/")
			d := start(t, e, "reader", "--prefix=/p", "--settle=0")
			d.waitEvent("start", func(ev event) bool { return ev.What == "start" })
			if got := d.events()[0].Files; !maps.Equal(got, want) {
				t.Fatalf("the child started on another tree than etcd's: %s", diffTrees(got, want))
			}
			etcdtest.Eventually(t, 30*time.Second, convergedTo(d.target, want))
			wantForm(t, d.target, tc.bucketed)

			txn(t, c, "/p/k0000", "", "/p/new", "new")
			want = inEtcd(t, c, "/p/")
			etcdtest.Eventually(t, 30*time.Second, convergedTo(d.target, want))
			d.waitEvent("the change", func(ev event) bool { return ev.What == "hangup" && maps.Equal(ev.Files, want) })
		})
	}
}

// Run as nobody with --mode=0200 (files their owner cannot read back), a wide prefix switches
// form both ways while running, and at a restart that finds the top level narrowed while
// stopped: everything the dispenser made is nobody's, every file has the mode asked, and the
// target converges each time.
func TestNonRootWidePrefixSwitchesForm(t *testing.T) {
	target := nobodyTarget(t)
	e := etcdtest.Start(t)
	c := e.Client()
	converged := func(bucketed bool) {
		t.Helper()
		etcdtest.Eventually(t, 30*time.Second, convergedTo(target, inEtcd(t, c, "/p/")))
		wantForm(t, target, bucketed)
		ownedBy(t, target, nobody, "0200")
	}
	putAll(t, c, flatKeys("/p", 0, 300, "0")...)
	d := startAs(t, e, runOpts{Target: target, Attr: asNobody()}, "", "--prefix=/p", "--mode=0200", "--settle=0")
	converged(true)
	putAll(t, c, flatKeys("/p", 100, 300, "")...)
	converged(false)
	putAll(t, c, flatKeys("/p", 0, 300, "1")...)
	converged(true)
	_ = d.cmd.Process.Signal(syscall.SIGTERM)
	if code := d.wait(30 * time.Second); code != 0 {
		t.Fatalf("exit code %d after SIGTERM", code)
	}

	putAll(t, c, append(flatKeys("/p", 50, 300, ""), "/p/k0000", "2")...)
	again := startAs(t, e, runOpts{Target: target, Attr: asNobody()}, "", "--prefix=/p", "--mode=0200", "--once")
	if code := again.wait(60 * time.Second); code != 0 {
		t.Fatalf("exit code %d of the restart with --once", code)
	}
	converged(false)
}

// A check of the mirror (--check-mirror-cmd) sees every top-level name of the staged version
// in either form (bucketed, it gets a directory of links to them), refuses a broken one
// whatever the width, and a change that crosses a threshold goes live once it passes.
func TestWideCheckMirrorCmdSeesEveryName(t *testing.T) {
	e := etcdtest.Start(t)
	c := e.Client()
	listing := filepath.Join(t.TempDir(), "listing")
	check := `sh -c 'ls "$DISPENSER_STAGED" > ` + listing + `; if cat "$DISPENSER_STAGED"/* 2>/dev/null | grep -q broken; then echo "config is broken" >&2; exit 1; fi'`
	checked := func() {
		t.Helper()
		want := slices.Sorted(maps.Keys(inEtcd(t, c, "/p/")))
		etcdtest.Eventually(t, 30*time.Second, func() error {
			b, err := os.ReadFile(listing)
			if got := strings.Fields(string(b)); err != nil || !slices.Equal(got, want) {
				return fmt.Errorf("the check saw %d names (%v), etcd has %d", len(got), err, len(want))
			}
			return nil
		})
	}
	putAll(t, c, flatKeys("/p", 0, 300, "good")...)
	d := start(t, e, "reader", "--prefix=/p", "--check-mirror-cmd="+check, "--settle=0")
	d.waitEvent("start", func(ev event) bool { return ev.What == "start" && len(ev.Files) == 300 })
	checked()
	wantForm(t, d.target, true)

	txn(t, c, "/p/k0150", "broken")
	waitLog(t, d, "check command failed", "config is broken")
	if got := tree(t, d.target)["k0150"]; got != "good" {
		t.Fatalf("k0150=%q after a refused check, want the old version", got)
	}
	putAll(t, c, flatKeys("/p", 100, 300, "")...)
	etcdtest.Eventually(t, 30*time.Second, convergedTo(d.target, inEtcd(t, c, "/p/")))
	checked()
	wantForm(t, d.target, false)

	// Up to 228 names, then to 300 (bucketed) in one transaction the check refuses.
	putAll(t, c, flatKeys("/p", 100, 228, "good")...)
	before := inEtcd(t, c, "/p/")
	etcdtest.Eventually(t, 30*time.Second, convergedTo(d.target, before))
	refused := len(d.stderr.lines("check command failed"))
	txn(t, c, append(flatKeys("/p", 228, 300, "good"), "/p/k0000", "broken")...)
	etcdtest.Eventually(t, 30*time.Second, func() error {
		if len(d.stderr.lines("check command failed")) == refused {
			return errors.New("the broken version was not refused")
		}
		return nil
	})
	if err := convergedTo(d.target, before)(); err != nil {
		t.Fatalf("after a refused check the target is not the version before: %v", err)
	}
	txn(t, c, "/p/k0000", "fixed")
	etcdtest.Eventually(t, 30*time.Second, convergedTo(d.target, inEtcd(t, c, "/p/")))
	checked()
	wantForm(t, d.target, true)
}

// With few file descriptors, a prefix of many top-level directories (one per host or
// service) and one of many flat names (hundreds of buckets) still start, take a restart that
// changes or removes every key and switches form: the writer never needs a descriptor per
// directory at once.
// Some hosts and docker run --ulimit give 1024 (soft and hard), which 3000 directories or
// 5000 flat names exceeded; the test scales that down to ulimit -n 256, 400 directories and
// 400 flat names (about 280 buckets).
func TestWideWithFewFileDescriptors(t *testing.T) {
	for _, tc := range []struct {
		name string
		key  string // a format for the key of number i
		n    int
	}{
		{"400 directories", "/p/host%04d/cert.pem", 400},
		{"400 flat names", "/p/k%04d", 400},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := etcdtest.Start(t)
			c := e.Client()
			put := func(from, to int, v string) {
				var kv []string
				for i := from; i < to; i++ {
					kv = append(kv, fmt.Sprintf(tc.key, i), v)
				}
				putAll(t, c, kv...)
			}
			target := filepath.Join(t.TempDir(), "config")
			once := func() {
				t.Helper()
				d := startAs(t, e, runOpts{Target: target, Nofile: 256}, "", "--prefix=/p", "--once", "--fsync=false", "--start-timeout=20s")
				if code := d.wait(60 * time.Second); code != 0 {
					t.Fatalf("exit code %d with ulimit -n 256", code)
				}
				if err := convergedTo(target, inEtcd(t, c, "/p/"))(); err != nil {
					t.Fatal(err)
				}
			}
			put(0, tc.n, "first")
			once()
			// Every value changed or gone (every object of the tree edited), and below the flat
			// threshold: a switch after the swap.
			put(0, 100, "second")
			put(100, tc.n, "")
			once()
		})
	}
}

// kill -9 while a wide first start streams its values in (straight into the new version's
// hidden objects, each new name linked at once, dangling): nothing resolves yet, and a
// restart, after a third of the keys vanished meanwhile, converges with no dangling link and
// nothing left of the killed start.
func TestKill9DuringAWideFirstStart(t *testing.T) {
	e := etcdtest.Start(t)
	c := e.Client()
	value := strings.Repeat("v", 2000)
	putAll(t, c, flatKeys("/p", 0, 3000, value)...)
	target := filepath.Join(t.TempDir(), "config")
	d := startAs(t, e, runOpts{Target: target}, "", "--prefix=/p")
	var names int
	etcdtest.Eventually(t, 30*time.Second, func() error {
		entries, _ := os.ReadDir(target)
		names = 0
		for _, e := range entries {
			if !strings.HasPrefix(e.Name(), "..") {
				names++
			}
		}
		if names < 300 {
			return fmt.Errorf("%d names linked so far", names)
		}
		return nil
	})
	_ = d.cmd.Process.Signal(syscall.SIGKILL)
	d.wait(10 * time.Second)
	if _, err := os.Lstat(filepath.Join(target, "..data")); err == nil {
		t.Logf("the first start ended before the kill (%d names seen linked)", names)
	} else {
		entries, _ := os.ReadDir(target)
		for _, e := range entries {
			if _, err := os.Stat(filepath.Join(target, e.Name())); !strings.HasPrefix(e.Name(), "..") && err == nil {
				t.Fatalf("%s resolves although no version went live", e.Name())
			}
		}
		t.Logf("killed with %d names linked, no version live", names)
	}

	putAll(t, c, flatKeys("/p", 0, 1000, "")...)
	startAs(t, e, runOpts{Target: target}, "", "--prefix=/p")
	etcdtest.Eventually(t, 30*time.Second, convergedTo(target, inEtcd(t, c, "/p/")))
	wantForm(t, target, true)
	etcdtest.Eventually(t, 30*time.Second, func() error {
		if all, reached, err := versionObjects(target); err != nil || all != reached {
			return fmt.Errorf("%d version directories, the live version reaches %d (%v)", all, reached, err)
		}
		return nil
	})
}
