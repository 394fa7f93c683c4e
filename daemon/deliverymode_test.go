package daemon

import (
	"strings"
	"testing"
)

// delivery_mode: copy or zerocopy for vhost-user VMs; zerocopy refused for
// a tap VM and unknown modes refused, each naming the field.
func TestDeliveryModeConfig(t *testing.T) {
	vu := VMConfig{Name: "a", MAC: "52:54:00:00:00:01", Delivery: "vhost-user", VhostUserSocket: "/run/xdp-hostd/vms/a.sock", Queues: []int{1}}
	for _, m := range []string{"", "copy", "zerocopy"} {
		c := vu
		c.DeliveryMode = m
		if err := c.validate(); err != nil {
			t.Errorf("vhost-user, delivery_mode %q: %v", m, err)
		}
	}
	bad := vu
	bad.DeliveryMode = "zero-copy"
	if err := bad.validate(); err == nil || !strings.Contains(err.Error(), "delivery_mode:") || !strings.Contains(err.Error(), `"zerocopy"`) {
		t.Errorf("unknown mode: %v", err)
	}
	tap := VMConfig{Name: "b", MAC: "52:54:00:00:00:02", DeliveryMode: "zerocopy"}
	if err := tap.validate(); err == nil || !strings.Contains(err.Error(), "delivery_mode:") {
		t.Errorf("zerocopy on a tap VM: %v", err)
	}
	tap.DeliveryMode = "copy"
	if err := tap.validate(); err != nil {
		t.Errorf("copy on a tap VM: %v", err)
	}
}
