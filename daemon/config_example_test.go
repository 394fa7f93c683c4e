package daemon

import (
	"strings"
	"testing"
)

// The example configuration of the README is valid.
func TestExampleConfig(t *testing.T) {
	c, err := LoadConfig("../examples/xdp-hostd.json")
	if err != nil {
		t.Fatal(err)
	}
	if c.StateDir == "" || c.PinDir == "" || c.Uplinks[0].VMs[2].AgentSocket == "" {
		t.Errorf("the example should show state_dir, pin_dir and agent_socket: %+v", c)
	}
}

func TestVMUUID(t *testing.T) {
	ok := VMConfig{Name: "a", MAC: "52:54:00:00:00:01", UUID: "4b5a9c1e-0f3d-4c5e-9a7b-1d2e3f405162"}
	if err := ok.validate(); err != nil {
		t.Error(err)
	}
	bad := ok
	bad.UUID = "web1"
	if err := bad.validate(); err == nil || !strings.Contains(err.Error(), "uuid:") {
		t.Errorf("bad UUID: %v", err)
	}
}
