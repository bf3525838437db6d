// SPDX-License-Identifier: MIT OR GPL-2.0
//
// udp_nat: tc ingress program that carries an offloaded UDP flow in the kernel.
//
// A packet whose exact (src addr, src port, dst addr, dst port) is a key of `udp_flows` gets its addresses and
// ports rewritten to the entry's value (IP and UDP checksums patched incrementally), its counters bumped, and is then
// sent out of the interface a FIB lookup picks with bpf_redirect_neigh, or passed up the stack (TC_ACT_OK) when the
// new destination is local (loopback). When the FIB lookup fails (forwarding disabled on the ingress interface, no
// route), the packet is left untouched for the proxy's socket and `udp_nat_events[EV_FALLBACK]` counts it.
// Everything else passes untouched. The Rust side (`l7mp-ebpf`, src/udp.rs)
// fills the map; the layouts below are mirrored there byte for byte.

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/pkt_cls.h>
#include <linux/udp.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#ifndef AF_INET
#define AF_INET 2
#endif
#ifndef AF_INET6
#define AF_INET6 10
#endif

#define IP_MF 0x2000
#define IP_OFFSET 0x1FFF

// One direction of a flow, as seen on the wire. IPv4 addresses use the first 4 bytes of `saddr`/`daddr`, the rest is
// zero. Ports are in network byte order. 40 bytes.
struct flow_key {
	__u8 saddr[16];
	__u8 daddr[16];
	__be16 sport;
	__be16 dport;
	__u8 family; // AF_INET or AF_INET6
	__u8 pad[3];
};

// What a matching packet becomes, plus counters the program maintains. 64 bytes.
struct flow_value {
	__u8 saddr[16];
	__u8 daddr[16];
	__be16 sport;
	__be16 dport;
	__u8 family; // must equal the key's family
	__u8 pad[3];
	__u64 packets;      // packets rewritten (atomic add)
	__u64 bytes;        // UDP payload bytes rewritten (atomic add)
	__u64 last_seen_ns; // bpf_ktime_get_ns() of the last packet
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct flow_key);
	__type(value, struct flow_value);
} udp_flows SEC(".maps");

// Program-wide counters (per CPU, summed by user space), indexed by enum event.
enum event {
	EV_REDIRECTED = 0, // rewritten and sent out of another interface (bpf_redirect_neigh)
	EV_LOCAL = 1,      // rewritten and passed up the stack (the new destination is local)
	EV_FALLBACK = 2,   // matched, but the FIB lookup failed (e.g. forwarding disabled): left untouched for user space
	EV_ERROR = 3,      // a helper failed half-way: dropped
	EV_MAX = 4,
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, EV_MAX);
	__type(key, __u32);
	__type(value, __u64);
} udp_nat_events SEC(".maps");

static __always_inline void event(__u32 ev)
{
	__u64 *n = bpf_map_lookup_elem(&udp_nat_events, &ev);
	if (n)
		*n += 1;
}

#define UDP_CSUM_OFF offsetof(struct udphdr, check)

static __always_inline void count(struct flow_value *v, __u64 payload)
{
	__sync_fetch_and_add(&v->packets, 1);
	__sync_fetch_and_add(&v->bytes, payload);
	v->last_seen_ns = bpf_ktime_get_ns();
}

// Rewrites the UDP ports (after the addresses were handled) and fixes the UDP checksum for them. Ports are not part
// of the pseudo header, so no BPF_F_PSEUDO_HDR; BPF_F_MARK_MANGLED_0 leaves a zero (absent, IPv4) checksum alone and
// turns a computed zero into 0xffff.
static __always_inline int rewrite_ports(struct __sk_buff *skb, __u32 l4_off, __be16 osport, __be16 odport,
					 struct flow_value *v)
{
	if (bpf_l4_csum_replace(skb, l4_off + UDP_CSUM_OFF, osport, v->sport, BPF_F_MARK_MANGLED_0 | 2))
		return -1;
	if (bpf_l4_csum_replace(skb, l4_off + UDP_CSUM_OFF, odport, v->dport, BPF_F_MARK_MANGLED_0 | 2))
		return -1;
	__be16 ports[2] = {v->sport, v->dport};
	if (bpf_skb_store_bytes(skb, l4_off, ports, sizeof(ports), 0))
		return -1;
	return 0;
}

// Where the rewritten packet goes: out of the interface the FIB picks for the new destination (its neighbour is
// resolved later by bpf_redirect_neigh), or up the local stack when the new destination is ours. The lookup runs
// before any byte is changed so that a packet we cannot forward (FIB failure, forwarding disabled on the ingress
// interface) reaches the proxy's socket untouched, and user space carries it.
enum verdict { V_REDIRECT, V_LOCAL, V_FALLBACK };

