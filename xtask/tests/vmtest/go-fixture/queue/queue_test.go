// A second package: its tests run from its own directory, where its testdata lives.
package queue

import (
	"os"
	"testing"
)

func TestReadsItsTestdata(t *testing.T) {
	b, err := os.ReadFile("testdata/depth")
	if err != nil {
		t.Fatalf("testdata: %v", err)
	}
	if string(b) != "32\n" {
		t.Fatalf("depth %q", b)
	}
}
