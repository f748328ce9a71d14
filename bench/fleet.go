package main

import (
	"context"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"
)

// fleets runs, for each size in spec ("50,200"), a fleet of that many dispensers of each binary
// against the one etcd, directly and through one etcd grpc-proxy (as one per host would be).
func (b *bench) fleets(spec string) error {
	var sizes []int
	for _, f := range strings.Split(spec, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 {
			return fmt.Errorf("-fleet %q: want sizes like 50,200", spec)
		}
		sizes = append(sizes, n)
	}
	prefix := "/fleet/"
	if _, err := b.load(prefix, 10, 1024); err != nil {
		return err
	}
	type route struct {
		name     string
		endpoint string
		proxy    *server
	}
	routes := []route{{"direct", b.etcd.endpoint, nil}}
	if !*noProxy {
		p, cli, err := startProxy(filepath.Join(b.dir, "proxy"), *etcdBin, b.etcd.endpoint)
		if err != nil {
			return fmt.Errorf("starting etcd grpc-proxy: %w", err)
		}
		cli.Close()
		defer p.close()
		routes = append(routes, route{"via grpc-proxy", p.endpoint, p})
	}
	for _, n := range sizes {
		for _, rt := range routes {
			f := &fleetFigures{n: n, route: rt.name, s: map[string]samples{}, text: map[string]map[string]string{}}
			load := loadavg()
			err := b.interleave(1, func(bin binary) error { return b.fleet(f, bin, rt.endpoint, rt.proxy, prefix) })
			if err != nil {
				return err
			}
			f.report(b, load)
		}
	}
	return nil
}

// fleetFigures collects one fleet size and route's figures for every binary.
type fleetFigures struct {
	n     int
	route string
	names []string                     // figure names, in order
	s     map[string]samples           // figure -> samples
	text  map[string]map[string]string // figure -> binary -> text (figures without a ratio)
}

func (f *fleetFigures) add(b *bench, figure string, bin binary, v float64) {
	if _, ok := f.s[figure]; !ok {
		f.names = append(f.names, figure)
		f.s[figure] = b.samples()
	}
	f.s[figure].add(bin, v)
}

func (f *fleetFigures) note(figure string, bin binary, text string) {
	if _, ok := f.text[figure]; !ok {
		f.names = append(f.names, figure)
		f.text[figure] = map[string]string{}
	}
	f.text[figure][bin.name] = text
}

func (f *fleetFigures) report(b *bench, load string) {
	for _, name := range f.names {
		figure := fmt.Sprintf("%d dispensers %s: %s", f.n, f.route, name)
		if t, ok := f.text[name]; ok {
			var sums []summary
			for _, bin := range b.bins {
				sums = append(sums, summary{t[bin.name], math.NaN()})
			}
			b.add(figure, load, sums)
			continue
		}
		unit := "ms"
		if strings.Contains(name, "RSS") || strings.Contains(name, "PSS") {
			unit = "MiB"
		}
		if p, ok := strings.CutPrefix(name, "p"); ok && strings.Contains(name, "put ->") {
			pct, _ := strconv.Atoi(p[:2])
			b.add(figure, load, f.s[name].percentile(float64(pct), unit))
			continue
		}
		b.add(figure, load, f.s[name].median(unit))
	}
}

