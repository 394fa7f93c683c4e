package image

import (
	"bytes"
	"compress/gzip"
	"fmt"
)

// cpioWriter writes a gzip'd newc ("070701") archive with fixed owners and
// times, so the same inputs give the same bytes.
type cpioWriter struct {
	gz  *gzip.Writer
	ino int
	err error
	out *bytes.Buffer
}

func newCPIO(out *bytes.Buffer) *cpioWriter {
	gz, _ := gzip.NewWriterLevel(out, gzip.BestSpeed)
	return &cpioWriter{gz: gz, ino: 1, out: out}
}

const (
	modeDir  = 0o040000
	modeFile = 0o100000
	modeLink = 0o120000
	modeChar = 0o020000
)

func (w *cpioWriter) entry(name string, mode uint32, rdevMajor, rdevMinor int, data []byte) {
	if w.err != nil {
		return
	}
	nlink := 1
	if mode&0o170000 == modeDir {
		nlink = 2
	}
	hdr := fmt.Sprintf("070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
		w.ino, mode, 0, 0, nlink, 0, len(data), 0, 0, rdevMajor, rdevMinor, len(name)+1, 0)
	w.ino++
	buf := append([]byte(hdr), name...)
	buf = append(buf, 0)
	buf = pad4(buf)
	buf = append(buf, data...)
	buf = pad4(buf)
	_, w.err = w.gz.Write(buf)
}

func pad4(b []byte) []byte {
	for len(b)%4 != 0 {
		b = append(b, 0)
	}
	return b
}

func (w *cpioWriter) dir(name string, perm uint32) { w.entry(name, modeDir|perm, 0, 0, nil) }
func (w *cpioWriter) file(name string, perm uint32, data []byte) {
	w.entry(name, modeFile|perm, 0, 0, data)
}
func (w *cpioWriter) symlink(name, target string) {
	w.entry(name, modeLink|0o777, 0, 0, []byte(target))
}
func (w *cpioWriter) chardev(name string, perm uint32, major, minor int) {
	w.entry(name, modeChar|perm, major, minor, nil)
}

// close writes the trailer and returns the compressed archive.
func (w *cpioWriter) close() ([]byte, error) {
	w.ino = 0
	w.entry("TRAILER!!!", 0, 0, 0, nil)
	if w.err != nil {
		return nil, w.err
	}
	if err := w.gz.Close(); err != nil {
		return nil, err
	}
	return w.out.Bytes(), nil
}
