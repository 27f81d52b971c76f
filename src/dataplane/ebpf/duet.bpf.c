// SPDX-License-Identifier: MIT
//
// duet's in-kernel fast path: established flows, and new ones scheduled
// by tables user space computes.
//
// User space (the Rust engine) owns every scheduling rule. For each service
// it gives this program a table (`picks`) built by that rule from the
// eligible backends: one cycle of rr's or wrr's own picks, dealt out here
// in turn, and the consistent-hash (Maglev) slots of sh and mh. Those
// tables pick exactly as user space would (`exact`), so every new flow of
// such a service (a TCP SYN, a UDP flow's first datagram) is scheduled
// here. Other new flows (lc and wlc hang on live load, persistence on
// templates) go to user space up to a budget a second (a GCRA shared by the
// CPUs, its rate set by user space), and beyond it are scheduled here by
// the service's hash table: a flood from random sources fills the packet
// socket's ring otherwise, and the ring drops legitimate packets as blindly
// as the flood's.
//
// A new TCP flow, whoever scheduled it, waits in `embryonic`, a bounded LRU
// (a SYN flood churns only that map), and its handshake's ACK promotes it
// into `confirmed`; a UDP flow waits in `udp_new` until its second datagram,
// as user space's table keeps unconfirmed flows apart. A flow scheduled
// here is marked `origin` kernel, and user space adopts it into its table
// (counters, sync to the peer) when it is confirmed (`adoptions`), or else
// when its walk first sees it.
//
// - duet_tc (tc clsact ingress, direct action) is the only program. It
//   forwards a frame to the virtual MAC whose flow is in a map, or that it
//   schedules itself: remote backend = MAC rewrite + redirect to the same
//   interface's egress; local backend = destination MAC set to our own,
//   PACKET_HOST, TC_ACT_OK (the stack delivers it to the VIP on lo). Any
//   other frame to the virtual MAC passes untouched (TC_ACT_OK) to user
//   space's packet socket. That socket is bound to ETH_P_IP, not
//   ETH_P_ALL: the kernel serves such a socket after tc ingress (taps,
//   ETH_P_ALL, come before it), so a frame forwarded here never reaches it
//   and costs user space nothing, not even a filter run. The stack itself
//   drops the frames passed to user space (PACKET_OTHERHOST).
//
// A SYN whose flow is in `embryonic` (with the current `epoch`: no backend
// change since) is a retransmission and goes where the first went. A
// confirmed flow's FIN or RST is forwarded here and noted in its entry
// (`tcp_flags`): the state machine (FIN_WAIT, CLOSE timeouts) has one
// implementation, in Rust, which the walk of user space feeds with those
// flags. A FIN or RST of any other flow, and ICMP errors, go to user
// space. Non-first fragments (nothing to forward them by) are dropped and
// counted here, and pings of the VIP handed to the local stack at user
// space's echo rate, so neither flood reaches user space. So are frames to
// the virtual MAC with a VLAN tag: duet serves the untagged LAN, and the
// kernel takes the tag off before user space's socket could see it.
//
// Fail-safe: the program forwards only while `lease_until` (CLOCK_MONOTONIC
// ns, renewed by duet) lies in the future. A filter left behind by a killed
// duet (netlink-attached on kernels before 6.6) stops by itself.
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/if_packet.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define MAX_CONFIRMED 262144
#define MAX_UDP 65536
#define MAX_EMBRYONIC 65536
#define MAX_UDP_NEW 65536
#define MAX_SERVICES 256
#define MAX_VIPS 64
// Consistent-hash slots per service: the size of the Rust engine's Maglev
// table (src/forward/maglev.rs), so sh and mh pick as user space does.
#define PICK_SLOTS 65537
#define PICK_BACKENDS 255
// Room for one cycle of rr or wrr's picks: forward::MAX_DEAL.
#define DEAL_SLOTS 4096
// The new-flow budget's burst: this much time's worth of flows at once.
#define SYN_BURST_NS 100000000ULL
// Pings of the VIP answered at once beyond their rate: a second's worth,
// like user space's token bucket.
#define ECHO_BURST_NS 1000000000ULL

