package source

import (
	"bytes"
	"testing"

	"go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
)

// The codec grpc uses in this process is ours, and it puts the same bytes on the wire as
// grpc's proto codec, for the etcd API's messages and for others.
func TestCodecEncodesAsGRPCsProtoCodec(t *testing.T) {
	if _, ok := encoding.GetCodecV2("proto").(gogoCodec); !ok {
		t.Fatalf("grpc's proto codec is %T, want gogoCodec", encoding.GetCodecV2("proto"))
	}
	grpcs := encoding.GetCodecV2("proto").(gogoCodec).fallback
	for _, m := range []any{
		&etcdserverpb.RangeRequest{Key: []byte("/app/"), RangeEnd: []byte("/app0"), Limit: 100, Revision: 7,
			SortOrder: etcdserverpb.RangeRequest_ASCEND},
		&etcdserverpb.RangeResponse{Header: &etcdserverpb.ResponseHeader{Revision: 9, ClusterId: 1, MemberId: 2},
			Kvs:  []*mvccpb.KeyValue{{Key: []byte("/app/a"), Value: []byte("x"), CreateRevision: 3, ModRevision: 9}},
			More: true, Count: 2},
		&etcdserverpb.WatchRequest{RequestUnion: &etcdserverpb.WatchRequest_CreateRequest{
			CreateRequest: &etcdserverpb.WatchCreateRequest{Key: []byte("/app/"), StartRevision: 10, ProgressNotify: true}}},
		durationpb.New(1500), // not the etcd API's: grpc's codec
	} {
		ours, err := gogoCodec{fallback: grpcs}.Marshal(m)
		if err != nil {
			t.Fatalf("%T: %v", m, err)
		}
		want, err := grpcs.Marshal(m)
		if err != nil {
			t.Fatalf("%T with grpc's codec: %v", m, err)
		}
		if !bytes.Equal(ours.Materialize(), want.Materialize()) {
			t.Errorf("%T: encoded as %x, grpc's codec says %x", m, ours.Materialize(), want.Materialize())
		}
	}
}

// A message decoded into is replaced, as proto.Unmarshal does, and it keeps no reference to
// the buffer, which goes back to grpc's pool.
func TestCodecDecodeReplacesTheMessage(t *testing.T) {
	c := encoding.GetCodecV2("proto")
	in := &etcdserverpb.RangeResponse{Header: &etcdserverpb.ResponseHeader{Revision: 9},
		Kvs: []*mvccpb.KeyValue{{Key: []byte("/app/b"), Value: []byte("new")}}}
	b, err := in.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	out := &etcdserverpb.RangeResponse{More: true, Count: 5, Kvs: []*mvccpb.KeyValue{{Key: []byte("/app/a")}}}
	if err := c.Unmarshal(mem.BufferSlice{mem.SliceBuffer(b)}, out); err != nil {
		t.Fatal(err)
	}
	want := bytes.Clone(b)
	clear(b) // the buffer reused
	if got, err := out.Marshal(); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("decoded %v, want %v", out, in)
	}
	d := durationpb.New(0)
	db, _ := proto.Marshal(durationpb.New(1500))
	if err := c.Unmarshal(mem.BufferSlice{mem.SliceBuffer(db)}, d); err != nil || d.AsDuration() != 1500 {
		t.Fatalf("decoded %v (%v), want 1.5µs", d.AsDuration(), err)
	}
}
