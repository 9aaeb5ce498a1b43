package main

// What the generator knows of protobuf and gRPC without generated code: a codec that passes
// bytes through, reading one string field from an encoded message, and the reason and
// RetryInfo of a google.rpc.Status error.

import (
	"encoding/binary"
	"errors"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// rawCodec sends pre-encoded request bytes and hands back the response's bytes as they came.
// Named "proto" so the content-type is the usual application/grpc+proto.
type rawCodec struct{}

func (rawCodec) Marshal(v interface{}) ([]byte, error) { return *(v.(*[]byte)), nil }

func (rawCodec) Unmarshal(data []byte, v interface{}) error {
	p := v.(*[]byte)
	*p = append((*p)[:0], data...)
	return nil
}

func (rawCodec) Name() string { return "proto" }

var errMalformed = errors.New("malformed protobuf message")

// stringField returns the first length-delimited field number `field` of an encoded message.
func stringField(msg []byte, field uint64) ([]byte, error) {
	for len(msg) > 0 {
		tag, n := binary.Uvarint(msg)
		if n <= 0 {
			return nil, errMalformed
		}
		msg = msg[n:]
		switch tag & 7 {
		case 0: // varint
			if _, n = binary.Uvarint(msg); n <= 0 {
				return nil, errMalformed
			}
			msg = msg[n:]
		case 1: // 64-bit
			if len(msg) < 8 {
				return nil, errMalformed
			}
			msg = msg[8:]
		case 2: // length-delimited
			size, n := binary.Uvarint(msg)
			if n <= 0 || uint64(len(msg)-n) < size {
				return nil, errMalformed
			}
			if tag>>3 == field {
				return msg[n : n+int(size)], nil
			}
			msg = msg[n+int(size):]
		case 5: // 32-bit
			if len(msg) < 4 {
				return nil, errMalformed
			}
			msg = msg[4:]
		default:
			return nil, errMalformed
		}
	}
	return nil, errors.New("field not found")
}

// withString prepends string field `field` = value to an encoded message (fields may come in
// any order, so the rest of the message can be encoded once, ahead of time).
func withString(field uint64, value, rest []byte) []byte {
	out := make([]byte, 0, len(value)+len(rest)+12)
	out = binary.AppendUvarint(out, field<<3|2)
	out = binary.AppendUvarint(out, uint64(len(value)))
	out = append(out, value...)
	return append(out, rest...)
}

// outcome names a failed RPC: its code as gRPC's protos spell it (UNAVAILABLE, ...), the
// reason of its ErrorInfo detail ("" when none), and whether it carries a RetryInfo.
func outcome(err error) (code, reason string, retryInfo bool) {
	st, _ := status.FromError(err)
	code = codeName(st.Code())
	for _, detail := range st.Proto().GetDetails() {
		switch strings.TrimPrefix(detail.GetTypeUrl(), "type.googleapis.com/") {
		case "google.rpc.ErrorInfo":
			if value, err := stringField(detail.GetValue(), 1); err == nil {
				reason = string(value)
			}
		case "google.rpc.RetryInfo":
			retryInfo = true
		}
	}
	return code, reason, retryInfo
}

var codeNames = map[codes.Code]string{
	codes.OK:                 "OK",
	codes.Canceled:           "CANCELLED",
	codes.Unknown:            "UNKNOWN",
	codes.InvalidArgument:    "INVALID_ARGUMENT",
	codes.DeadlineExceeded:   "DEADLINE_EXCEEDED",
	codes.NotFound:           "NOT_FOUND",
	codes.AlreadyExists:      "ALREADY_EXISTS",
	codes.PermissionDenied:   "PERMISSION_DENIED",
	codes.ResourceExhausted:  "RESOURCE_EXHAUSTED",
	codes.FailedPrecondition: "FAILED_PRECONDITION",
	codes.Aborted:            "ABORTED",
	codes.OutOfRange:         "OUT_OF_RANGE",
	codes.Unimplemented:      "UNIMPLEMENTED",
	codes.Internal:           "INTERNAL",
	codes.Unavailable:        "UNAVAILABLE",
	codes.DataLoss:           "DATA_LOSS",
	codes.Unauthenticated:    "UNAUTHENTICATED",
}

func codeName(c codes.Code) string {
	if name, ok := codeNames[c]; ok {
		return name
	}
	return c.String()
}

func grpcCode(err error) codes.Code { return status.Code(err) }

// errOrGranted turns a probe that was expected to be refused but was granted into an error.
func errOrGranted(err error) error {
	if err != nil {
		return err
	}
	return status.Error(codes.OK, "granted (expected RESOURCE_EXHAUSTED)")
}