// Layouts shared with src/dataplane/ebpf/mod.rs (repr(C) there).
struct flow_key {
	__u32 saddr; // network order
	__u32 daddr; // network order
	__u16 sport; // network order
	__u16 dport; // network order
	__u8 proto;
	__u8 pad[3];
};

struct flow_val {
	__u8 mac[6];   // backend MAC (remote); unused for local
	__u8 local;    // 1: deliver to this node's own stack
	__u8 origin;   // 1: scheduled here, over the SYN budget
	__u32 backend; // backend address, network order (for user space)
	__u32 epoch;   // control's epoch when the flow was scheduled
	__u8 tcp_flags; // FIN and RST the client sent since installation
	__u8 pad[3];
	__u64 packets;
	__u64 bytes;
	__u64 last_seen; // bpf_ktime_get_ns of the last forwarded frame
};

struct control {
	__u32 active; // 1 while this node directs (or steps down)
	__u32 ifindex;
	__u32 pad0;
	__u8 own_mac[6];
	__u8 vmac[6];
	__u64 lease_until; // bpf_ktime_get_ns deadline
	// Nanoseconds of budget one SYN for user space costs on one CPU; 0:
	// every SYN goes to user space.
	__u64 new_cost_ns;
	__u32 epoch; // bumped by user space on every backend change
	__u32 pad;
	__u64 echo_cost_ns; // 1e9 / pings of the VIP answered a second
};

struct svc_key {
	__u32 vip; // network order
	__u16 port; // network order
	__u8 proto;
	__u8 pad;
};

struct target {
	__u8 mac[6];
	__u8 local;
	__u8 pad;
	__u32 backend; // network order
};

// One service's scheduling table.
struct pick {
	__u32 src_mask; // network order: clients sharing it share a backend
	__u8 with_port; // 1: the client's port is hashed too
	__u8 n;         // backends in `t`
	__u8 exact;     // 1: picks as user space would; every new flow uses it
	__u8 pad;
	__u16 deal_len; // picks in `deal`; 0: hash into `slot`
	__u16 pad2;
	__u32 cursor;   // the next pick in `deal`, shared by every CPU
	struct target t[PICK_BACKENDS];
	__u8 deal[DEAL_SLOTS]; // rr and wrr: one cycle of picks, dealt in turn
	__u8 slot[PICK_SLOTS]; // index into `t`
};

enum stat {
	STAT_REMOTE_PACKETS,
	STAT_REMOTE_BYTES,
	STAT_LOCAL_PACKETS,
	STAT_LOCAL_BYTES,
	STAT_REDIRECT_ERRORS,
	STAT_PROMOTED,
	STAT_NEW_SCHEDULED, // new flows over the budget scheduled here
	STAT_NEW_UNSCHEDULED, // new flows over the budget without a table: to user space
	STAT_FRAGMENTS, // non-first fragments to the VIP, dropped
	STAT_ECHO_LOCAL, // pings of the VIP handed to the local stack
	STAT_ECHO_LIMITED, // pings of the VIP over the rate, dropped
	STAT_ADOPT_LOST, // confirmations lost to a full `adoptions` ring
	STAT_VLAN, // frames to the virtual MAC with a VLAN id, dropped
	STAT_MAX,
};

// A flow this program scheduled (`adoptions`).
struct adoption {
	struct flow_key key;
	__u32 backend; // network order
	__u8 confirmed; // 0: just scheduled; 1: its second frame came
	__u8 pad[3];
};

// Confirmed TCP flows: a plain hash, never evicted for a newcomer (a full
// map refuses the insert and user space keeps the flow).
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_CONFIRMED);
	__type(key, struct flow_key);
	__type(value, struct flow_val);
} confirmed SEC(".maps");

// Half-open TCP flows, installed by user space on the SYN; bounded like
// the userspace table's embryonic part (same size, oldest evicted first).
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, MAX_EMBRYONIC);
	__type(key, struct flow_key);
	__type(value, struct flow_val);
} embryonic SEC(".maps");

// UDP flows live apart, so a UDP flood cannot take the space confirmed TCP
// flows need. LRU: an evicted flow is still in user space's table, whose
// next packet finds it there and reinstalls it.
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, MAX_UDP);
	__type(key, struct flow_key);
	__type(value, struct flow_val);
} udp SEC(".maps");

