// Package dnstest is a tiny DNS server on 127.0.0.1 (UDP) for tests: it answers SRV and A
// questions from fixed records and NXDOMAIN to everything else. The messages are encoded by
// hand (RFC 1035), which is enough for Go's resolver.
package dnstest

import (
	"encoding/binary"
	"net"
	"strings"
	"testing"
)

// SRV is one SRV record's data.
type SRV struct {
	Target string
	Port   uint16
}

// Records are the answers, by fully qualified name without the final dot.
type Records struct {
	SRV map[string][]SRV
	A   map[string]net.IP
}

const (
	typeA   = 1
	typeSRV = 33
	classIN = 1
)

// Start serves recs until the end of the test and returns the server's host:port.
func Start(t *testing.T, recs Records) string {
	t.Helper()
	conn, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	go func() {
		buf := make([]byte, 1500)
		for {
			n, from, err := conn.ReadFrom(buf)
			if err != nil {
				return
			}
			if resp := answer(buf[:n], recs); resp != nil {
				conn.WriteTo(resp, from)
			}
		}
	}()
	return conn.LocalAddr().String()
}

// answer builds the response to one query, or nil for a message it cannot read.
func answer(q []byte, recs Records) []byte {
	if len(q) < 12 {
		return nil
	}
	name, end, ok := readName(q, 12)
	if !ok || end+4 > len(q) {
		return nil
	}
	qtype := binary.BigEndian.Uint16(q[end:])
	question := q[12 : end+4]

	var answers [][]byte
	switch qtype {
	case typeSRV:
		for _, s := range recs.SRV[name] {
			rdata := binary.BigEndian.AppendUint16(nil, 0)  // priority
			rdata = binary.BigEndian.AppendUint16(rdata, 0) // weight
			rdata = binary.BigEndian.AppendUint16(rdata, s.Port)
			answers = append(answers, record(typeSRV, appendName(rdata, s.Target)))
		}
	case typeA:
		if ip := recs.A[name].To4(); ip != nil {
			answers = append(answers, record(typeA, ip))
		}
	}
	_, known := recs.SRV[name]
	_, knownA := recs.A[name]

	resp := append([]byte(nil), q[0:2]...)           // the query's id
	flags := uint16(0x8400)                          // response, authoritative
	flags |= binary.BigEndian.Uint16(q[2:]) & 0x0100 // recursion desired, echoed
	if !known && !knownA {
		flags |= 3 // NXDOMAIN
	}
	resp = binary.BigEndian.AppendUint16(resp, flags)
	resp = binary.BigEndian.AppendUint16(resp, 1) // one question
	resp = binary.BigEndian.AppendUint16(resp, uint16(len(answers)))
	resp = binary.BigEndian.AppendUint16(resp, 0) // authority
	resp = binary.BigEndian.AppendUint16(resp, 0) // additional
	resp = append(resp, question...)
	for _, a := range answers {
		resp = append(resp, a...)
	}
	return resp
}

// record is one answer for the question's name (a pointer to offset 12), class IN, TTL 5s.
func record(typ uint16, rdata []byte) []byte {
	r := []byte{0xc0, 12}
	r = binary.BigEndian.AppendUint16(r, typ)
	r = binary.BigEndian.AppendUint16(r, classIN)
	r = binary.BigEndian.AppendUint32(r, 5)
	r = binary.BigEndian.AppendUint16(r, uint16(len(rdata)))
	return append(r, rdata...)
}

// readName reads an uncompressed name (queries have no pointers), lower-cased, without the
// final dot, and returns the offset after it.
func readName(b []byte, off int) (string, int, bool) {
	var labels []string
	for off < len(b) {
		n := int(b[off])
		off++
		if n == 0 {
			return strings.ToLower(strings.Join(labels, ".")), off, true
		}
		if n > 63 || off+n > len(b) {
			return "", 0, false
		}
		labels = append(labels, string(b[off:off+n]))
		off += n
	}
	return "", 0, false
}

func appendName(b []byte, name string) []byte {
	for _, l := range strings.Split(strings.TrimSuffix(name, "."), ".") {
		if l != "" {
			b = append(b, byte(len(l)))
			b = append(b, l...)
		}
	}
	return append(b, 0)
}
