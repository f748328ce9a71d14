package main

import (
	"bufio"
	"fmt"
	"os"
	"reflect"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// releaseStartMemory hands the first sync's garbage (the snapshot as etcd sent it, the staging
// of the first version) back to the OS now instead of over the next minutes, so that a
// dispenser at rest holds what it needs: with 10000 keys of 1 KiB, 45 MiB 5 s after the start
// without it, 26 MiB with it (go run ./bench -only many). A small heap is left alone: a forced
// scavenge touches the page allocator's structures, which costs a small dispenser 0.4 MiB.
// A little later, once the watch is set up, the executable's pages that the start touched are
// let go too (releaseBinaryPages).
func releaseStartMemory() {
	s := []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}, {Name: "/memory/classes/heap/unused:bytes"},
		{Name: "/memory/classes/heap/free:bytes"}}
	metrics.Read(s)
	var heap uint64
	for _, x := range s {
		if x.Value.Kind() == metrics.KindUint64 {
			heap += x.Value.Uint64()
		}
	}
	endStartGC()
	if heap > 8<<20 {
		go debug.FreeOSMemory()
	}
	time.AfterFunc(binaryPagesDelay, func() { _ = releaseBinaryPages() })
}

// releaseInitPages lets go of the executable's pages that package initialisation (protobuf and
// gRPC registries, Sprig's regular expressions, the flag set) and the start touched: code and
// tables the dispenser never needs again, and the kernel mapped 64 KiB around each of those
// faults. A large first sync would add its peak RSS to them (10000 keys of 1 KiB: 32 -> 30
// MiB), so main calls it initPagesDelay into the first sync, while etcd sends the pages; a
// small start is over by then, and lets go of them after the child started
// (releaseStartMemory). Not at init, where the madvise (0.3 ms) delayed every start, nor at
// once when main has set up: the TLB shootdowns of the threads that run the start cost them
// as much.
func releaseInitPages() { _ = releaseBinaryPages() }

const initPagesDelay = 20 * time.Millisecond

// A large first sync runs with less garbage-collector headroom, so that its peak RSS grows less
// with the keys: once a collection finds more than startLiveHeap live, GOGC is lowered to
// startGCPercent until the start is over. 10000 keys of 1 KiB, peak RSS and CPU time of the
// start by GOGC: 100: 31 MiB; 30: 21.5 MiB, 246 ms; 40: 22.1 MiB, 232 ms; 50: 23.1 MiB,
// 219 ms; 60: 23.3 MiB, 211 ms (50000 keys of 100 B at 30: 54 -> 44 MiB, about 30% slower).
// A small start never collects (the first collection is at 4 MiB), and collecting it more
// would cost it RSS: GOGC=30 throughout raises the idle RSS with one key by 1 MiB. A GOGC set
// in the environment is left alone.
const (
	startLiveHeap  = 4 << 20
	startGCPercent = 40
)

var startGC struct {
	sync.Mutex
	over    bool
	lowered bool
	prev    int // the GC percent to restore
}

// gcCycle is garbage whose finalizer runs once per collection; it has a pointer so that it is
// not in a tiny-allocator block, whose finalizers may never run.
type gcCycle struct{ _ *byte }

func init() {
	if os.Getenv("GOGC") == "" {
		watchStartGC()
	}
}

// watchStartGC calls afterGC after each collection until the start is over.
func watchStartGC() {
	startGC.Lock()
	startGC.over, startGC.lowered = false, false
	startGC.Unlock()
	runtime.SetFinalizer(&gcCycle{}, afterGC)
}

// afterGC lowers GOGC for the rest of the start once the live heap is large, and otherwise
// waits for the next collection.
func afterGC(*gcCycle) {
	startGC.Lock()
	defer startGC.Unlock()
	if startGC.over || startGC.lowered {
		return
	}
	s := []metrics.Sample{{Name: "/gc/heap/live:bytes"}}
	metrics.Read(s)
	if s[0].Value.Kind() == metrics.KindUint64 && s[0].Value.Uint64() > startLiveHeap {
		startGC.prev = debug.SetGCPercent(startGCPercent)
		startGC.lowered = true
		return
	}
	runtime.SetFinalizer(&gcCycle{}, afterGC)
}

// endStartGC restores GOGC after the start.
func endStartGC() {
	startGC.Lock()
	defer startGC.Unlock()
	startGC.over = true
	if startGC.lowered {
		debug.SetGCPercent(startGC.prev)
	}
}

// binaryPagesDelay leaves the start's last steps (the watch, the child's start) time to finish,
// so that the pages they touch are let go too.
const binaryPagesDelay = time.Second

// releaseBinaryPages drops this process's mappings of the executable's read-only pages (code,
// read-only data, the function tables) with madvise(MADV_DONTNEED). Most of them are touched
// once, by package initialisation and the first sync, and the kernel maps 64 KiB around each
// page fault, so that a dispenser at rest had most of its 17 MB binary mapped: 13.8 MiB of its
// 17.4 MiB idle RSS. They are clean pages of the page cache, shared and not lost: a page
// needed again is mapped again by a minor fault. Pages that were written (.data, .bss) are
// never touched.
func releaseBinaryPages() error {
	f, err := os.Open("/proc/self/maps")
	if err != nil {
		return err
	}
	defer f.Close()
	type mapping struct {
		start, end  uint64
		perms, file string // file: device and inode
	}
	var maps []mapping
	self := uint64(reflect.ValueOf(releaseBinaryPages).Pointer())
	var exe string // the device and inode of the mapping holding our code
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// address perms offset dev inode [path]
		fields := strings.Fields(sc.Text())
		if len(fields) < 5 {
			continue
		}
		lo, hi, _ := strings.Cut(fields[0], "-")
		start, err1 := strconv.ParseUint(lo, 16, 64)
		end, err2 := strconv.ParseUint(hi, 16, 64)
		if err1 != nil || err2 != nil {
			return fmt.Errorf("reading /proc/self/maps: bad line %q", sc.Text())
		}
		m := mapping{start, end, fields[1], fields[3] + " " + fields[4]}
		if start <= self && self < end {
			exe = m.file
		}
		maps = append(maps, m)
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("reading /proc/self/maps: %w", err)
	}
	if exe == "" || strings.HasSuffix(exe, " 0") { // not file-backed: nothing to let go
		return nil
	}
	for _, m := range maps {
		if m.file != exe || (m.perms != "r-xp" && m.perms != "r--p") {
			continue
		}
		if _, _, errno := syscall.Syscall(syscall.SYS_MADVISE, uintptr(m.start), uintptr(m.end-m.start),
			syscall.MADV_DONTNEED); errno != 0 {
			return fmt.Errorf("madvise of the executable's pages %x-%x: %w", m.start, m.end, errno)
		}
	}
	return nil
}
