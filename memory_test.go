package main

import (
	"bufio"
	"os"
	"runtime"
	"runtime/metrics"
	"strconv"
	"strings"
	"testing"
	"time"
)

// written at run time, so that it lives in a written (private, dirty) page of .data
var survivor = [2]string{"before"}

// exeRSS sums the resident kB of this test binary's mappings by permission, from
// /proc/self/smaps.
func exeRSS(t *testing.T) map[string]int {
	t.Helper()
	exe, err := os.Readlink("/proc/self/exe")
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.Open("/proc/self/smaps")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	kb := map[string]int{}
	perms := ""
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		switch {
		case len(fields) >= 5 && strings.Contains(fields[0], "-") && len(fields[1]) == 4:
			perms = ""
			if len(fields) >= 6 && fields[5] == exe {
				perms = fields[1]
			}
		case perms != "" && len(fields) >= 2 && fields[0] == "Rss:":
			n, _ := strconv.Atoi(fields[1])
			kb[perms] += n
		}
	}
	return kb
}

// touchExe makes the executable's read-only mappings resident: reading them through
// /proc/self/mem faults them into this process's page tables.
func touchExe(t *testing.T) {
	t.Helper()
	exe, err := os.Readlink("/proc/self/exe")
	if err != nil {
		t.Fatal(err)
	}
	maps, err := os.ReadFile("/proc/self/maps")
	if err != nil {
		t.Fatal(err)
	}
	mem, err := os.Open("/proc/self/mem")
	if err != nil {
		t.Fatal(err)
	}
	defer mem.Close()
	for line := range strings.Lines(string(maps)) {
		fields := strings.Fields(line)
		if len(fields) < 6 || fields[5] != exe || (fields[1] != "r-xp" && fields[1] != "r--p") {
			continue
		}
		lo, hi, _ := strings.Cut(fields[0], "-")
		start, _ := strconv.ParseUint(lo, 16, 64)
		end, _ := strconv.ParseUint(hi, 16, 64)
		if _, err := mem.ReadAt(make([]byte, end-start), int64(start)); err != nil {
			t.Fatalf("reading %s of /proc/self/mem: %v", fields[0], err)
		}
	}
}

// The executable's code and read-only data are let go of, and come back as they are used;
// what the program wrote is kept.
func TestReleaseBinaryPagesLetsGoOfReadOnlyPagesOnly(t *testing.T) {
	survivor[1] = "written"
	touchExe(t)
	before := exeRSS(t)
	if err := releaseBinaryPages(); err != nil {
		t.Fatal(err)
	}
	after := exeRSS(t)
	t.Logf("resident kB before %v, after %v", before, after)
	for _, perms := range []string{"r-xp", "r--p"} {
		if after[perms] > before[perms]/2 {
			t.Errorf("%s pages: %d kB resident before, %d kB after: not let go", perms, before[perms], after[perms])
		}
	}
	if survivor != [2]string{"before", "written"} {
		t.Fatalf("written data lost: %q", survivor)
	}
}

func gcPercent() uint64 {
	s := []metrics.Sample{{Name: "/gc/gogc:percent"}}
	metrics.Read(s)
	return s[0].Value.Uint64()
}

// A start whose live heap grows large collects with less headroom until it is over; then the
// usual GOGC is back.
func TestLargeStartCollectsWithLessHeadroom(t *testing.T) {
	if os.Getenv("GOGC") != "" {
		t.Skip("GOGC is set: the start leaves it alone")
	}
	endStartGC() // what the earlier tests' heap did to GOGC
	watchStartGC()
	defer endStartGC()
	if got := gcPercent(); got != 100 {
		t.Fatalf("GOGC %d before the heap grew, want 100", got)
	}
	live := make([]*[1 << 10]byte, 0, 8<<10) // 8 MiB in small objects, as keys and values are
	for range cap(live) {
		live = append(live, new([1 << 10]byte))
	}
	for deadline := time.Now().Add(10 * time.Second); gcPercent() != startGCPercent; {
		if time.Now().After(deadline) {
			t.Fatalf("GOGC still %d with %d KiB live", gcPercent(), len(live))
		}
		runtime.GC()
		time.Sleep(time.Millisecond)
	}
	endStartGC()
	if got := gcPercent(); got != 100 {
		t.Fatalf("GOGC %d after the start, want 100 again", got)
	}
	runtime.KeepAlive(live)
}