// UDP flows the program scheduled itself, until their second datagram moves
// them to `udp`: a flood of single datagrams churns only this LRU.
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, MAX_UDP_NEW);
	__type(key, struct flow_key);
	__type(value, struct flow_val);
} udp_new SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct control);
} ctl SEC(".maps");

// The addresses the director answers for (network order); all of them
// move with the director role.
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_VIPS);
	__type(key, __u32);
	__type(value, __u8);
} vips SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_SERVICES);
	__type(key, struct svc_key);
	__type(value, struct pick);
} picks SEC(".maps");

// The GCRA's theoretical arrival time of the next SYN, shared by every CPU
// so the budget is user space's total; a lost race between two CPUs only
// lets one more SYN through.
// Entry 0: new flows, 1: pings of the VIP.
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, __u64);
} syn_tat SEC(".maps");

// Flows this program scheduled, for user space to adopt within a round of
// its loop (counted, synced to the peer: a takeover keeps them) rather than
// when its walk comes by: each when its handshake's ACK (a UDP flow's
// second datagram) confirms it, and, within user space's budget of new
// flows, when it is scheduled, so user space's table sees unconfirmed
// flows as if it had decided them (its flood guard, pressure and events).
// Beyond the budget a flood's flows send nothing. A full ring loses the
// note, counted, and the walk adopts the flow later.
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 18);
} adoptions SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, STAT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} stats SEC(".maps");

#define TCP_FIN 0x01
#define TCP_SYN 0x02
#define TCP_RST 0x04
#define TCP_ACK 0x10

static __always_inline int mac_eq(const __u8 *a, const __u8 *b)
{
	// clang 14 emits a call to memcmp for __builtin_memcmp on BPF.
#pragma unroll
	for (int i = 0; i < 6; i++)
		if (a[i] != b[i])
			return 0;
	return 1;
}

// Reads from the MAC header on: tc ingress runs with the MAC header pushed
// back onto the data.
static __always_inline long load(struct __sk_buff *skb, __u32 off, void *to, __u32 len)
{
	return bpf_skb_load_bytes(skb, off, to, len);
}

static __always_inline void count(__u32 which, __u64 n)
{
	__u64 *v = bpf_map_lookup_elem(&stats, &which);
	if (v)
		*v += n;
}

// murmur3's finaliser; src/forward/sched.rs has the same (`flow_hash`).
static __always_inline __u32 fmix32(__u32 h)
{
	h ^= h >> 16;
	h *= 0x85ebca6b;
	h ^= h >> 13;
	h *= 0xc2b2ae35;
	h ^= h >> 16;
	return h;
}

// Tells user space of a flow this program scheduled. It polls the ring on
// its own rounds: no wakeup per flow.
static __always_inline void announce(struct flow_key *k, struct flow_val *v, __u8 confirmed)
{
	if (!v->origin)
		return;
	struct adoption *a = bpf_ringbuf_reserve(&adoptions, sizeof(*a), 0);
	if (!a) {
		count(STAT_ADOPT_LOST, 1);
		return;
	}
	a->key = *k;
	a->backend = v->backend;
	a->confirmed = confirmed;
	a->pad[0] = a->pad[1] = a->pad[2] = 0;
	bpf_ringbuf_submit(a, BPF_RB_NO_WAKEUP);
}

// Whether one more event of GCRA `which` (cost per event, burst) fits its
// rate, taking its share if so. cost 0: no limit.
static __always_inline int within_rate(__u32 which, __u64 cost, __u64 burst)
{
	if (!cost)
		return 1;
	__u64 *tat = bpf_map_lookup_elem(&syn_tat, &which);
	if (!tat)
		return 1;
	__u64 now = bpf_ktime_get_ns();
	__u64 t = *tat > now ? *tat : now;
	if (t > now + burst)
		return 0;
	*tat = t + cost;
	return 1;
}

// The consistent-hash slot of a new flow: maglev::flow_hash in Rust.
static __always_inline __u32 slot_of(struct flow_key *k, struct pick *p)
{
	__u32 h = bpf_ntohl(k->saddr & p->src_mask);
	if (p->with_port)
		h ^= fmix32(bpf_ntohs(k->sport) ^ 0x64756574);
	return fmix32(h) % PICK_SLOTS;
}