// Whether a local UDP socket would receive a packet with the new tuple. Asked when the FIB cannot answer: on IPv4 it
// reports FWD_DISABLED before it looks at the destination, also for loopback.
static __always_inline int has_local_socket(struct __sk_buff *skb, struct bpf_fib_lookup *fib)
{
	struct bpf_sock_tuple tuple;
	__builtin_memset(&tuple, 0, sizeof(tuple));
	struct bpf_sock *sk;
	if (fib->family == AF_INET) {
		tuple.ipv4.saddr = fib->ipv4_src;
		tuple.ipv4.daddr = fib->ipv4_dst;
		tuple.ipv4.sport = fib->sport;
		tuple.ipv4.dport = fib->dport;
		sk = bpf_sk_lookup_udp(skb, &tuple, sizeof(tuple.ipv4), BPF_F_CURRENT_NETNS, 0);
	} else {
		__builtin_memcpy(tuple.ipv6.saddr, fib->ipv6_src, 16);
		__builtin_memcpy(tuple.ipv6.daddr, fib->ipv6_dst, 16);
		tuple.ipv6.sport = fib->sport;
		tuple.ipv6.dport = fib->dport;
		sk = bpf_sk_lookup_udp(skb, &tuple, sizeof(tuple.ipv6), BPF_F_CURRENT_NETNS, 0);
	}
	if (!sk)
		return 0;
	bpf_sk_release(sk);
	return 1;
}

static __always_inline enum verdict route(struct __sk_buff *skb, struct bpf_fib_lookup *fib)
{
	fib->ifindex = skb->ingress_ifindex;
	long rc = bpf_fib_lookup(skb, fib, sizeof(*fib), 0);
	if (rc == BPF_FIB_LKUP_RET_SUCCESS || rc == BPF_FIB_LKUP_RET_NO_NEIGH)
		return V_REDIRECT;
	if (rc == BPF_FIB_LKUP_RET_NOT_FWDED) // local destination (loopback and our own addresses)
		return V_LOCAL;
	if (has_local_socket(skb, fib))
		return V_LOCAL;
	return V_FALLBACK;
}

static __always_inline int finish(struct __sk_buff *skb, enum verdict verdict, __u32 ifindex)
{
	if (verdict == V_REDIRECT) {
		event(EV_REDIRECTED);
		return bpf_redirect_neigh(ifindex, 0, 0, 0);
	}
	event(EV_LOCAL);
	return TC_ACT_OK;
}

static __always_inline int handle_v4(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	__u32 l3_off = sizeof(struct ethhdr);
	struct iphdr *ip = data + l3_off;
	if ((void *)(ip + 1) > data_end)
		return TC_ACT_OK;
	if (ip->protocol != IPPROTO_UDP || ip->ihl < 5)
		return TC_ACT_OK;
	if (ip->frag_off & bpf_htons(IP_MF | IP_OFFSET)) // fragments carry no (or a partial) UDP header
		return TC_ACT_OK;
	__u32 l4_off = l3_off + ip->ihl * 4;
	if (l4_off > 60 + sizeof(struct ethhdr))
		return TC_ACT_OK;
	struct udphdr *udp = data + l4_off;
	if ((void *)(udp + 1) > data_end)
		return TC_ACT_OK;

	struct flow_key key;
	__builtin_memset(&key, 0, sizeof(key));
	__builtin_memcpy(key.saddr, &ip->saddr, 4);
	__builtin_memcpy(key.daddr, &ip->daddr, 4);
	key.sport = udp->source;
	key.dport = udp->dest;
	key.family = AF_INET;
	struct flow_value *v = bpf_map_lookup_elem(&udp_flows, &key);
	if (!v || v->family != AF_INET)
		return TC_ACT_OK;

	__u16 udp_len = bpf_ntohs(udp->len);
	__be32 old_addrs[2] = {ip->saddr, ip->daddr};
	__be32 new_addrs[2];
	__builtin_memcpy(&new_addrs[0], v->saddr, 4);
	__builtin_memcpy(&new_addrs[1], v->daddr, 4);
	__be16 osport = udp->source, odport = udp->dest;

	struct bpf_fib_lookup fib;
	__builtin_memset(&fib, 0, sizeof(fib));
	fib.family = AF_INET;
	fib.l4_protocol = IPPROTO_UDP;
	fib.sport = v->sport;
	fib.dport = v->dport;
	fib.tot_len = bpf_ntohs(ip->tot_len);
	fib.ipv4_src = new_addrs[0];
	fib.ipv4_dst = new_addrs[1];
	enum verdict verdict = route(skb, &fib);
	if (verdict == V_FALLBACK) {
		event(EV_FALLBACK);
		return TC_ACT_OK;
	}
	count(v, udp_len >= sizeof(struct udphdr) ? udp_len - sizeof(struct udphdr) : 0);

	// Addresses: one diff for both; the IP header checksum covers them, and so does the UDP pseudo header.
	__s64 diff = bpf_csum_diff(old_addrs, sizeof(old_addrs), new_addrs, sizeof(new_addrs), 0);
	if (diff < 0)
		goto fail;
	if (bpf_l3_csum_replace(skb, l3_off + offsetof(struct iphdr, check), 0, diff, 0))
		goto fail;
	if (bpf_l4_csum_replace(skb, l4_off + UDP_CSUM_OFF, 0, diff, BPF_F_PSEUDO_HDR | BPF_F_MARK_MANGLED_0))
		goto fail;
	if (bpf_skb_store_bytes(skb, l3_off + offsetof(struct iphdr, saddr), new_addrs, sizeof(new_addrs), 0))
		goto fail;
	if (rewrite_ports(skb, l4_off, osport, odport, v))
		goto fail;
	return finish(skb, verdict, fib.ifindex);
fail:
	event(EV_ERROR);
	return TC_ACT_SHOT;
}

