package etcdtest

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// Cluster is several embedded members forming one etcd cluster, each behind
// its own bridge.
type Cluster struct {
	t       testing.TB
	Members []*Server
	client  *clientv3.Client
}

// StartCluster starts n members and stops them when the test ends.
func StartCluster(t testing.TB, n int) *Cluster {
	t.Helper()
	c := &Cluster{t: t}
	var peers []string
	for i := range n {
		cfg, err := Config(t.TempDir())
		if err != nil {
			t.Fatalf("etcdtest: %v", err)
		}
		cfg.Name = fmt.Sprintf("m%d", i)
		cfg.InitialClusterToken = "etcdtest-cluster"
		peers = append(peers, cfg.Name+"="+cfg.ListenPeerUrls[0].String())
		b, err := newBridge(cfg.ListenClientUrls[0].Host)
		if err != nil {
			t.Fatalf("etcdtest: bridge: %v", err)
		}
		c.Members = append(c.Members, &Server{t: t, cfg: cfg, Bridge: b})
	}
	for _, m := range c.Members {
		m.cfg.InitialCluster = strings.Join(peers, ",")
	}
	launched := make(chan struct{})
	for _, m := range c.Members {
		go func() {
			m.ready(m.launch())
			launched <- struct{}{}
		}()
	}
	for range c.Members {
		<-launched
	}
	t.Cleanup(func() {
		for _, m := range c.Members {
			m.Stop()
			m.Bridge.Close()
		}
	})
	return c
}

// Endpoints lists every member's bridged endpoint, as ETCD_ENDPOINTS does.
func (c *Cluster) Endpoints() string {
	var eps []string
	for _, m := range c.Members {
		eps = append(eps, m.Endpoint())
	}
	return strings.Join(eps, ",")
}

// Client is a client of every member, direct, for the test's own writes.
func (c *Cluster) Client() *clientv3.Client {
	c.t.Helper()
	if c.client == nil {
		var eps []string
		for _, m := range c.Members {
			eps = append(eps, m.cfg.ListenClientUrls[0].String())
		}
		c.client = c.Members[0].newClientOf(eps)
	}
	return c.client
}

// Leader is the index of the member that leads, or -1.
func (c *Cluster) Leader() int {
	for i, m := range c.Members {
		m.mu.Lock()
		e := m.etcd
		m.mu.Unlock()
		if e != nil && e.Server.Leader() == e.Server.MemberID() {
			return i
		}
	}
	return -1
}

// MoveLeader hands leadership to member to.
func (c *Cluster) MoveLeader(to int) {
	c.t.Helper()
	var from int
	Eventually(c.t, 10*time.Second, func() error {
		if from = c.Leader(); from < 0 {
			return fmt.Errorf("no leader")
		}
		return nil
	})
	if from == to {
		return
	}
	lead, target := c.Members[from], c.Members[to]
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := lead.etcd.Server.MoveLeader(ctx, uint64(lead.etcd.Server.MemberID()), uint64(target.etcd.Server.MemberID())); err != nil {
		c.t.Fatalf("etcdtest: moving the leader: %v", err)
	}
}