// The service's table, if user space gave it one.
static __always_inline struct pick *service_table(struct flow_key *k)
{
	struct svc_key sk = {.vip = k->daddr, .port = k->dport, .proto = k->proto};
	return bpf_map_lookup_elem(&picks, &sk);
}

// Whether user space decides this new flow: a service whose table picks
// exactly as user space would is scheduled here at any rate; any other
// only beyond user space's budget (taking its share of it).
static __always_inline int for_user_space(struct control *c, struct pick *p)
{
	if (p && p->exact)
		return 0;
	return within_rate(0, c->new_cost_ns, SYN_BURST_NS);
}

// Schedules a new flow by its service's table into `embryonic` (TCP) or
// `udp_new`; NULL when the service has none (user space gets the frame).
static __always_inline struct flow_val *kernel_pick(struct control *c, struct flow_key *k,
						    struct pick *p)
{
	if (!p) {
		count(STAT_NEW_UNSCHEDULED, 1);
		return NULL;
	}
	__u32 b;
	__u32 len = p->deal_len;
	if (len) {
		// Read, then bumped: clang's default BPF target has no fetching
		// add. Two CPUs racing may deal the same pick twice, which only
		// shifts the turn.
		__u32 i = p->cursor % len;
		__sync_fetch_and_add(&p->cursor, 1);
		asm volatile("" : "+r"(i));
		if (i >= DEAL_SLOTS)
			return NULL;
		b = p->deal[i];
	} else {
		__u32 slot = slot_of(k, p);
		// The verifier cannot bound a modulo; clang would fold the
		// check away without this barrier.
		asm volatile("" : "+r"(slot));
		if (slot >= PICK_SLOTS)
			return NULL;
		b = p->slot[slot];
	}
	if (b >= p->n || b >= PICK_BACKENDS) {
		count(STAT_NEW_UNSCHEDULED, 1);
		return NULL;
	}
	struct flow_val v = {
		.local = p->t[b].local,
		.origin = 1,
		.backend = p->t[b].backend,
		.epoch = c->epoch,
	};
#pragma unroll
	for (int i = 0; i < 6; i++)
		v.mac[i] = p->t[b].mac[i];
	void *pending = &udp_new;
	if (k->proto == IPPROTO_TCP) {
		// Port reuse: the old connection's entry must not catch this
		// one's handshake ACK.
		bpf_map_delete_elem(&confirmed, k);
		pending = &embryonic;
	}
	if (bpf_map_update_elem(pending, k, &v, BPF_ANY) < 0)
		return NULL;
	count(STAT_NEW_SCHEDULED, 1);
	// Over the budget (an inexact table is used only then) nothing more.
	if (p->exact && within_rate(0, c->new_cost_ns, SYN_BURST_NS))
		announce(k, &v, 0);
	return bpf_map_lookup_elem(pending, k);
}

// A UDP frame: its flow's entry, or one scheduled for it here.
static __always_inline struct flow_val *udp_forwards(struct control *c, struct flow_key *k)
{
	struct flow_val *v = bpf_map_lookup_elem(&udp, k);
	if (v)
		return v;
	v = bpf_map_lookup_elem(&udp_new, k);
	if (v && v->epoch != c->epoch) {
		// Scheduled before a backend change: decided afresh, and the
		// stale entry goes whoever decides.
		bpf_map_delete_elem(&udp_new, k);
		v = NULL;
	}
	if (v) {
		// The datagram after the one that scheduled the flow confirms
		// it. One user space installed has not counted its first: the
		// next confirms. A full `udp` refuses it: it stays here,
		// evictable.
		if (v->packets == 0)
			return v;
		struct flow_val moved = *v;
		if (bpf_map_update_elem(&udp, k, &moved, BPF_NOEXIST) < 0)
			return v;
		bpf_map_delete_elem(&udp_new, k);
		announce(k, &moved, 1);
		return bpf_map_lookup_elem(&udp, k);
	}
	struct pick *p = service_table(k);
	if (for_user_space(c, p))
		return NULL;
	return kernel_pick(c, k, p);
}

static __always_inline int is_vip(__u32 daddr)
{
	return bpf_map_lookup_elem(&vips, &daddr) != NULL;
}

