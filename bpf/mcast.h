/* IPv4 multicast between vhosts: discovery (mDNS, corosync's udp transport,
 * JGroups, Hazelcast) as on one network segment of their own.
 *
 * The kernel delivers a group's datagram to sockets bound to the group's port
 * on the wildcard or the group address.  A vhost's sockets hold (vIP, R)
 * instead (udp_ports.h), and its joins would name the machine's interfaces,
 * whose route for 224/4 leads off the machine.  So:
 *   - the setsockopt hook moves every join and IP_MULTICAST_IF to lo, and
 *     files the vhost as a member of the group (mc_members);
 *   - the send hooks give a vhost's datagram to a group its vIP as source,
 *     which alone sends it out of lo (the kernel routes a multicast with a
 *     local source out of that address's device), never out of eth0;
 *   - on lo's egress, vaddr_mcast copies the datagram to each member vhost's
 *     vIP, at the same port: from there it is one of the vhost's datagrams,
 *     its port translated (udp_ports.h) and its link shaped (shape.c).  The
 *     copy keeps the group's route, so the kernel hands it to every socket of
 *     the member on that port, as it hands a group's datagram to a host's.
 *     The original goes no further: the machine's own sockets on the port
 *     are not on the lab's segment.
 * Needs sock_release for a socket's memberships to go with it: included by
 * udp_ports.h, whose packet offsets it reads, when the loader asks for it
 * (VADDR_MCAST; tried without where the verifier refuses its loops). */
#ifndef VADDR_MCAST_H
#define VADDR_MCAST_H

#include "lib.h"

#define SOL_IP_ 0
#define IP_MULTICAST_IF_ 32
#define IP_ADD_MEMBERSHIP_ 35
#define IP_DROP_MEMBERSHIP_ 36
#define IP_UNBLOCK_SOURCE_ 37
#define IP_ADD_SOURCE_MEMBERSHIP_ 39
#define IP_DROP_SOURCE_MEMBERSHIP_ 40
#define MCAST_JOIN_GROUP_ 42
#define MCAST_LEAVE_GROUP_ 45
#define MCAST_JOIN_SOURCE_GROUP_ 46
#define MCAST_LEAVE_SOURCE_GROUP_ 47
#define LOOPBACK_IFINDEX 1  /* lo, in every network namespace */
#define LOCALHOST4_BE 0x0100007f

#define MC_KEEP 0    /* let the kernel do the call */
#define MC_DONE 1    /* answered here: the kernel already did it once */
#define MC_FULL 2    /* no room: ENOBUFS, as past the kernel's own limit */

struct mc_key {
	__u32 group;  /* network order */
	__u32 slot;   /* < MC_SLOTS */
};
/* A member: a vhost, for its sockets on the wildcard (real 0), or one of
 * its sockets bound to the group itself (real: the port it holds). */
struct mc_member {
	__u32 ip4;      /* the vhost's vIP, network order */
	__u16 vport;    /* bound to the group: the port it asked for, host order */
	__u16 real;
	__u32 sockets;  /* its sockets in the group */
};
BPF_HASH(mc_members, struct mc_key, struct mc_member, 65536);

/* The member's slot in the group (its entry in *m), or -1. */
static __always_inline int mc_slot(struct mc_key *key, __u32 ip4, __u16 real, struct mc_member **m)
{
	__u32 i;

	for (i = 0; i < MC_SLOTS; i++) {
		key->slot = i;
		*m = mc_members.lookup(key);
		if (*m && (*m)->ip4 == ip4 && (*m)->real == real)
			return i;
	}
	return -1;
}

/* A member joins the group: its slot counts one socket more, or it takes a
 * free one.  A slot is taken by inserting it, which fails for all but one of
 * two members taking the same slot at once. */
