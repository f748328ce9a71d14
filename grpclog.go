package main

import (
	"io"
	"os"

	"google.golang.org/grpc/grpclog"
)

// quietGRPCInfo keeps grpc's default logger (errors on stderr, GRPC_GO_LOG_SEVERITY_LEVEL) but
// at verbosity -1 while its info messages are discarded anyway: at verbosity 0 grpc formats
// the resolver's state as indented JSON for an info message at each connection (0.2 ms of
// reflection on the start's critical path, for nothing). GRPC_GO_LOG_VERBOSITY_LEVEL or
// GRPC_GO_LOG_FORMATTER set, or info messages asked for, leave grpc's logger alone. It must
// run before grpc is used.
func quietGRPCInfo() {
	if os.Getenv("GRPC_GO_LOG_VERBOSITY_LEVEL") != "" || os.Getenv("GRPC_GO_LOG_FORMATTER") != "" {
		return
	}
	var warningW, errorW io.Writer = io.Discard, io.Discard
	switch os.Getenv("GRPC_GO_LOG_SEVERITY_LEVEL") { // as grpc reads it
	case "", "ERROR", "error":
		errorW = os.Stderr
	case "WARNING", "warning":
		warningW = os.Stderr
	default: // info, or a level grpc does not know: its own logger decides
		return
	}
	grpclog.SetLoggerV2(grpclog.NewLoggerV2WithVerbosity(io.Discard, warningW, errorW, -1))
}
