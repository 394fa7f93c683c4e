package daemon

import "testing"

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
