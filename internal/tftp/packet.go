package tftp

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// Opcodes of RFC 1350 and RFC 2347.
const (
	opRRQ   = 1
	opWRQ   = 2
	opDATA  = 3
	opACK   = 4
	opERROR = 5
	opOACK  = 6
)

// ErrorCode is a TFTP error code (RFC 1350, RFC 2347).
type ErrorCode uint16

// The error codes of RFC 1350 and RFC 2347.
const (
	ErrUndefined      ErrorCode = 0
	ErrNotFound       ErrorCode = 1
	ErrAccess         ErrorCode = 2
	ErrDiskFull       ErrorCode = 3
	ErrIllegal        ErrorCode = 4
	ErrUnknownTID     ErrorCode = 5
	ErrExists         ErrorCode = 6
	ErrNoUser         ErrorCode = 7
	ErrOptionRefused  ErrorCode = 8
	maxKnownErrorCode           = ErrOptionRefused
)

var errorCodeNames = [...]string{
	"not defined",
	"file not found",
	"access violation",
	"disk full or allocation exceeded",
	"illegal TFTP operation",
	"unknown transfer ID",
	"file already exists",
	"no such user",
	"option negotiation refused",
}

func (c ErrorCode) String() string {
	if c <= maxKnownErrorCode {
		return errorCodeNames[c]
	}
	return fmt.Sprintf("error code %d", uint16(c))
}

// Error is a TFTP ERROR packet, received from the peer or sent to it.
type Error struct {
	Code    ErrorCode
	Message string
}

func (e *Error) Error() string {
	if e.Message == "" {
		return fmt.Sprintf("tftp error %d (%v)", uint16(e.Code), e.Code)
	}
	return fmt.Sprintf("tftp error %d (%v): %s", uint16(e.Code), e.Code, e.Message)
}

// Protocol limits.
const (
	MinBlockSize     = 8     // RFC 2348
	MaxBlockSize     = 65464 // RFC 2348
	DefaultBlockSize = 512   // RFC 1350
	MaxWindowSize    = 65535 // RFC 7440
	maxRequest       = 65468 // a request packet may be up to the largest packet
)

// Mode is the transfer mode of a request.
const (
	modeOctet    = "octet"
	modeNetascii = "netascii"
	modeMail     = "mail"
)

// Packet is a decoded TFTP packet: one of *RequestPacket, *Data, *Ack,
// *Error and *OptionAck.
type Packet interface{ packet() }

// RequestPacket is a read (RRQ) or write (WRQ) request.
type RequestPacket struct {
	Op       Op
	Filename string
	Mode     string // lower case
	Options  []Option
}

// Option is one option of a request or an OACK, in the order sent.
type Option struct{ Name, Value string }

// Data is a DATA packet. Payload aliases the decoded buffer.
type Data struct {
	Block   uint16
	Payload []byte
}

// Ack is an ACK packet.
type Ack struct{ Block uint16 }

// OptionAck is an OACK packet (RFC 2347).
type OptionAck struct{ Options []Option }

func (*RequestPacket) packet() {}
func (*Data) packet()          {}
func (*Ack) packet()           {}
func (*Error) packet()         {}
func (*OptionAck) packet()     {}

// Op is the operation of a request.
type Op uint8

const (
	OpRead  Op = opRRQ // a GET: RRQ
	OpWrite Op = opWRQ // a PUT: WRQ
)

func (o Op) String() string {
	switch o {
	case OpRead:
		return "read"
	case OpWrite:
		return "write"
	}
	return fmt.Sprintf("op(%d)", uint8(o))
}

// ErrMalformed is wrapped by every decoding error.
var ErrMalformed = errors.New("malformed TFTP packet")

func malformed(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrMalformed, fmt.Sprintf(format, args...))
}

// Decode decodes one TFTP packet. Data payloads alias b; strings are
// copied.
func Decode(b []byte) (Packet, error) {
	if len(b) < 2 {
		return nil, malformed("%d bytes, shorter than an opcode", len(b))
	}
	op := binary.BigEndian.Uint16(b)
	body := b[2:]
	switch op {
	case opRRQ, opWRQ:
		return decodeRequest(Op(op), body)
	case opDATA:
		if len(body) < 2 {
			return nil, malformed("DATA of %d bytes has no block number", len(b))
		}
		if len(body)-2 > MaxBlockSize {
			return nil, malformed("DATA payload of %d bytes exceeds %d", len(body)-2, MaxBlockSize)
		}
		return &Data{Block: binary.BigEndian.Uint16(body), Payload: body[2:]}, nil
	case opACK:
		if len(body) < 2 {
			return nil, malformed("ACK of %d bytes has no block number", len(b))
		}
		return &Ack{Block: binary.BigEndian.Uint16(body)}, nil
	case opERROR:
		if len(body) < 2 {
			return nil, malformed("ERROR of %d bytes has no code", len(b))
		}
		e := &Error{Code: ErrorCode(binary.BigEndian.Uint16(body))}
		msg := body[2:]
		// Be lenient: some peers omit the terminating NUL.
		if i := bytes.IndexByte(msg, 0); i >= 0 {
			msg = msg[:i]
		}
		e.Message = string(msg)
		return e, nil
	case opOACK:
		opts, err := decodeOptions(body)
		if err != nil {
			return nil, err
		}
		return &OptionAck{Options: opts}, nil
	}
	return nil, malformed("unknown opcode %d", op)
}

