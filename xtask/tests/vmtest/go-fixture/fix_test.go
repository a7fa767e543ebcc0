// vm-test --go fixture: tests that pass (where ublk is), fail, hang and skip.
package gofixture

import (
	"os"
	"testing"
	"time"
)

func TestPassesWithUblk(t *testing.T) {
	if _, err := os.Stat("/dev/ublk-control"); err != nil {
		t.Fatalf("no ublk here: %v", err)
	}
}

func TestFails(t *testing.T) { t.Fatal("arithmetic is broken") }

func TestHangs(t *testing.T) {
	for {
		time.Sleep(1000 * time.Second)
	}
}

func TestSkips(t *testing.T) { t.Skip("kernel lacks UBLK_F_FIXTURE") }