static __always_inline int handle_v6(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	__u32 l3_off = sizeof(struct ethhdr);
	struct ipv6hdr *ip6 = data + l3_off;
	if ((void *)(ip6 + 1) > data_end)
		return TC_ACT_OK;
	if (ip6->nexthdr != IPPROTO_UDP) // extension headers (fragments included) are left to the stack
		return TC_ACT_OK;
	__u32 l4_off = l3_off + sizeof(struct ipv6hdr);
	struct udphdr *udp = data + l4_off;
	if ((void *)(udp + 1) > data_end)
		return TC_ACT_OK;

	struct flow_key key;
	__builtin_memset(&key, 0, sizeof(key));
	__builtin_memcpy(key.saddr, &ip6->saddr, 16);
	__builtin_memcpy(key.daddr, &ip6->daddr, 16);
	key.sport = udp->source;
	key.dport = udp->dest;
	key.family = AF_INET6;
	struct flow_value *v = bpf_map_lookup_elem(&udp_flows, &key);
	if (!v || v->family != AF_INET6)
		return TC_ACT_OK;

	__u16 udp_len = bpf_ntohs(udp->len);
	__u32 old_addrs[8], new_addrs[8];
	__builtin_memcpy(old_addrs, &ip6->saddr, 32);
	__builtin_memcpy(&new_addrs[0], v->saddr, 16);
	__builtin_memcpy(&new_addrs[4], v->daddr, 16);
	__be16 osport = udp->source, odport = udp->dest;

	struct bpf_fib_lookup fib;
	__builtin_memset(&fib, 0, sizeof(fib));
	fib.family = AF_INET6;
	fib.l4_protocol = IPPROTO_UDP;
	fib.sport = v->sport;
	fib.dport = v->dport;
	fib.tot_len = bpf_ntohs(ip6->payload_len) + sizeof(struct ipv6hdr);
	__builtin_memcpy(fib.ipv6_src, &new_addrs[0], 16);
	__builtin_memcpy(fib.ipv6_dst, &new_addrs[4], 16);
	enum verdict verdict = route(skb, &fib);
	if (verdict == V_FALLBACK) {
		event(EV_FALLBACK);
		return TC_ACT_OK;
	}
	count(v, udp_len >= sizeof(struct udphdr) ? udp_len - sizeof(struct udphdr) : 0);

	// No IP header checksum in IPv6; the UDP checksum (mandatory) covers the addresses through the pseudo header.
	__s64 diff = bpf_csum_diff(old_addrs, sizeof(old_addrs), new_addrs, sizeof(new_addrs), 0);
	if (diff < 0)
		goto fail;
	if (bpf_l4_csum_replace(skb, l4_off + UDP_CSUM_OFF, 0, diff, BPF_F_PSEUDO_HDR | BPF_F_MARK_MANGLED_0))
		goto fail;
	if (bpf_skb_store_bytes(skb, l3_off + offsetof(struct ipv6hdr, saddr), new_addrs, sizeof(new_addrs), 0))
		goto fail;
	if (rewrite_ports(skb, l4_off, osport, odport, v))
		goto fail;
	return finish(skb, verdict, fib.ifindex);
fail:
	event(EV_ERROR);
	return TC_ACT_SHOT;
}

SEC("classifier")
int udp_nat(struct __sk_buff *skb)
{
	if (skb->protocol == bpf_htons(ETH_P_IP))
		return handle_v4(skb);
	if (skb->protocol == bpf_htons(ETH_P_IPV6))
		return handle_v6(skb);
	return TC_ACT_OK;
}

char _license[] SEC("license") = "Dual MIT/GPL";
