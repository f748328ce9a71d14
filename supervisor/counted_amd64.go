package supervisor

// Implemented in counted_amd64.s.
func countSignal()
func returnFromSignal()
func countSignalPC() uintptr
func returnFromSignalPC() uintptr

// countingSupported: the handler exists on this architecture.
const countingSupported = true
