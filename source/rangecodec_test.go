package source

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"reflect"
	"testing"

	"go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
)

// split cuts b into buffers at random places, as grpc's frames do.
func split(rng *rand.Rand, b []byte) mem.BufferSlice {
	var s mem.BufferSlice
	for len(b) > 0 {
		n := min(len(b), 1+rng.IntN(40))
		s = append(s, mem.SliceBuffer(bytes.Clone(b[:n])))
		b = b[n:]
	}
	return s
}

func rangeResponses(rng *rand.Rand) []*etcdserverpb.RangeResponse {
	resps := []*etcdserverpb.RangeResponse{
		{},
		{Header: &etcdserverpb.ResponseHeader{Revision: 7, ClusterId: 1 << 60, MemberId: 3, RaftTerm: 2}, Count: 0},
		{Kvs: []*mvccpb.KeyValue{{Key: []byte("/k"), Value: []byte{}}, {Key: []byte{}, Value: nil}, {}}},
	}
	for i := range 20 {
		r := &etcdserverpb.RangeResponse{Header: &etcdserverpb.ResponseHeader{Revision: rng.Int64()},
			More: i%2 == 0, Count: rng.Int64N(1 << 40)}
		for j := range rng.IntN(30) {
			r.Kvs = append(r.Kvs, &mvccpb.KeyValue{Key: []byte(fmt.Sprintf("/app/k%d", j)),
				Value: bytes.Repeat([]byte{byte(j)}, rng.IntN(3000)), CreateRevision: rng.Int64(),
				ModRevision: -rng.Int64(), Version: rng.Int64N(9), Lease: rng.Int64()})
		}
		resps = append(resps, r)
	}
	return resps
}

// decodeRange decodes what gogo's Unmarshal decodes, whatever the buffers' boundaries.
func TestDecodeRangeAsGogo(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	c := encoding.GetCodecV2("proto")
	for i, in := range rangeResponses(rng) {
		b, err := in.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		var want etcdserverpb.RangeResponse
		if err := want.Unmarshal(b); err != nil {
			t.Fatal(err)
		}
		got := &etcdserverpb.RangeResponse{Count: 99, Kvs: []*mvccpb.KeyValue{{Key: []byte("stale")}}}
		if err := c.Unmarshal(split(rng, b), got); err != nil {
			t.Fatalf("response %d: %v", i, err)
		}
		if !reflect.DeepEqual(got, &want) {
			t.Fatalf("response %d: decoded %v, want %v", i, got, &want)
		}
	}
}

// Fields it does not know: in a KeyValue kept as gogo keeps them; in the response, gogo's
// Unmarshal decodes it.
func TestDecodeRangeUnknownFields(t *testing.T) {
	kv, _ := (&mvccpb.KeyValue{Key: []byte("/a"), Value: []byte("v")}).Marshal()
	kv = protowire.AppendBytes(protowire.AppendTag(kv, 9, protowire.BytesType), []byte("new"))
	kv = protowire.AppendVarint(protowire.AppendTag(kv, 10, protowire.VarintType), 5)
	var b []byte
	b = protowire.AppendBytes(protowire.AppendTag(b, 2, protowire.BytesType), kv)
	b = protowire.AppendVarint(protowire.AppendTag(b, 3, protowire.VarintType), 1)
	withUnknown := protowire.AppendFixed64(protowire.AppendTag(bytes.Clone(b), 12, protowire.Fixed64Type), 42)
	rng := rand.New(rand.NewPCG(3, 4))
	for _, b := range [][]byte{b, withUnknown} {
		var want etcdserverpb.RangeResponse
		if err := want.Unmarshal(b); err != nil {
			t.Fatal(err)
		}
		var got etcdserverpb.RangeResponse
		if err := encoding.GetCodecV2("proto").Unmarshal(split(rng, b), &got); err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(&got, &want) {
			t.Fatalf("decoded %v, want %v", &got, &want)
		}
	}
}

// A key and a value share their KeyValue's allocation: an append to the key must not
// overwrite the value.
func TestDecodeRangeKeyAndValueDoNotOverlap(t *testing.T) {
	in := &etcdserverpb.RangeResponse{Kvs: []*mvccpb.KeyValue{{Key: []byte("/k"), Value: []byte("value")}}}
	b, _ := in.Marshal()
	var got etcdserverpb.RangeResponse
	if err := decodeRange(mem.BufferSlice{mem.SliceBuffer(b)}, &got); err != nil {
		t.Fatal(err)
	}
	_ = append(got.Kvs[0].Key, "XXXXX"...) // fits before the end of the value
	if string(got.Kvs[0].Value) != "value" {
		t.Fatalf("value %q after an append to the key", got.Kvs[0].Value)
	}
}

// A truncated or corrupt response is an error, as with gogo's Unmarshal.
func TestDecodeRangeTruncated(t *testing.T) {
	in := &etcdserverpb.RangeResponse{Kvs: []*mvccpb.KeyValue{{Key: []byte("/k"), Value: []byte("value")}}, Count: 1}
	b, _ := in.Marshal()
	for n := 1; n < len(b); n++ {
		var want, got etcdserverpb.RangeResponse
		wantErr := want.Unmarshal(b[:n])
		err := encoding.GetCodecV2("proto").Unmarshal(mem.BufferSlice{mem.SliceBuffer(b[:n])}, &got)
		if (err == nil) != (wantErr == nil) {
			t.Errorf("first %d bytes: error %v, gogo says %v", n, err, wantErr)
		}
	}
}

// On any bytes, in buffers cut anywhere, the codec decodes a RangeResponse as gogo's
// Unmarshal does: the same error or none, and the same message. A snapshot page decoded
// wrong would be a mirror that silently differs from etcd.
func FuzzDecodeRange(f *testing.F) {
	rng := rand.New(rand.NewPCG(5, 6))
	for _, r := range rangeResponses(rng)[:6] {
		b, _ := r.Marshal()
		f.Add(b, uint64(1))
	}
	f.Add([]byte{0x12, 0x02, 0x0a}, uint64(7))
	c := encoding.GetCodecV2("proto")
	f.Fuzz(func(t *testing.T, b []byte, seed uint64) {
		var want etcdserverpb.RangeResponse
		wantErr := want.Unmarshal(b)
		got := &etcdserverpb.RangeResponse{Count: 99, Kvs: []*mvccpb.KeyValue{{Key: []byte("stale")}}}
		err := c.Unmarshal(split(rand.New(rand.NewPCG(seed, seed)), b), got)
		if (err == nil) != (wantErr == nil) {
			t.Fatalf("error %v, gogo says %v", err, wantErr)
		}
		if err == nil && !reflect.DeepEqual(got, &want) {
			t.Fatalf("decoded %v, gogo %v", got, &want)
		}
	})
}