static __always_inline int mc_enlist(__u32 group, const struct mc_member *fresh)
{
	struct mc_key key = {.group = group};
	struct mc_member *m;
	__u32 i;

	if (mc_slot(&key, fresh->ip4, fresh->real, &m) >= 0 && m) {
		__sync_fetch_and_add(&m->sockets, 1);
		return 0;
	}
	for (i = 0; i < MC_SLOTS; i++) {
		key.slot = i;
		if (mc_members.insert(&key, (struct mc_member *)fresh) == 0)
			return 0;
		m = mc_members.lookup(&key);
		if (m && m->ip4 == fresh->ip4 && m->real == fresh->real) {  /* a sibling took it just now */
			__sync_fetch_and_add(&m->sockets, 1);
			return 0;
		}
	}
	return -1;
}

static __always_inline void mc_unlist(__u32 group, __u32 ip4, __u16 real)
{
	struct mc_key key = {.group = group};
	struct mc_member *m;

	if (mc_slot(&key, ip4, real, &m) < 0 || !m)
		return;
	__sync_fetch_and_add(&m->sockets, -1);
	if (m->sockets == 0)
		mc_members.delete(&key);
}

/* Which of the socket's group slots holds group; -1 if none. */
static __always_inline int mc_find(const struct sock_facts *facts, __u32 group)
{
	int i;

#pragma unroll
	for (i = 0; i < MC_PER_SOCK; i++)
		if (facts->mc_joins[i] && facts->mc[i] == group)
			return i;
	return -1;
}

/* A join.  All of a vhost's interfaces are lo here, so a program joining a
 * group on each of its interfaces (avahi, zeroconf) joins lo once; the kernel
 * would refuse the second with EADDRINUSE, so the later ones are counted and
 * answered here.  A socket bound to another group hears none of this one's,
 * as on a host: the kernel joins it, and nothing is filed. */
static __always_inline int mc_join(struct sock_facts *facts, const struct vhost *vh, __u32 group, __u16 real)
{
	struct mc_member fresh = {.ip4 = vh->ip4, .sockets = 1};
	int i = mc_find(facts, group), j;

	if (i >= 0) {
		facts->mc_joins[i & (MC_PER_SOCK - 1)]++;
		return MC_DONE;
	}
	if (facts->mc_group && facts->mc_group != group)
		return MC_KEEP;
	if (facts->mc_group) {
		fresh.vport = facts->mc_vport;
		fresh.real = real;
	}
#pragma unroll
	for (j = 0; j < MC_PER_SOCK; j++) {
		if (facts->mc_joins[j])
			continue;
		if (mc_enlist(group, &fresh))
			return MC_FULL;
		facts->mc[j] = group;
		facts->mc_joins[j] = 1;
		facts->mc_ip4 = vh->ip4;
		facts->mc_real = fresh.real;
		return MC_KEEP;
	}
	return MC_FULL;
}

/* A leave: the last one of the socket's joins of the group leaves lo. */
static __always_inline int mc_leave(struct sock_facts *facts, __u32 group)
{
	int i = mc_find(facts, group);

	if (i < 0)
		return MC_KEEP;  /* the kernel answers EADDRNOTAVAIL */
	i &= MC_PER_SOCK - 1;
	if (--facts->mc_joins[i])
		return MC_DONE;
	mc_unlist(group, facts->mc_ip4, facts->mc_real);
	return MC_KEEP;
}

/* sock_release: the kernel drops a closed socket's memberships; so here. */
static __always_inline void mc_release(struct sock_facts *facts)
{
	int i;

#pragma unroll
	for (i = 0; i < MC_PER_SOCK; i++)
		if (facts->mc_joins[i]) {
			facts->mc_joins[i] = 0;
			mc_unlist(facts->mc[i], facts->mc_ip4, facts->mc_real);
		}
}

/* bind(G:P), the group's own address (corosync, JGroups): a socket that
 * hears the group at P and nothing else.  It holds (vIP, R) with no pair
 * filed (udp_ports.h), so no unicast reaches it; its join files R, where the
 * copies of the group's datagrams to P go. */
