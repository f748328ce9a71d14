package source

import (
	"encoding/binary"
	"fmt"
	"io"

	"go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
)

// errUnknownField: a RangeResponse field decodeRange does not know; the caller decodes the
// message with gogo's Unmarshal instead, which keeps it.
var errUnknownField = fmt.Errorf("source: unknown field in a RangeResponse")

// decodeRange decodes a RangeResponse as its gogo Unmarshal does, without first copying the
// whole message into one buffer (grpc's pool rounds a snapshot page of 0.5 MiB up to a 1 MiB
// buffer, and keeps a few) and without a copy per key and per value: each KeyValue is read
// from grpc's buffers into one allocation of its own, which its key and value share.
func decodeRange(data mem.BufferSlice, m *etcdserverpb.RangeResponse) error {
	r := data.Reader()
	defer r.Close()
	for r.Remaining() > 0 {
		tag, err := binary.ReadUvarint(r)
		if err != nil {
			return fmt.Errorf("decoding a RangeResponse: %w", err)
		}
		num, typ := protowire.DecodeTag(tag)
		switch {
		case (num == 1 || num == 2) && typ == protowire.BytesType:
			n, err := binary.ReadUvarint(r)
			if err != nil {
				return fmt.Errorf("decoding a RangeResponse: %w", err)
			}
			if n > uint64(r.Remaining()) {
				return fmt.Errorf("decoding a RangeResponse: %w", io.ErrUnexpectedEOF)
			}
			b := make([]byte, n)
			if _, err := io.ReadFull(r, b); err != nil {
				return fmt.Errorf("decoding a RangeResponse: %w", err)
			}
			if num == 1 {
				if m.Header == nil {
					m.Header = &etcdserverpb.ResponseHeader{}
				}
				if err := m.Header.Unmarshal(b); err != nil {
					return err
				}
				continue
			}
			kv := &mvccpb.KeyValue{}
			if err := decodeKeyValue(b, kv); err != nil {
				return err
			}
			m.Kvs = append(m.Kvs, kv)
		case (num == 3 || num == 4) && typ == protowire.VarintType:
			v, err := binary.ReadUvarint(r)
			if err != nil {
				return fmt.Errorf("decoding a RangeResponse: %w", err)
			}
			if num == 3 {
				m.More = v != 0
			} else {
				m.Count = int64(v)
			}
		case num >= 1 && num <= 4:
			return fmt.Errorf("proto: wrong wireType = %d for field %d of RangeResponse", typ, num)
		default:
			return errUnknownField
		}
	}
	return nil
}

// decodeKeyValue decodes kv from b as its gogo Unmarshal does, but its key and value are
// slices of b, capped so that an append to one never writes into the other.
func decodeKeyValue(b []byte, kv *mvccpb.KeyValue) error {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return fmt.Errorf("decoding a KeyValue: %w", protowire.ParseError(n))
		}
		field := b
		b = b[n:]
		switch {
		case (num == 1 || num == 5) && typ == protowire.BytesType:
			v, n := protowire.ConsumeBytes(b)
			if n < 0 {
				return fmt.Errorf("decoding a KeyValue: %w", protowire.ParseError(n))
			}
			v = v[:len(v):len(v)]
			if num == 1 {
				kv.Key = v
			} else {
				kv.Value = v
			}
			b = b[n:]
		case num >= 2 && num <= 6 && num != 5 && typ == protowire.VarintType:
			u, n := protowire.ConsumeVarint(b)
			if n < 0 {
				return fmt.Errorf("decoding a KeyValue: %w", protowire.ParseError(n))
			}
			switch num {
			case 2:
				kv.CreateRevision = int64(u)
			case 3:
				kv.ModRevision = int64(u)
			case 4:
				kv.Version = int64(u)
			case 6:
				kv.Lease = int64(u)
			}
			b = b[n:]
		case num >= 1 && num <= 6:
			return fmt.Errorf("proto: wrong wireType = %d for field %d of KeyValue", typ, num)
		default: // kept, as gogo does
			n := protowire.ConsumeFieldValue(num, typ, b)
			if n < 0 {
				return fmt.Errorf("decoding a KeyValue: %w", protowire.ParseError(n))
			}
			b = b[n:]
			kv.XXX_unrecognized = append(kv.XXX_unrecognized, field[:len(field)-len(b)]...)
		}
	}
	return nil
}
