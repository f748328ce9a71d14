package source

import (
	"context"
	"errors"
	"strings"
	"testing"

	"go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// fakeWatch is a Watch stream that returns its responses, then err.
type fakeWatch struct {
	etcdserverpb.Watch_WatchClient
	resps []*etcdserverpb.WatchResponse
	err   error
}

func (f *fakeWatch) Recv() (*etcdserverpb.WatchResponse, error) {
	if len(f.resps) == 0 {
		return nil, f.err
	}
	r := f.resps[0]
	f.resps = f.resps[1:]
	return r, nil
}

func events(keys ...string) []*mvccpb.Event {
	var evs []*mvccpb.Event
	for _, k := range keys {
		evs = append(evs, &mvccpb.Event{Kv: &mvccpb.KeyValue{Key: []byte(k), ModRevision: 7}})
	}
	return evs
}

// A response etcd sent in fragments reaches the source whole, as one response; a failed
// stream closes the channel, and Err says why.
func TestWatchStreamJoinsFragments(t *testing.T) {
	failure := errors.New("connection lost")
	h := &etcdserverpb.ResponseHeader{Revision: 7}
	stream := &fakeWatch{err: failure, resps: []*etcdserverpb.WatchResponse{
		{Header: h, Created: true},
		{Header: h, Fragment: true, Events: events("a", "b")},
		{Header: h, Fragment: true, Events: events("c")},
		{Header: h, Events: events("d")},
		{Header: h, Events: events("e")},
	}}
	ch := make(chan clientv3.WatchResponse, watchBuffer)
	ws := &watchStream{C: ch}
	ws.read(context.Background(), stream, ch)
	var got [][]string
	for r := range ch {
		var keys []string
		for _, ev := range r.Events {
			keys = append(keys, string(ev.Kv.Key))
		}
		got = append(got, keys)
	}
	if len(got) != 3 || len(got[0]) != 0 || len(got[1]) != 4 || len(got[2]) != 1 {
		t.Errorf("responses %q, want the created one, then a b c d together, then e", got)
	}
	if !errors.Is(ws.Err(), failure) {
		t.Errorf("Err() = %v, want the stream's error", ws.Err())
	}
}

// A watch the server cancels (other than for a compaction, which the source resyncs from) ends
// the stream with the server's reason.
func TestWatchStreamCancelledByTheServer(t *testing.T) {
	h := &etcdserverpb.ResponseHeader{Revision: 7}
	stream := &fakeWatch{resps: []*etcdserverpb.WatchResponse{{Header: h, Canceled: true, CancelReason: "no leader"}}}
	ch := make(chan clientv3.WatchResponse, watchBuffer)
	ws := &watchStream{C: ch}
	ws.read(context.Background(), stream, ch)
	if _, ok := <-ch; ok {
		t.Error("the cancellation was handed over as a response")
	}
	if err := ws.Err(); err == nil || !strings.Contains(err.Error(), "no leader") {
		t.Errorf("Err() = %v, want the server's reason", err)
	}
}
