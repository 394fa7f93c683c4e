package daemon

import (
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/xdp-hostd/xdp-hostd/agentproto"
	"github.com/xdp-hostd/xdp-hostd/guestprog"
)

// A program the kernel charged more for than the VM's quota is a refused
// program for the API (422) and the guest agent ("refused"), with the
// charges in the message, not an internal error.
func TestOverQuotaIsRefused(t *testing.T) {
	err := fmt.Errorf("VM vm1: %w", &guestprog.QuotaError{Quota: 100, Total: 200,
		Charges: []guestprog.Charge{{Kind: "map", Name: "big", ID: 7, Bytes: 200}}})
	rec := httptest.NewRecorder()
	writeErr(rec, err)
	if rec.Code != http.StatusUnprocessableEntity || !strings.Contains(rec.Body.String(), "map big (id 7): 200 bytes") {
		t.Errorf("API: %d %s", rec.Code, rec.Body.String())
	}
	var ae *agentproto.Error
	if !errors.As(agentErr(err), &ae) || ae.Code != agentproto.CodeRefused || !strings.Contains(ae.Message, "quota") {
		t.Errorf("agent: %+v", agentErr(err))
	}
}
