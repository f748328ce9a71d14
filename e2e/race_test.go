//go:build race

package e2e

// The binary under test is built with the race detector when the tests are.
const raceEnabled = true
