package etcdtest

import (
	"io"
	"net"
	"sync"
	"sync/atomic"
)

// Bridge is a TCP forwarder in front of the server's client port. It models
// the network between the dispenser and etcd: it can drop every connection
// and refuse new ones. It never drops bytes inside a live connection, which
// no real network does either.
type Bridge struct {
	l      net.Listener
	to     string
	mu     sync.Mutex
	down   bool
	conns  map[net.Conn]struct{}
	closed bool
	sent   atomic.Int64 // bytes clients sent towards etcd
}

func newBridge(to string) (*Bridge, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	b := &Bridge{l: l, to: to, conns: map[net.Conn]struct{}{}}
	go b.accept()
	return b, nil
}

// Addr is the address clients dial.
func (b *Bridge) Addr() string { return b.l.Addr().String() }

// Sent is how many bytes the clients have sent towards etcd so far.
func (b *Bridge) Sent() int64 { return b.sent.Load() }

// Drop closes every connection; clients reconnect.
func (b *Bridge) Drop() {
	b.mu.Lock()
	defer b.mu.Unlock()
	for c := range b.conns {
		c.Close()
	}
	clear(b.conns)
}

// Down drops every connection and refuses new ones until Up.
func (b *Bridge) Down() {
	b.mu.Lock()
	b.down = true
	b.mu.Unlock()
	b.Drop()
}

// Up lets connections through again.
func (b *Bridge) Up() {
	b.mu.Lock()
	b.down = false
	b.mu.Unlock()
}

// Close stops the bridge for good.
func (b *Bridge) Close() {
	b.mu.Lock()
	b.closed = true
	b.mu.Unlock()
	b.l.Close()
	b.Drop()
}

func (b *Bridge) accept() {
	for {
		in, err := b.l.Accept()
		if err != nil {
			return
		}
		b.mu.Lock()
		refuse := b.down || b.closed
		b.mu.Unlock()
		if refuse {
			in.Close()
			continue
		}
		out, err := net.Dial("tcp", b.to)
		if err != nil {
			in.Close()
			continue
		}
		b.mu.Lock()
		b.conns[in], b.conns[out] = struct{}{}, struct{}{}
		b.mu.Unlock()
		go b.pipe(in, out, nil)
		go b.pipe(out, in, &b.sent)
	}
}

// pipe copies src to dst until either ends, adding what it copied to count (if not nil) as
// it goes.
func (b *Bridge) pipe(dst, src net.Conn, count *atomic.Int64) {
	var w io.Writer = dst
	if count != nil {
		w = countingWriter{dst, count}
	}
	_, _ = io.Copy(w, src)
	dst.Close()
	src.Close()
	b.mu.Lock()
	delete(b.conns, dst)
	delete(b.conns, src)
	b.mu.Unlock()
}

type countingWriter struct {
	w io.Writer
	n *atomic.Int64
}

func (c countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n.Add(int64(n))
	return n, err
}