// The flow entry duet_tc forwards this frame by, or NULL when user space
// (or nobody) handles it. `out` gets the control map's entry either way.
static __always_inline struct flow_val *kernel_forwards(struct __sk_buff *skb,
							 struct control **out)
{
	__u32 zero = 0;
	struct control *c = bpf_map_lookup_elem(&ctl, &zero);
	*out = c;
	if (!c || !c->active || bpf_ktime_get_ns() >= c->lease_until)
		return NULL;
	if (skb->vlan_present)
		return NULL;
	struct ethhdr eth;
	if (load(skb, 0, &eth, sizeof(eth)) < 0)
		return NULL;
	if (!mac_eq(eth.h_dest, c->vmac) || eth.h_proto != bpf_htons(ETH_P_IP))
		return NULL;
	struct iphdr ip;
	if (load(skb, ETH_HLEN, &ip, sizeof(ip)) < 0)
		return NULL;
	if (ip.version != 4 || ip.ihl < 5 || !is_vip(ip.daddr))
		return NULL;
	if (ip.frag_off & bpf_htons(0x1fff))
		return NULL;
	__u32 l4 = ETH_HLEN + ip.ihl * 4;
	struct flow_key k = {
		.saddr = ip.saddr,
		.daddr = ip.daddr,
		.proto = ip.protocol,
	};
	if (ip.protocol != IPPROTO_TCP && ip.protocol != IPPROTO_UDP)
		return NULL;
	__u16 ports[2];
	if (load(skb, l4, ports, sizeof(ports)) < 0)
		return NULL;
	k.sport = ports[0];
	k.dport = ports[1];
	if (ip.protocol == IPPROTO_TCP) {
		__u8 flags;
		if (load(skb, l4 + 13, &flags, 1) < 0)
			return NULL;
		if (flags & (TCP_FIN | TCP_RST)) {
			if (flags & TCP_SYN)
				return NULL;
			// A confirmed flow's close stays in kernel too; user space's
			// walk reads the flags and runs its state machine on them
			// (FIN_WAIT, CLOSE and their timeouts). A close during the
			// handshake is rarer and goes to user space as it is.
			struct flow_val *v = bpf_map_lookup_elem(&confirmed, &k);
			if (!v)
				return NULL;
			v->tcp_flags |= flags & (TCP_FIN | TCP_RST);
			return v;
		}
		if (flags & TCP_SYN) {
			if (flags & TCP_ACK)
				return NULL;
			struct flow_val *e = bpf_map_lookup_elem(&embryonic, &k);
			if (e && e->epoch == c->epoch)
				return e;
			struct pick *p = service_table(&k);
			if (!for_user_space(c, p))
				return kernel_pick(c, &k, p);
			// User space decides this SYN and may send it elsewhere
			// than an old entry on its ports (port reuse, or a backend
			// change since a retransmission's first): the old entry
			// must not catch its handshake's ACK. Deleted here, before
			// user space reads the frame.
			bpf_map_delete_elem(&confirmed, &k);
			bpf_map_delete_elem(&embryonic, &k);
			return NULL;
		}
	}
	if (ip.protocol != IPPROTO_TCP)
		return udp_forwards(c, &k);
	struct flow_val *v = bpf_map_lookup_elem(&confirmed, &k);
	if (v)
		return v;
	v = bpf_map_lookup_elem(&embryonic, &k);
	if (!v)
		return v;
	// The handshake's ACK (or data after it): the flow is confirmed. It
	// moves with its counters, so user space's walk of `confirmed` accounts
	// this frame and moves the Rust engine's entry to ESTABLISHED by the
	// same state machine. A full `confirmed` refuses it: the flow stays
	// here, evictable, as in the userspace table.
	struct flow_val moved = *v;
	if (bpf_map_update_elem(&confirmed, &k, &moved, BPF_NOEXIST) < 0)
		return v;
	bpf_map_delete_elem(&embryonic, &k);
	count(STAT_PROMOTED, 1);
	announce(&k, &moved, 1);
	return bpf_map_lookup_elem(&confirmed, &k);
}

enum vip_frame {
	VIP_OTHER,
	VIP_FRAGMENT, // a non-first fragment: nothing to forward it by
	VIP_ECHO,     // a ping of the VIP
};

