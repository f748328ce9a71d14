//go:build !amd64

package supervisor

// Elsewhere there is no counting handler: realtime signals come through os/signal (repeats
// merged) and 32 to 34 are ignored.
const countingSupported = false

func countSignalPC() uintptr      { return 0 }
func returnFromSignalPC() uintptr { return 0 }
