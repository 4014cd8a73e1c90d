package nfttest

import (
	"errors"
	"net"
	"os"
	"os/exec"
	"strings"
	"testing"
)

func TestNetNS(t *testing.T) {
	RequireRoot(t)

	var path string
	t.Run("inside", func(t *testing.T) {
		ns := NewNetNS(t, "nfttest")
		path = ns.Path()
		if _, err := os.Stat(path); err != nil {
			t.Fatalf("namespace path: %v", err)
		}

		out, err := ns.Run("ip", "-o", "link", "show")
		if err != nil {
			t.Fatal(err)
		}
		if lines := strings.Split(strings.TrimSpace(out), "\n"); len(lines) != 1 || !strings.Contains(lines[0], "lo:") || !strings.Contains(lines[0], "UP") {
			t.Errorf("a fresh namespace should hold only lo, up; got:\n%s", out)
		}

		// A table made with the nft CLI in the namespace is visible there only.
		table := "nfttest_" + RandomHex(3)
		if _, err := ns.NFT("add table inet "+table+"\n", "-f", "-"); err != nil {
			t.Fatal(err)
		}
		if out, err := ns.NFT("", "list", "tables"); err != nil || !strings.Contains(out, table) {
			t.Errorf("nft list tables in namespace = %q, %v; want %s", out, err, table)
		}
		if err := exec.Command("nft", "list", "table", "inet", table).Run(); err == nil {
			t.Errorf("table %s leaked into the caller's namespace", table)
		}

		// Sysctls written through Do land in the namespace.
		if err := ns.Sysctl("net.ipv4.ip_forward", "1"); err != nil {
			t.Fatal(err)
		}
		if out, err := ns.Run("cat", "/proc/sys/net/ipv4/ip_forward"); err != nil || strings.TrimSpace(out) != "1" {
			t.Errorf("ip_forward in namespace = %q, %v; want 1", out, err)
		}

		// Do switches only the calling thread, and switches it back.
		before := netnsID(t)
		var inside string
		if err := ns.Do(func() error {
			inside = netnsID(t)
			// A socket opened inside stays in the namespace: 127.0.0.1 works
			// because lo is up there.
			l, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				return err
			}
			return l.Close()
		}); err != nil {
			t.Fatal(err)
		}
		if inside == before {
			t.Errorf("Do did not enter the namespace (%s)", inside)
		}
		if after := netnsID(t); after != before {
			t.Errorf("Do left the thread in %s, want %s", after, before)
		}
		wantErr := errors.New("from fn")
		if err := ns.Do(func() error { return wantErr }); !errors.Is(err, wantErr) {
			t.Errorf("Do returned %v, want fn's error", err)
		}
	})
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("namespace %s still exists after cleanup: %v", path, err)
	}

	if err := (&NetNS{Name: "nfttest-never-created"}).Delete(); err != nil {
		t.Errorf("deleting a missing namespace: %v", err)
	}
}

// netnsID names the network namespace of the calling thread, e.g. "net:[4026531840]".
func netnsID(t *testing.T) string {
	t.Helper()
	id, err := os.Readlink("/proc/thread-self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	return id
}
