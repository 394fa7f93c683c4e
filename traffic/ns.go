package traffic

import "github.com/xdp-hostd/xdp-hostd/nsrun"

// inNS runs f on a locked OS thread inside the network namespace at path
// ("" runs f in the caller's namespace): AF_XDP bind, XDP attach,
// BPF_PROG_RUN's ingress_ifindex and SIOCGIFINDEX resolve names and
// ifindexes in the calling thread's namespace.
func inNS(path string, f func() error) error { return nsrun.Do(path, f) }