// What a frame to the virtual MAC that no flow forwards is, while this
// node directs. Both need no user space: a flood of either stays here.
static __always_inline enum vip_frame vip_frame(struct __sk_buff *skb, struct control *c)
{
	if (!c->active || bpf_ktime_get_ns() >= c->lease_until || skb->vlan_present)
		return VIP_OTHER;
	struct ethhdr eth;
	if (load(skb, 0, &eth, sizeof(eth)) < 0)
		return VIP_OTHER;
	if (!mac_eq(eth.h_dest, c->vmac) || eth.h_proto != bpf_htons(ETH_P_IP))
		return VIP_OTHER;
	struct iphdr ip;
	if (load(skb, ETH_HLEN, &ip, sizeof(ip)) < 0)
		return VIP_OTHER;
	if (ip.version != 4 || ip.ihl < 5 || !is_vip(ip.daddr))
		return VIP_OTHER;
	if (ip.frag_off & bpf_htons(0x1fff))
		return VIP_FRAGMENT;
	if (ip.protocol != IPPROTO_ICMP || (ip.frag_off & bpf_htons(0x2000)))
		return VIP_OTHER;
	__u8 type;
	if (load(skb, ETH_HLEN + ip.ihl * 4, &type, 1) < 0)
		return VIP_OTHER;
	return type == 8 ? VIP_ECHO : VIP_OTHER;
}

// Hands the frame to this node's own stack (the VIP is on lo there).
static __always_inline int to_local_stack(struct __sk_buff *skb, struct control *c)
{
	if (bpf_skb_store_bytes(skb, 0, c->own_mac, 6, 0) < 0)
		return TC_ACT_SHOT;
	if (bpf_skb_change_type(skb, PACKET_HOST) < 0)
		return TC_ACT_SHOT;
	return TC_ACT_OK;
}

SEC("classifier")
int duet_tc(struct __sk_buff *skb)
{
	struct control *c = NULL;
	struct flow_val *v = kernel_forwards(skb, &c);
	if (!v) {
		if (!c)
			return TC_ACT_OK;
		__u8 dst[6];
		if (load(skb, 0, dst, 6) < 0 || !mac_eq(dst, c->vmac))
			return TC_ACT_OK;
		// A VLAN id, not a priority tag alone (id 0), as user space
		// tells them apart; directing or not, like user space counted.
		if (skb->vlan_present && (skb->vlan_tci & 0x0fff)) {
			count(STAT_VLAN, 1);
			return TC_ACT_SHOT;
		}
		switch (vip_frame(skb, c)) {
		case VIP_FRAGMENT:
			count(STAT_FRAGMENTS, 1);
			return TC_ACT_SHOT;
		case VIP_ECHO:
			if (within_rate(1, c->echo_cost_ns, ECHO_BURST_NS)) {
				int r = to_local_stack(skb, c);
				if (r == TC_ACT_OK)
					count(STAT_ECHO_LOCAL, 1);
				return r;
			}
			count(STAT_ECHO_LIMITED, 1);
			return TC_ACT_SHOT;
		default:
			// User space's: its packet socket gets it after this.
			return TC_ACT_OK;
		}
	}
	__u64 len = skb->len;
	__sync_fetch_and_add(&v->packets, 1);
	__sync_fetch_and_add(&v->bytes, len);
	v->last_seen = bpf_ktime_get_ns();
	if (v->local) {
		int r = to_local_stack(skb, c);
		if (r == TC_ACT_OK) {
			count(STAT_LOCAL_PACKETS, 1);
			count(STAT_LOCAL_BYTES, len);
		}
		return r;
	}
	__u8 macs[12];
#pragma unroll
	for (int i = 0; i < 6; i++) {
		macs[i] = v->mac[i];
		macs[6 + i] = c->own_mac[i];
	}
	if (bpf_skb_store_bytes(skb, 0, macs, sizeof(macs), 0) < 0)
		return TC_ACT_SHOT;
	int r = bpf_redirect(c->ifindex, 0);
	if (r != TC_ACT_REDIRECT) {
		count(STAT_REDIRECT_ERRORS, 1);
		return TC_ACT_SHOT;
	}
	count(STAT_REMOTE_PACKETS, 1);
	count(STAT_REMOTE_BYTES, len);
	return r;
}

char LICENSE[] SEC("license") = "Dual MIT/GPL";
