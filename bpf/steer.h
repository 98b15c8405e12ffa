/* Remapped listeners: a vhost's port space of its own.
 *
 * A TCP socket that a vhost binds to a port is bound to port 0 instead (an
 * ephemeral port on the same address), and the port it asked for is kept in
 * its socket facts (getsockname shows it).  When it listens, the sockops
 * program files it in `listeners` under every address:port it answers on, and
 * the sk_lookup program hands it each connection to those.  So no vhost holds
 * a real port: the machine's own 0.0.0.0:22 and a vhost's :22 coexist,
 * whichever came first, and a dual-stack [::] listener answers on both vIPs
 * and on the vhost's 127.0.0.1.  sk_lookup and listening sockets in a sockhash
 * came with kernel 5.9/5.10; the loader leaves this out where they are
 * missing, and binds then keep their port. */
#ifndef VADDR_STEER_H
#define VADDR_STEER_H

#include "lib.h"

struct steer_key {
	struct addr_key addr;  /* IPv4 as v4-mapped */
	__u16 port;            /* host order */
	__u16 proto;           /* and a slot above bit 8 (groups.h) */
};

#define SLOT_SHIFT 8

/* bcc 0.26's BPF_SOCKHASH has no lookup, and the sk_lookup program needs
 * one: the table struct that bcc's rewriter reads, with both. */
struct listeners_table_t {
	struct steer_key key;
	u64 leaf;
	u64 *(*lookup)(struct steer_key *);
	int (*delete)(struct steer_key *);
	int (*sock_hash_update)(void *, void *, u64);
	u32 max_entries;
	int flags;
};
/* Pinned so that `ss`'s blind spot has an answer: it shows a remapped
 * listener at its real, ephemeral port; the keys here are what it answers. */
__attribute__((section("maps/sockhash:" VADDR_PIN_DIR "/listeners")))
struct listeners_table_t listeners = {.max_entries = 65536};
BPF_ANNOTATE_KV_PAIR(listeners, struct steer_key, u64);

static __always_inline void file_listener(struct bpf_sock_ops *skops, const struct addr_key *addr, __u16 port,
					  __u32 slot)
{
	struct steer_key key = {.port = port, .proto = IPPROTO_TCP | (slot << SLOT_SHIFT)};

	copy6(key.addr.ip6, addr->ip6);
	listeners.sock_hash_update(skops, &key, BPF_ANY);
}

#ifdef VADDR_LOOSE
/* listen() with no bind: the kernel bound the socket to the wildcard at an
 * ephemeral port, and no bind hook ran.  On a host of its own that is a
 * listener on the host's addresses only: file it under the vhost's (the
 * sk_lookup program hands it their connections) and under the wildcard,
 * where vaddr_steer finds it to refuse every other destination on that
 * port.  Needs bpf_get_current_cgroup_id in sockops; the loader leaves this
 * out where the verifier refuses it. */
static __always_inline int file_loose(struct bpf_sock_ops *skops, struct sock_facts *facts)
{
	/* Every field read up front, and kept there (see udp_ports.h). */
	__u32 family = skops->family, port = skops->local_port, ip4 = skops->local_ip4;
	__u32 l6_0 = skops->local_ip6[0], l6_1 = skops->local_ip6[1], l6_2 = skops->local_ip6[2];
	__u32 l6_3 = skops->local_ip6[3];
	u64 cgid = bpf_get_current_cgroup_id();
	struct addr_key addr = {};
	struct vhost *vh;
	int v4;

	asm volatile("" : "+r"(family), "+r"(port), "+r"(ip4), "+r"(l6_0), "+r"(l6_1), "+r"(l6_2), "+r"(l6_3));
	if (ip4 | l6_0 | l6_1 | l6_2 | l6_3)
		return 1;  /* bound to an address: not loose (SO_REUSEPORT, parked) */
	vh = vhosts.lookup(&cgid);
	if (!vh)
		return 1;
	if (!facts)
		facts = facts_of(skops->sk, 1);
	if (facts)
		facts->cgid = cgid;  /* answering(): a vhost's, not the machine's */
	v4 = family == AF_INET || !(facts && facts->v6only);
	if (v4 && (vh->flags & VHOST_HAS_V4)) {
		build_v4_mapped(&addr, vh->ip4);
		file_listener(skops, &addr, port, 0);
	}
	if (v4 && vh->lo4) {
		build_v4_mapped(&addr, vh->lo4);
		file_listener(skops, &addr, port, 0);
	}
	if (family == AF_INET6 && (vh->flags & VHOST_HAS_V6)) {
		copy6(addr.ip6, vh->ip6);
		file_listener(skops, &addr, port, 0);
	}
	__builtin_memset(&addr, 0, sizeof(addr));
	file_listener(skops, &addr, port, 0);
	return 1;
}
#endif

int vaddr_sockops(struct bpf_sock_ops *skops)
{
	struct sock_facts *facts;
	struct addr_key addr;
	struct vhost *vh;
	u64 cgid;
	__u16 port;
	__u32 slot = 0;

	if (skops->op != BPF_SOCK_OPS_TCP_LISTEN_CB || !skops->sk)
		return 1;
	facts = facts_of(skops->sk, 0);
	if (!facts || !facts->vport) {
#ifdef VADDR_LOOSE
		return file_loose(skops, facts);
#else
		return 1;
#endif
	}
	cgid = facts->cgid;
	port = facts->vport;
	vh = vhosts.lookup(&cgid);
	if (!vh)
		return 1;
#ifdef VADDR_UDP_PORTS
	slot = group_slot(facts);
#endif
	if (facts->steer & STEER_VIP4) {
		build_v4_mapped(&addr, vh->ip4);
		file_listener(skops, &addr, port, slot);
	}
	if (facts->steer & STEER_LO4) {
		build_v4_mapped(&addr, vh->lo4);
		file_listener(skops, &addr, port, slot);
	}
	if (facts->steer & STEER_VIP6) {
		copy6(addr.ip6, vh->ip6);
		file_listener(skops, &addr, port, slot);
	}
	return 1;
}

