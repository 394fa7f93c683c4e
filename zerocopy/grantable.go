package zerocopy

// granTable maps a granule (a buffer's offset / buffer length) to the
// buffer in flight that starts in it: an open-addressed table with linear
// probing, sized to four times the most buffers that can be in flight, so
// lookups touch one or two slots and nothing is allocated after open.
// (A Go map here cost about 180 ns per frame in check and complete,
// profiled under `xdp-hostd bench vhost --modes zerocopy`.)
type granTable struct {
	keys  []uint64 // granule + 1; 0 is an empty slot
	vals  []inflight
	mask  uint64
	shift uint
	n     int
}

// newGranTable holds at least max entries at a load of at most 1/4.
func newGranTable(max int) granTable {
	size, shift := uint64(8), uint(61)
	for size < 4*uint64(max) {
		size <<= 1
		shift--
	}
	return granTable{keys: make([]uint64, size), vals: make([]inflight, size), mask: size - 1, shift: shift}
}

func (t *granTable) slot(gr uint64) uint64 {
	return ((gr + 1) * 0x9e3779b97f4a7c15) >> t.shift & t.mask
}

func (t *granTable) get(gr uint64) (inflight, bool) {
	for i := t.slot(gr); ; i = (i + 1) & t.mask {
		switch t.keys[i] {
		case gr + 1:
			return t.vals[i], true
		case 0:
			return inflight{}, false
		}
	}
}

// put adds or replaces gr's entry. The caller keeps the entries at most
// the max the table was made for.
func (t *granTable) put(gr uint64, v inflight) {
	i := t.slot(gr)
	for ; t.keys[i] != 0; i = (i + 1) & t.mask {
		if t.keys[i] == gr+1 {
			t.vals[i] = v
			return
		}
	}
	t.keys[i], t.vals[i] = gr+1, v
	t.n++
}

// del removes gr's entry, moving later entries of its probe run back so
// that no lookup stops early at the hole (no tombstones).
func (t *granTable) del(gr uint64) {
	i := t.slot(gr)
	for ; t.keys[i] != gr+1; i = (i + 1) & t.mask {
		if t.keys[i] == 0 {
			return
		}
	}
	t.n--
	for j := (i + 1) & t.mask; t.keys[j] != 0; j = (j + 1) & t.mask {
		// The entry at j may move to the hole at i if its home slot is
		// not cyclically in (i, j].
		home := t.slot(t.keys[j] - 1)
		if (j > i && (home <= i || home > j)) || (j < i && home <= i && home > j) {
			t.keys[i], t.vals[i] = t.keys[j], t.vals[j]
			i = j
		}
	}
	t.keys[i], t.vals[i] = 0, inflight{}
}

func (t *granTable) len() int { return t.n }

// each calls f for every entry (in no order); f must not change t.
func (t *granTable) each(f func(gr uint64, v inflight)) {
	for i, k := range t.keys {
		if k != 0 {
			f(k-1, t.vals[i])
		}
	}
}

func (t *granTable) clear() {
	clear(t.keys)
	clear(t.vals)
	t.n = 0
}
