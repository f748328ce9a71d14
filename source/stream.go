package source

import (
	"context"
	"errors"
	"fmt"
	"math"
	"sync/atomic"

	"go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
)

// watchStream is one etcd Watch stream of one watch, read by one goroutine that hands each
// whole response (fragments joined) over on C. clientv3's watcher takes three goroutine
// hand-offs between the stream and its channel (the stream's reader, its dispatcher, the
// watch's own goroutine), each a wake-up of another thread on the way to every signal; here
// there is one. A failed or cancelled stream closes C, and Err says why: the caller watches
// again (clientv3 would resume by itself after a reconnect; the source checks etcd's keys
// after any failure anyway).
type watchStream struct {
	C   <-chan clientv3.WatchResponse
	err atomic.Pointer[error]
}

// Err is why C was closed.
func (w *watchStream) Err() error {
	if p := w.err.Load(); p != nil {
		return *p
	}
	return errors.New("watch stream closed")
}

// watchBuffer is how many responses the reader may hold for the source: a burst then waits in
// memory, bounded (etcd's flow-control window bounds what waits behind it).
const watchBuffer = 16

// openWatch opens a Watch stream for the prefix from revision from (with progress
// notifications and fragments), once the connection is ready, and starts its reader. ctx
// ends the stream.
func (s *Source) openWatch(ctx context.Context, from int64) (*watchStream, error) {
	key, end := s.keyRange()
	// Not waiting for a connection: while etcd is unreachable the watch fails at once, and the
	// source reports it and retries with backoff. Responses as large as clientv3 takes them.
	stream, err := etcdserverpb.NewWatchClient(s.client.ActiveConnection()).Watch(ctx,
		grpc.WaitForReady(false), grpc.MaxCallRecvMsgSize(math.MaxInt32))
	if err != nil {
		return nil, fmt.Errorf("opening the watch: %w", err)
	}
	req := &etcdserverpb.WatchRequest{RequestUnion: &etcdserverpb.WatchRequest_CreateRequest{
		CreateRequest: &etcdserverpb.WatchCreateRequest{Key: []byte(key), RangeEnd: []byte(end),
			StartRevision: from, ProgressNotify: true, Fragment: true}}}
	if err := stream.Send(req); err != nil {
		return nil, fmt.Errorf("opening the watch: %w", err)
	}
	ch := make(chan clientv3.WatchResponse, watchBuffer)
	ws := &watchStream{C: ch}
	go ws.read(ctx, stream, ch)
	return ws, nil
}

// read receives the stream's responses until it fails or ctx ends, then closes ch.
func (w *watchStream) read(ctx context.Context, stream etcdserverpb.Watch_WatchClient, ch chan<- clientv3.WatchResponse) {
	defer close(ch)
	var joined []*clientv3.Event // the fragments of a response so far
	for {
		r, err := stream.Recv()
		if err != nil {
			w.err.Store(&err)
			return
		}
		events := make([]*clientv3.Event, 0, len(joined)+len(r.Events))
		events = append(events, joined...)
		for _, ev := range r.Events {
			events = append(events, (*clientv3.Event)(ev))
		}
		if r.Fragment {
			joined = events
			continue
		}
		joined = nil
		if r.Canceled && r.CompactRevision == 0 {
			err := fmt.Errorf("watch canceled by the server: %s", r.CancelReason)
			w.err.Store(&err)
			return
		}
		resp := clientv3.WatchResponse{Events: events, CompactRevision: r.CompactRevision,
			Canceled: r.Canceled, Created: r.Created}
		if r.Header != nil {
			resp.Header = *r.Header
		}
		select {
		case ch <- resp:
		case <-ctx.Done():
			return
		}
		if r.Canceled { // compacted: the source resyncs
			return
		}
	}
}