#ifdef VADDR_UDP_PORTS
/* A group whose listener in slot 0 closed is found through another. */
static __always_inline struct bpf_sock *other_slot(struct steer_key *key)
{
	struct bpf_sock *sk = NULL;
	__u16 proto = key->proto;
	int i;

#pragma unroll
	for (i = 1; i < GROUP_SLOTS; i++) {
		key->proto = proto | (i << SLOT_SHIFT);
		sk = (struct bpf_sock *)listeners.lookup(key);
		if (sk)
			break;
	}
	key->proto = proto;
	return sk;
}
#endif

/* A TCP connection to a vhost's address that none of its listeners takes
 * is refused (the kernel answers a dropped lookup with a reset), as by a
 * host of its own: otherwise the kernel would go on to the machine's
 * 0.0.0.0 listener on that port, and a client on the machine would talk to
 * the machine's server while believing it reached the vhost.  Only where
 * groups are built too (groups.h): then every TCP listener in a vhost is
 * filed here, none bound where this would pass it over.  A UDP datagram
 * cannot be judged here (a vhost's unconnected client socket sits at its
 * ephemeral port unfiled, and its replies come through here): the tc
 * program, which can look up the socket, filed the flows to refuse (the
 * kernel answers a dropped one with "port unreachable"). */
static __always_inline int unheard(const struct steer_key *key, __u32 protocol, struct refusal_key *flow)
{
#ifdef VADDR_UDP_PORTS
	if (protocol == IPPROTO_TCP && (owners.lookup((struct addr_key *)&key->addr) ||
					loopbacks.lookup((struct addr_key *)&key->addr)))
		return SK_DROP;
	if (protocol == IPPROTO_UDP) {
		copy6(flow->dst.ip6, key->addr.ip6);
		flow->dport = key->port;
		if (refusals.lookup(flow))
			return SK_DROP;
	}
#endif
	return SK_PASS;
}

/* Is remote4 the IPv4 vIP of the vhost whose private loopback is lo4? */
static __always_inline int own_vip4(__u32 lo4, __u32 remote4)
{
	u64 owner = loopback_owner(lo4);
	struct vhost *vh = vhosts.lookup(&owner);

	return vh && (vh->flags & VHOST_HAS_V4) && vh->ip4 == remote4;
}

int vaddr_steer(struct bpf_sk_lookup *ctx)
{
	struct steer_key key = {.port = ctx->local_port, .proto = ctx->protocol};
	/* Every field read up front: branch-dependent context offsets are
	 * merged by clang into pointer arithmetic the verifier refuses. */
	__u32 ip4 = ctx->local_ip4, remote4 = ctx->remote_ip4;
	__u32 ip6_0 = ctx->local_ip6[0], ip6_1 = ctx->local_ip6[1];
	__u32 ip6_2 = ctx->local_ip6[2], ip6_3 = ctx->local_ip6[3];
	__u32 r6_0 = ctx->remote_ip6[0], r6_1 = ctx->remote_ip6[1];
	__u32 r6_2 = ctx->remote_ip6[2], r6_3 = ctx->remote_ip6[3];
	struct refusal_key flow = {.sport = ctx->remote_port};
	struct bpf_sock *sk;
	int v4 = ctx->family == AF_INET;

	if (v4) {
		build_v4_mapped(&key.addr, ip4);
		build_v4_mapped(&flow.src, remote4);
	} else {
		key.addr.ip6[0] = ip6_0;
		key.addr.ip6[1] = ip6_1;
		key.addr.ip6[2] = ip6_2;
		key.addr.ip6[3] = ip6_3;
		flow.src.ip6[0] = r6_0;
		flow.src.ip6[1] = r6_1;
		flow.src.ip6[2] = r6_2;
		flow.src.ip6[3] = r6_3;
	}
	sk = (struct bpf_sock *)listeners.lookup(&key);
#ifdef VADDR_UDP_PORTS
	if (!sk)
		sk = other_slot(&key);
#endif
#ifdef VADDR_LOOSE
	if (!sk) {
		/* A vhost's listen() without bind holds this port on every
		 * address; its own are filed above, so this destination is
		 * not its to answer (an IPv4 socket gets no IPv6 lookups). */
		struct steer_key wild = {.port = key.port, .proto = key.proto};
		int drop;

		sk = (struct bpf_sock *)listeners.lookup(&wild);
		if (!sk)
			return unheard(&key, ctx->protocol, &flow);
		drop = v4 || sk->family == AF_INET6;
		bpf_sk_release(sk);
		return drop ? SK_DROP : SK_PASS;
	}
#else
	if (!sk)
		return unheard(&key, ctx->protocol, &flow);
#endif
	/* A private loopback answers its own vhost only, whose connections to
	 * it come from it too (loopback.h binds them there, or the client
	 * bound 0.0.0.0:0 first and so sits on the vhost's vIP). */
	if (v4 && loopback_owner(ip4) && remote4 != ip4 && !own_vip4(ip4, remote4)) {
		bpf_sk_release(sk);
		return SK_PASS;
	}
	bpf_sk_assign(ctx, sk, 0);
	bpf_sk_release(sk);
	return SK_PASS;
}

#endif