static __always_inline int mc_bind(struct bpf_sock_addr *ctx, const struct vhost *vh, __u32 group, int v6)
{
	struct sock_facts *facts;

	if (ctx->protocol != IPPROTO_UDP || !ctx->user_port || !(vh->flags & VHOST_HAS_V4))
		return SYS_PROCEED;
	facts = facts_of(ctx->sk, 1);
	if (!facts)
		return SYS_PROCEED;
	if (v6)
		set_user_mapped(ctx, vh->ip4);
	else
		ctx->user_ip4 = vh->ip4;
	facts->mc_group = group;
	facts->mc_vport = bpf_ntohs(ctx->user_port);
	ctx->user_port = 0;
	return SYS_PROCEED;
}

/* Where the group is in the option's value, and where its interface; 0 when
 * the option is none of these. */
struct mc_opt {
	__u32 group_off;
	int join;     /* 1 join, -1 leave, 0 neither (only the interface moves) */
	int ifindex;  /* the interface is an index at 0 (group_req), else an
	               * address at 4, or an ip_mreqn's index at 8 */
};

static __always_inline int mc_opt_of(struct bpf_sockopt *ctx, struct mc_opt *o)
{
	if (ctx->level != SOL_IP_)
		return 0;
	switch (ctx->optname) {
	case IP_ADD_MEMBERSHIP_:
	case IP_DROP_MEMBERSHIP_:
		o->group_off = 0;
		o->join = ctx->optname == IP_ADD_MEMBERSHIP_ ? 1 : -1;
		o->ifindex = ctx->optlen >= 12 ? 8 : -1;  /* ip_mreqn or ip_mreq */
		return 1;
	case IP_UNBLOCK_SOURCE_ ... IP_DROP_SOURCE_MEMBERSHIP_:  /* ip_mreq_source */
		o->group_off = 0;
		o->join = ctx->optname == IP_ADD_SOURCE_MEMBERSHIP_;
		o->ifindex = -1;
		return 1;
	case MCAST_JOIN_GROUP_ ... MCAST_LEAVE_SOURCE_GROUP_:  /* group_req, group_source_req */
		o->group_off = 12;  /* gr_group's sin_addr, after the interface and padding */
		o->join = ctx->optname == MCAST_JOIN_GROUP_ || ctx->optname == MCAST_JOIN_SOURCE_GROUP_ ? 1 :
			  ctx->optname == MCAST_LEAVE_GROUP_ ? -1 : 0;
		o->ifindex = 0;
		return 1;
	}
	return 0;
}