// fleet starts n dispensers of bin, measures, and stops them.
func (b *bench) fleet(f *fleetFigures, bin binary, endpoint string, proxy *server, prefix string) error {
	n := f.n
	cpu := func(s *server) time.Duration {
		if s == nil {
			return 0
		}
		d, _ := cpuTime(s.pid())
		return d
	}
	etcd0, proxy0 := cpu(b.etcd), cpu(proxy)
	t0 := time.Now()
	var fleet []*run
	defer func() {
		var wg sync.WaitGroup
		for _, r := range fleet {
			wg.Add(1)
			go func() { defer wg.Done(); r.stop() }()
		}
		wg.Wait()
	}()
	for i := 0; i < n; i++ {
		r, _, err := b.hub.launch(bin, b.dir, b.child, endpoint, prefix)
		if err != nil {
			return err
		}
		fleet = append(fleet, r)
	}
	var last time.Time
	for _, r := range fleet {
		at, err := r.next("start", 5*time.Minute)
		if err != nil {
			return err
		}
		if at.After(last) {
			last = at
		}
	}
	f.add(b, "launch -> all children running", bin, ms(last.Sub(t0)))
	f.add(b, "etcd CPU for the start", bin, ms(cpu(b.etcd)-etcd0))
	if proxy != nil {
		f.add(b, "grpc-proxy CPU for the start", bin, ms(cpu(proxy)-proxy0))
	}
	time.Sleep(time.Second) // every watch established
	if streams, watchers, err := watchGauges(b.etcd.endpoint); err == nil {
		f.note("watch streams / watchers at etcd", bin, fmt.Sprintf("%d / %d", streams, watchers))
	}

	etcd0, proxy0 = cpu(b.etcd), cpu(proxy)
	time.Sleep(*idleFor)
	f.add(b, fmt.Sprintf("etcd CPU while idle, per minute (%v measured)", *idleFor), bin,
		ms(cpu(b.etcd)-etcd0)*float64(time.Minute)/float64(*idleFor))
	var rss, pss int64
	for _, r := range fleet {
		kb, _ := procStatus(r.pid(), "VmRSS")
		rss += kb
		kb, _ = pssOf(r.pid())
		pss += kb
	}
	f.add(b, "RSS per dispenser (mean)", bin, float64(rss)/1024/float64(n))
	// PSS shares the binary's pages among the processes that map them: what each one adds.
	f.add(b, "PSS per dispenser (mean)", bin, float64(pss)/1024/float64(n))

	// The fleet's own CPU across the puts: a fan-out bound by CPU shows here, one bound by
	// waiting does not.
	fleetCPU := func() (d time.Duration) {
		for _, r := range fleet {
			c, _ := cpuTime(r.pid())
			d += c
		}
		return d
	}
	switches := func() (n int64) {
		for _, r := range fleet {
			tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/status", r.pid()))
			for _, t := range tasks {
				data, _ := os.ReadFile(t)
				for _, line := range strings.Split(string(data), "\n") {
					if k, v, ok := strings.Cut(line, ":"); ok && strings.HasSuffix(k, "ctxt_switches") {
						c, _ := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
						n += c
					}
				}
			}
		}
		return n
	}
	etcd0, proxy0 = cpu(b.etcd), cpu(proxy)
	fleet0, switches0 := fleetCPU(), switches()
	for i := 0; i < *fleetPut; i++ {
		for _, r := range fleet {
			r.drain()
		}
		t0 := time.Now()
		if _, err := b.cli.Put(context.Background(), key(prefix, i%10), fresh(1024)); err != nil {
			return err
		}
		var last time.Time
		for _, r := range fleet {
			at, err := r.next("hup", time.Minute)
			if err != nil {
				return err
			}
			if at.After(last) {
				last = at
			}
		}
		f.add(b, "p50 put -> all targets updated (child signalled)", bin, ms(last.Sub(t0)))
		f.add(b, "p99 put -> all targets updated (child signalled)", bin, ms(last.Sub(t0)))
	}
	f.add(b, "etcd CPU per put", bin, ms(cpu(b.etcd)-etcd0)/float64(*fleetPut))
	f.add(b, fmt.Sprintf("CPU of the %d dispensers per put", n), bin, ms(fleetCPU()-fleet0)/float64(*fleetPut))
	f.note("context switches per dispenser per put", bin, fmt.Sprintf("%.1f", float64(switches()-switches0)/float64(n)/float64(*fleetPut)))
	if proxy != nil {
		f.add(b, "grpc-proxy CPU per put", bin, ms(cpu(proxy)-proxy0)/float64(*fleetPut))
	}
	return nil
}
