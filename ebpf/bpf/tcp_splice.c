// SPDX-License-Identifier: MIT OR GPL-2.0
//
// tcp_splice: sockmap program that joins two established TCP sockets in the kernel.
//
// Both sockets of a splice sit in `splice_socks` (SOCKHASH keyed by socket cookie); `splice_peers` maps each
// socket's cookie to its peer's cookie and keeps byte counters. The stream verdict program runs for the data that
// arrives on a socket and redirects it to the egress of the peer socket, so the proxy never reads it. A FIN is not
// data: EOF still reaches the user-space owner of the socket, which decides when the session ends.
// The Rust side (`l7mp-ebpf`, src/tcp.rs) mirrors these layouts.

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

struct peer {
	__u64 peer_cookie; // socket cookie of the socket this one's data goes to
	__u64 bytes;       // bytes redirected from this socket to its peer (atomic add)
	__u64 segments;    // sk_buffs redirected (atomic add)
	__u64 dropped;     // sk_buffs dropped because the peer was gone
};

struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, __u32);
} splice_socks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, struct peer);
} splice_peers SEC(".maps");

SEC("sk_skb/stream_verdict")
int tcp_splice(struct __sk_buff *skb)
{
	// A segment without data (a FIN alone) has nothing to carry: TCP has already taken the FIN in (the owner reads
	// EOF). It must not go into a psock work queue: one that meets a zero-length sk_buff takes it for a hard error,
	// sets EPIPE on its socket and stops sending what is queued behind it. That happens if it is redirected (the
	// peer's queue) and also if it is passed while the socket's own queue holds data on its way out (SK_PASS queues
	// behind it then), so it is dropped.
	if (skb->len == 0)
		return SK_DROP;
	__u64 cookie = bpf_get_socket_cookie(skb);
	struct peer *p = bpf_map_lookup_elem(&splice_peers, &cookie);
	if (!p)
		return SK_PASS; // not spliced (yet): deliver to the socket's owner
	__u64 peer = p->peer_cookie;
	long verdict = bpf_sk_redirect_hash(skb, &splice_socks, &peer, 0);
	if (verdict == SK_PASS) {
		__sync_fetch_and_add(&p->bytes, skb->len);
		__sync_fetch_and_add(&p->segments, 1);
	} else {
		__sync_fetch_and_add(&p->dropped, 1);
	}
	return verdict;
}

char _license[] SEC("license") = "Dual MIT/GPL";