/* In the setsockopt hook, for a vhost's socket: SYS_PROCEED, or a refusal. */
static __always_inline int mc_setsockopt(struct bpf_sockopt *ctx, const struct vhost *vh)
{
	__u32 *opt = ctx->optval;
	struct sock_facts *facts;
	struct mc_opt o;
	__u32 group;
	int done;

	if (ctx->level == SOL_IP_ && ctx->optname == IP_MULTICAST_IF_) {
		/* The vIP, whatever interface was named: the kernel finds lo by
		 * it, and sends from it when the socket is unbound.  The forms
		 * are an address, an ip_mreq, or an ip_mreqn (and its index). */
		if ((void *)(opt + 3) > ctx->optval_end || !(vh->flags & VHOST_HAS_V4) || ctx->optlen < 4)
			return SYS_PROCEED;
		if (ctx->optlen < 8) {
			opt[0] = vh->ip4;
			return SYS_PROCEED;
		}
		opt[1] = vh->ip4;
		if (ctx->optlen >= 12)
			opt[2] = LOOPBACK_IFINDEX;
		return SYS_PROCEED;
	}
	if (!mc_opt_of(ctx, &o) || (void *)(opt + 4) > ctx->optval_end)
		return SYS_PROCEED;
	if (o.group_off == 12) {
		if (ctx->optlen < 16 || *(__u16 *)(opt + 2) != AF_INET)
			return SYS_PROCEED;  /* IPv6 groups: the kernel's answer */
		group = opt[3];
		opt[0] = LOOPBACK_IFINDEX;
	} else {
		group = opt[0];
		if (o.ifindex == 8) {
			opt[1] = 0;
			opt[2] = LOOPBACK_IFINDEX;
		} else {
			opt[1] = LOCALHOST4_BE;
		}
	}
	if (!is_multicast4(group) || !o.join || !(vh->flags & VHOST_HAS_V4))
		return SYS_PROCEED;
	facts = sock_facts.sk_storage_get(ctx->sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (!facts)
		return SYS_PROCEED;
	done = o.join > 0 ? mc_join(facts, vh, group, ctx->sk->src_port) : mc_leave(facts, group);
	if (done == MC_FULL)
		return refuse(ERR_NOBUFS);
	if (done == MC_DONE)
		ctx->optlen = -1;  /* answered: the kernel is not asked */
	return SYS_PROCEED;
}

#define IP4_CSUM (ETH_HLEN + 10)
#define IP4_DADDR (ETH_HLEN + 16)

/* tc on lo's egress: a vhost's datagram to a group, copied to each member:
 * to the vIP at the same port for its sockets on the wildcard, to the port
 * its socket holds for one bound to the group.  The original is taken
 * (TC_ACT_STOLEN), not dropped: a drop would fail the sender's send with
 * ENOBUFS where it set IP_RECVERR, and a send to a group succeeds on a host
 * whether anyone listens or not. */
int vaddr_mcast(struct __sk_buff *skb)
{
	struct mc_key key = {};
	struct addr_key src;
	struct mc_member *m;
	__u32 addrs[2], cur, i, l4;
	__u16 ports[2], port, want;
	__u8 vihl, proto;

	if (skb->protocol != bpf_htons(ETH_P_IP) ||
	    bpf_skb_load_bytes(skb, IP4_ADDRS, addrs, sizeof(addrs)) < 0 || !is_multicast4(addrs[1]))
		return TC_ACT_UNSPEC;
	build_v4_mapped(&src, addrs[0]);
	if (!owner_of(&src))  /* the machine's own over lo, or a vhost's from its 127.0.0.1 */
		return loopback_owner(addrs[0]) ? TC_ACT_STOLEN : TC_ACT_UNSPEC;
	if (bpf_skb_load_bytes(skb, IP4_PROTO, &proto, 1) < 0 || proto != IPPROTO_UDP ||
	    bpf_skb_load_bytes(skb, ETH_HLEN, &vihl, 1) < 0)
		return TC_ACT_STOLEN;
	l4 = ETH_HLEN + (vihl & 0xf) * 4;
	if (bpf_skb_load_bytes(skb, l4, ports, sizeof(ports)) < 0)
		return TC_ACT_STOLEN;
	key.group = cur = addrs[1];
	port = ports[1];
	for (i = 0; i < MC_SLOTS; i++) {
		key.slot = i;
		m = mc_members.lookup(&key);
		if (!m || (m->real && m->vport != bpf_ntohs(ports[1])))
			continue;
		want = m->real ? bpf_htons(m->real) : ports[1];
		if (want != port) {
			bpf_l4_csum_replace(skb, l4 + UDP_CSUM, port, want, BPF_F_MARK_MANGLED_0 | sizeof(want));
			bpf_skb_store_bytes(skb, l4 + 2, &want, sizeof(want), 0);
			port = want;
		}
		if (m->ip4 != cur) {
			bpf_l4_csum_replace(skb, l4 + UDP_CSUM, cur, m->ip4,
					    BPF_F_PSEUDO_HDR | BPF_F_MARK_MANGLED_0 | sizeof(cur));
			bpf_l3_csum_replace(skb, IP4_CSUM, cur, m->ip4, sizeof(cur));
			cur = m->ip4;
			bpf_skb_store_bytes(skb, IP4_DADDR, &cur, sizeof(cur), 0);
		}
		bpf_clone_redirect(skb, skb->ifindex, 0);
	}
	return TC_ACT_STOLEN;
}

#endif
