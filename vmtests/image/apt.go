package image

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
)

// pkg is a Debian package at one version.
type pkg struct{ Name, Version string }

func (p pkg) String() string { return p.Name + "=" + p.Version }

// dirName is p as a file name (epochs' ':' would confuse some tools).
func (p pkg) dirName() string {
	return p.Name + "_" + strings.NewReplacer(":", "%3a", "/", "_").Replace(p.Version)
}

var aptUpdateOnce sync.Once

// resolve returns the candidate version of name. With followKernel, a meta
// package (linux-image-cloud-amd64) is resolved to the linux-image-* package
// it depends on. An empty package index is filled once with apt-get update.
func resolve(ctx context.Context, name string, followKernel bool) (pkg, error) {
	fields, err := aptShow(ctx, name)
	if err != nil {
		updated := false
		aptUpdateOnce.Do(func() {
			if os.Geteuid() == 0 {
				updated = exec.CommandContext(ctx, "apt-get", "update", "-qq").Run() == nil
			}
		})
		if !updated {
			return pkg{}, err
		}
		if fields, err = aptShow(ctx, name); err != nil {
			return pkg{}, err
		}
	}
	p := pkg{Name: fields["Package"], Version: fields["Version"]}
	if p.Name == "" || p.Version == "" {
		return pkg{}, fmt.Errorf("%w: apt-cache show %s: no Package/Version", ErrUnavailable, name)
	}
	if !followKernel || kernelPkgRe.MatchString(p.Name) {
		return p, nil
	}
	for _, dep := range strings.Split(fields["Depends"], ",") {
		dep = strings.TrimSpace(strings.SplitN(strings.TrimSpace(dep), "|", 2)[0])
		n := strings.Fields(dep)
		if len(n) > 0 && kernelPkgRe.MatchString(n[0]) {
			return resolve(ctx, n[0], false)
		}
	}
	return pkg{}, fmt.Errorf("%s=%s depends on no versioned kernel package (Depends: %s)", p.Name, p.Version, fields["Depends"])
}

// kernelPkgRe matches versioned kernel image packages:
// linux-image-6.1.0-56-cloud-amd64 (and -unsigned variants).
var kernelPkgRe = regexp.MustCompile(`^linux-image-[0-9]+\.[0-9]+`)

func aptShow(ctx context.Context, name string) (map[string]string, error) {
	if _, err := exec.LookPath("apt-cache"); err != nil {
		return nil, fmt.Errorf("%w: no apt-cache (not a Debian/Ubuntu machine?): %v", ErrUnavailable, err)
	}
	cmd := exec.CommandContext(ctx, "apt-cache", "show", "--no-all-versions", name)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil || len(out) == 0 {
		return nil, fmt.Errorf("%w: apt-cache show %s: %v %s(run apt-get update?)", ErrUnavailable, name, err, stderr.String())
	}
	fields := map[string]string{}
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" {
			break // first stanza only
		}
		if k, v, ok := strings.Cut(line, ":"); ok && !strings.HasPrefix(line, " ") {
			fields[k] = strings.TrimSpace(v)
		}
	}
	return fields, nil
}

// unpacked returns the directory p is unpacked in (dpkg -x), downloading
// and unpacking it if the cache does not have it yet.
func unpacked(ctx context.Context, cfg Config, p pkg) (string, error) {
	dir := filepath.Join(cfg.CacheDir, "pkgs", p.dirName())
	if _, err := os.Stat(filepath.Join(dir, ".complete")); err == nil {
		return dir, nil
	}
	for _, tool := range []string{"apt-get", "dpkg"} {
		if _, err := exec.LookPath(tool); err != nil {
			return "", fmt.Errorf("%w: no %s: %v", ErrUnavailable, tool, err)
		}
	}
	tmp, err := os.MkdirTemp(cfg.CacheDir, ".download-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(tmp)
	cfg.Logf("downloading %s (apt-get download)", p)
	cmd := exec.CommandContext(ctx, "apt-get", "download", "-q", p.String())
	cmd.Dir = tmp
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("%w: apt-get download %s: %v\n%s", ErrUnavailable, p, err, out)
	}
	debs, _ := filepath.Glob(filepath.Join(tmp, "*.deb"))
	if len(debs) != 1 {
		return "", fmt.Errorf("apt-get download %s left %v", p, debs)
	}
	root := filepath.Join(tmp, "root")
	if out, err := exec.CommandContext(ctx, "dpkg", "-x", debs[0], root).CombinedOutput(); err != nil {
		return "", fmt.Errorf("dpkg -x %s: %v\n%s", filepath.Base(debs[0]), err, out)
	}
	if err := os.WriteFile(filepath.Join(root, ".complete"), []byte(p.String()+"\n"), 0o644); err != nil {
		return "", err
	}
	os.RemoveAll(dir) // a partial earlier attempt
	if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
		return "", err
	}
	if err := os.Rename(root, dir); err != nil {
		return "", err
	}
	return dir, nil
}
