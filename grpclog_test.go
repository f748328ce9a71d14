package main

import (
	"io"
	"os"
	"strings"
	"testing"

	"google.golang.org/grpc/grpclog"
)

// grpc's errors still reach stderr; what its info messages would have said is not formatted.
func TestGRPCLoggerQuietButErrorsOnStderr(t *testing.T) {
	t.Setenv("GRPC_GO_LOG_SEVERITY_LEVEL", "")
	t.Setenv("GRPC_GO_LOG_VERBOSITY_LEVEL", "")
	t.Setenv("GRPC_GO_LOG_FORMATTER", "")
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	stderr := os.Stderr
	os.Stderr = w
	quietGRPCInfo()
	os.Stderr = stderr
	grpclog.Info("an info message")
	grpclog.Error("an error message")
	w.Close()
	out, _ := io.ReadAll(r)
	if grpclog.V(0) {
		t.Error("grpc's logger at verbosity 0: it formats what it then discards")
	}
	if !strings.Contains(string(out), "an error message") || strings.Contains(string(out), "an info message") {
		t.Errorf("stderr got %q, want the error message only", out)
	}

	// Info messages asked for: grpc's own logger, at its verbosity.
	t.Setenv("GRPC_GO_LOG_SEVERITY_LEVEL", "info")
	grpclog.SetLoggerV2(grpclog.NewLoggerV2(io.Discard, io.Discard, io.Discard))
	quietGRPCInfo()
	if grpclog.V(-1) && !grpclog.V(0) {
		t.Error("with GRPC_GO_LOG_SEVERITY_LEVEL=info, the logger was replaced")
	}
}