// fields splits b into NUL-terminated strings; the last must end with NUL.
func fields(b []byte) ([]string, error) {
	var out []string
	for len(b) > 0 {
		i := bytes.IndexByte(b, 0)
		if i < 0 {
			return nil, malformed("string %q is not NUL-terminated", truncate(string(b)))
		}
		out = append(out, string(b[:i]))
		b = b[i+1:]
	}
	return out, nil
}

func decodeRequest(op Op, body []byte) (*RequestPacket, error) {
	f, err := fields(body)
	if err != nil {
		return nil, err
	}
	if len(f) < 2 {
		return nil, malformed("%v request needs a file name and a mode", op)
	}
	if f[0] == "" {
		return nil, malformed("%v request with an empty file name", op)
	}
	r := &RequestPacket{Op: op, Filename: f[0], Mode: strings.ToLower(f[1])}
	r.Options, err = pairs(f[2:])
	if err != nil {
		return nil, err
	}
	return r, nil
}

func decodeOptions(body []byte) ([]Option, error) {
	f, err := fields(body)
	if err != nil {
		return nil, err
	}
	return pairs(f)
}

func pairs(f []string) ([]Option, error) {
	if len(f)%2 != 0 {
		return nil, malformed("option %q has no value", truncate(f[len(f)-1]))
	}
	var opts []Option
	for i := 0; i < len(f); i += 2 {
		if f[i] == "" {
			return nil, malformed("option with an empty name")
		}
		opts = append(opts, Option{Name: strings.ToLower(f[i]), Value: f[i+1]})
	}
	return opts, nil
}

func truncate(s string) string {
	if len(s) > 64 {
		return s[:64] + "..."
	}
	return s
}

// Encoding. The appenders write into b and return the extended slice, so
// hot paths reuse one buffer.

func appendRequest(b []byte, op Op, filename string, opts []Option) []byte {
	b = binary.BigEndian.AppendUint16(b, uint16(op))
	b = append(b, filename...)
	b = append(b, 0)
	b = append(b, modeOctet...)
	b = append(b, 0)
	return appendOptions(b, opts)
}

func appendOptions(b []byte, opts []Option) []byte {
	for _, o := range opts {
		b = append(b, o.Name...)
		b = append(b, 0)
		b = append(b, o.Value...)
		b = append(b, 0)
	}
	return b
}

func appendOACK(b []byte, opts []Option) []byte {
	b = binary.BigEndian.AppendUint16(b, opOACK)
	return appendOptions(b, opts)
}

func appendAck(b []byte, block uint16) []byte {
	b = binary.BigEndian.AppendUint16(b, opACK)
	return binary.BigEndian.AppendUint16(b, block)
}

func appendError(b []byte, code ErrorCode, msg string) []byte {
	b = binary.BigEndian.AppendUint16(b, opERROR)
	b = binary.BigEndian.AppendUint16(b, uint16(code))
	b = append(b, msg...)
	return append(b, 0)
}

// Encode encodes p; it is the inverse of Decode.
func Encode(p Packet) []byte {
	switch p := p.(type) {
	case *RequestPacket:
		b := binary.BigEndian.AppendUint16(nil, uint16(p.Op))
		b = append(b, p.Filename...)
		b = append(b, 0)
		b = append(b, p.Mode...)
		b = append(b, 0)
		return appendOptions(b, p.Options)
	case *Data:
		b := binary.BigEndian.AppendUint16(nil, opDATA)
		b = binary.BigEndian.AppendUint16(b, p.Block)
		return append(b, p.Payload...)
	case *Ack:
		return appendAck(nil, p.Block)
	case *Error:
		return appendError(nil, p.Code, p.Message)
	case *OptionAck:
		return appendOACK(nil, p.Options)
	}
	panic(fmt.Sprintf("tftp: Encode of %T", p))
}

// parseUint parses a decimal option value within [lo, hi].
func parseUint(name, v string, lo, hi int64) (int64, error) {
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil || n < lo || n > hi {
		return 0, fmt.Errorf("option %s=%q: want a number from %d to %d", name, truncate(v), lo, hi)
	}
	return n, nil
}
