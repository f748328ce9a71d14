package source

import (
	"go.etcd.io/etcd/api/v3/etcdserverpb"
	"google.golang.org/grpc/encoding"
	_ "google.golang.org/grpc/encoding/proto" // registers the codec that gogoCodec falls back to
	"google.golang.org/grpc/mem"
)

// gogoMessage is a message of the etcd API: gogo/protobuf generated code with its own
// encoding methods.
type gogoMessage interface {
	Marshal() ([]byte, error)
	Unmarshal([]byte) error
	Reset()
}

// gogoCodec encodes the etcd API's messages with their own Marshal and Unmarshal, which is what
// grpc's proto codec ends up calling too (through protobuf-go's wrapper of old-style messages),
// so the bytes on the wire are the same. But that wrapper first builds, the first time it
// meets a message type, the reflection tables of the type (RangeRequest 0.3 ms, RangeResponse
// 0.15 ms), and the start's first Get waits for them. Other messages go to grpc's codec.
type gogoCodec struct{ fallback encoding.CodecV2 }

// It replaces grpc's "proto" codec in this process: grpc picks codecs by name, once per call.
func init() { encoding.RegisterCodecV2(gogoCodec{fallback: encoding.GetCodecV2("proto")}) }

func (c gogoCodec) Name() string { return "proto" }

func (c gogoCodec) Marshal(v any) (mem.BufferSlice, error) {
	m, ok := v.(gogoMessage)
	if !ok {
		return c.fallback.Marshal(v)
	}
	b, err := m.Marshal() // requests: small, not worth a pooled buffer
	if err != nil {
		return nil, err
	}
	return mem.BufferSlice{mem.SliceBuffer(b)}, nil
}

func (c gogoCodec) Unmarshal(data mem.BufferSlice, v any) error {
	m, ok := v.(gogoMessage)
	if !ok {
		return c.fallback.Unmarshal(data, v)
	}
	if r, ok := v.(*etcdserverpb.RangeResponse); ok {
		r.Reset()
		if decodeRange(data, r) == nil {
			return nil
		}
		// A field it does not know, or bytes it refuses: gogo's Unmarshal decides, so that
		// an error (or its absence) is always the one grpc's codec would give.
		// (Reader took its own references: data is whole.)
	}
	// As grpc's codec does: one contiguous buffer, back to the pool afterwards (Unmarshal
	// copies the bytes it keeps).
	buf := data.MaterializeToBuffer(mem.DefaultBufferPool())
	defer buf.Free()
	m.Reset() // proto.Unmarshal replaces a message; gogo's Unmarshal merges into it
	return m.Unmarshal(buf.ReadOnlyData())
}
