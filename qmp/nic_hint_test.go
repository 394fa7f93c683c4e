package qmp

import (
	"errors"
	"strings"
	"testing"
)

// QEMU's answer to device_add on a pc machine without ACPI (a libvirt
// domain without <features><acpi/>) gets the fix appended.
func TestHotplugHint(t *testing.T) {
	err := errors.New("qmp: device_add: GenericError: Bus 'pci.0' does not support hotplugging")
	if h := hotplugHint(err); !strings.Contains(h, "<features><acpi/></features>") || !strings.Contains(h, "-no-acpi") {
		t.Errorf("hint for %v: %q", err, h)
	}
	if h := hotplugHint(errors.New("qmp: device_add: Duplicate device ID")); h != "" {
		t.Errorf("hint for an unrelated error: %q", h)
	}
}
