/* 127.0.0.1 and ::1 inside a vhost.
 *
 * Each vhost has a private loopback address, lo4 in 127.127.0.0/16: a bind
 * of 127.0.0.1 lands there and a connection to 127.0.0.1 goes there, so two
 * vhosts can each listen on 127.0.0.1:P and neither reaches the other's, nor
 * the machine's.  What programs see is rewritten back to 127.0.0.1 by the
 * getsockname, getpeername and recvmsg hooks below.  ::1 is carried over the
 * same lo4 (v4-mapped): a second private address per vhost would have to be
 * an interface address, which costs a netlink round trip per spawn. */
#ifndef VADDR_LOOPBACK_H
#define VADDR_LOOPBACK_H

#include "lib.h"
#include "lo6.h"

#define LOCALHOST4 0x7f000001  /* host byte order */

static __always_inline int has_private_loopback(const struct vhost *vh)
{
	return vh->lo4 && !(vh->flags & VHOST_HOST_LOOPBACK);
}

static __always_inline int is_localhost4(__u32 ip4)
{
	return ip4 == bpf_htonl(LOCALHOST4);
}

static __always_inline int is_localhost6(const __u32 *ip6)
{
	return is_loopback6(ip6) || (is_v4_mapped(ip6) && is_localhost4(ip6[3]));
}

/* 0.0.0.0 as a destination is "this host": the kernel sends it to
 * 127.0.0.1, or to the address the socket is bound to (etcd's gRPC gateway
 * dials its own 0.0.0.0:2379, a listen address used as a dial one).  In a
 * vhost that is its own loopback, never the machine's; a socket bound to its
 * vIP reaches the vIP as the kernel would. */
static __always_inline int means_this_host4(const struct bpf_sock_addr *ctx, const struct vhost *vh, __u32 ip4)
{
	return !ip4 && has_private_loopback(vh) && ctx->sk && (!ctx->sk->src_ip4 || ctx->sk->src_ip4 == vh->lo4);
}

/* [::] likewise is ::1 (tcp_v6_connect, ip6_datagram_connect, udpv6_sendmsg). */
static __always_inline void this_host6(__u32 *ip6)
{
	ip6[0] = ip6[1] = ip6[2] = 0;
	ip6[3] = bpf_htonl(1);
}

#define ANSWER_NONE 0
#define ANSWER_OURS 1     /* a socket bound to one of the vhost's addresses */
#define ANSWER_MACHINE 2  /* a socket bound to 0.0.0.0: the machine's */

/* Who would receive a connection to ip4:port?  A vhost's sockets are bound
 * to its addresses (its wildcard binds are rewritten), so one bound to
 * 0.0.0.0 can only be the machine's, and a connection that would reach it
 * from inside a vhost must be refused instead. */
static __always_inline int answering(void *ctx, const struct vhost *vh, __u32 ip4, __u16 port_be, int udp)
{
	struct bpf_sock_tuple tuple = {};
	struct bpf_sock *sk;
	int who;
#ifdef VADDR_UDP_PORTS
	struct port_key key = {.port = bpf_ntohs(port_be), .dir = PORT_TO_REAL};

	/* A UDP socket of a vhost's holds another port (udp_ports.h). */
	build_v4_mapped(&key.addr, ip4);
	if (udp && udp_ports.lookup(&key))
		return ANSWER_OURS;
#endif

	/* From lo4 so that the steering program (steer.h) lets the probe of a
	 * private loopback through; the source does not matter otherwise. */
	tuple.ipv4.saddr = vh->lo4;
	tuple.ipv4.daddr = ip4;
	tuple.ipv4.dport = port_be;
	if (udp)
		sk = bpf_sk_lookup_udp(ctx, &tuple, sizeof(tuple.ipv4), BPF_F_CURRENT_NETNS, 0);
	else
		sk = bpf_sk_lookup_tcp(ctx, &tuple, sizeof(tuple.ipv4), BPF_F_CURRENT_NETNS, 0);
	if (!sk)
		return ANSWER_NONE;
	who = (sk->src_ip4 != 0 || !is_any6((const __u32 *)sk->src_ip6)) ? ANSWER_OURS : ANSWER_MACHINE;
	if (who == ANSWER_MACHINE) {
		/* ...unless the kernel bound a vhost's socket to the wildcard
		 * (mark_autobind, steer.h's file_loose) and the destination is
		 * that vhost's, or the caller is. */
		struct sock_facts *facts = facts_of(sk, 0);
		struct addr_key dst;

		build_v4_mapped(&dst, ip4);
		if (facts && facts->cgid &&
		    (facts->cgid == bpf_get_current_cgroup_id() || facts->cgid == owner_of(&dst) ||
		     facts->cgid == loopback_owner(ip4)))
			who = ANSWER_OURS;
	}
	bpf_sk_release(sk);
	return who;
}

/* An unbound UDP socket that sends is bound by the kernel to 0.0.0.0 before
 * the sendmsg hook runs (no bind hook does), so answering() would take it
 * for the machine's and refuse a reply to it from its own vhost's server:
 * note whose it is.  A vhost's own binds never reach the wildcard. */
static __always_inline void mark_autobind(struct bpf_sock *sk)
{
	struct sock_facts *facts;

	if (sk->src_ip4 != 0 || !is_any6((const __u32 *)sk->src_ip6))
		return;
	facts = facts_of(sk, 1);
	if (facts)
		facts->cgid = bpf_get_current_cgroup_id();
}

/* Where a connection to 127.0.0.1:port inside the vhost goes: lo4 when a
 * listener of the vhost answers there (one on 127.0.0.1, or a wildcard one:
 * steer.h files those under both), else the vIP when one of its own sockets
 * is bound there (UDP wildcards, SO_REUSEPORT groups), else lo4, where
 * nothing answers (refused, as on a host with no listener); 0 when only the
 * machine's wildcard socket would answer. */
static __always_inline __u32 localhost_target(void *ctx, const struct vhost *vh, __u16 port_be, int udp)
{
	int at_lo = answering(ctx, vh, vh->lo4, port_be, udp);

	if (at_lo == ANSWER_OURS)
		return vh->lo4;
	if ((vh->flags & VHOST_HAS_V4) && answering(ctx, vh, vh->ip4, port_be, udp) == ANSWER_OURS)
		return vh->ip4;
	return at_lo == ANSWER_MACHINE ? 0 : vh->lo4;
}

/* The port a vhost's socket shows (a remapped one holds another). */
static __always_inline __u16 shown_port_be(struct bpf_sock *own)
{
	struct sock_facts *facts = facts_of(own, 0);

	return facts && facts->vport ? bpf_htons(facts->vport) : bpf_htons(own->src_port);
}

/* Is a datagram to the machine's loopback (127.0.0.1 or ::1) at port_be a
 * reply to one of the machine's clients?  Those come from its loopback (the
 * vIP routes' preferred source), and a UDP server's reply must reach them,
 * not the vhost's own loopback.  Only a client socket connected to exactly
 * this socket's address and port counts, so a vhost cannot reach the
 * machine's loopback services this way. */
static __always_inline int answers_machine_client(void *ctx, struct bpf_sock *own, __u16 port_be, int v6)
{
	struct bpf_sock_tuple tuple = {};
	struct sock_facts *facts;
	struct bpf_sock *sk;
	__u32 src4, src6[4];
	__u16 own_port;
	int yes;

	if (!own || !own->src_port)
		return 0;  /* not bound yet: a client, not a server replying */
	own_port = shown_port_be(own);
	src4 = own->src_ip4;
	copy6(src6, (const __u32 *)own->src_ip6);
	/* A dual-stack UDP socket on the wildcard (udp_ports.h) answers from
	 * the vIP of the reply's family. */
	facts = facts_of(own, 0);
	if (facts && facts->wild4 && !src4 && is_any6(src6)) {
		src4 = facts->wild4;
		copy6(src6, facts->wild6);
	}
	if (v6) {
		copy6(tuple.ipv6.saddr, src6);
		tuple.ipv6.daddr[3] = bpf_htonl(1);
		tuple.ipv6.sport = own_port;
		tuple.ipv6.dport = port_be;
		sk = bpf_sk_lookup_udp(ctx, &tuple, sizeof(tuple.ipv6), BPF_F_CURRENT_NETNS, 0);
	} else {
		tuple.ipv4.saddr = src4;
		tuple.ipv4.daddr = bpf_htonl(LOCALHOST4);
		tuple.ipv4.sport = own_port;
		tuple.ipv4.dport = port_be;
		sk = bpf_sk_lookup_udp(ctx, &tuple, sizeof(tuple.ipv4), BPF_F_CURRENT_NETNS, 0);
	}
	if (!sk)
		return 0;
	yes = (__u16)sk->dst_port == own_port &&
	      (v6 ? (sk->dst_ip6[0] == src6[0] && sk->dst_ip6[1] == src6[1] &&
		     sk->dst_ip6[2] == src6[2] && sk->dst_ip6[3] == src6[3])
		  : sk->dst_ip4 == src4);
	bpf_sk_release(sk);
	return yes;
}

/* A UDP server hears the machine's clients from 127.0.0.1 (the vIP routes'
 * preferred source) or ::1.  A client that is not connected (dig, kdig, a
 * Python sendto) is told from the machine's own services on that address
 * only by having spoken first, as a host's firewall tells a reply: the
 * server's socket keeps the last PORT_RING ports it heard from there
 * (RING_HEARD), and may answer those.  On recvmsg, the real 127.0.0.1 (or
 * ::1) is the machine, since a vhost's own clients leave from lo4. */
static __always_inline void note_sender4(const struct vhost *vh, struct bpf_sock_addr *ctx)
{
	if (!has_private_loopback(vh) || !ctx->sk)
		return;
	if (is_localhost4(ctx->user_ip4))
		ring_add(ctx->sk, RING_HEARD, ctx->user_port);
	else if (ctx->user_ip4 == vh->lo4)
		ring_drop(ctx->sk, RING_HEARD, ctx->user_port);  /* its own client holds the port now */
}

/* ::1:P for a UDP socket of the vhost's own on its IPv6 vIP at P: where an
 * IPV6_V6ONLY [::]:P lands in a vhost with IPv6 (knot, dnsmasq, `dig @::1`),
 * which lo6.h's parking does not take (its SO_REUSEPORT groups and the
 * vIP's port pairs, udp_ports.h, would not survive the move). */
static __always_inline int own_udp6_at_vip(const struct vhost *vh, __u16 port_be)
{
#ifdef VADDR_UDP_PORTS
	struct port_key key = {.port = bpf_ntohs(port_be), .dir = PORT_TO_REAL};

	if (!(vh->flags & VHOST_HAS_V6))
		return 0;
	copy6(key.addr.ip6, vh->ip6);
	return udp_ports.lookup(&key) != NULL;
#else
	return 0;
#endif
}

/* Another vhost's private loopback is nobody else's to reach or bind. */
static __always_inline int is_foreign_loopback(__u32 ip4)
{
	u64 owner = loopback_owner(ip4);

	return owner && owner != bpf_get_current_cgroup_id();
}

/* What a program in the vhost sees for an address: its lo4 shows as
 * 127.0.0.1 (Redis's protected mode, PostgreSQL's "host" lines and
 * unbound's default ACL all judge a client by it). */
static __always_inline void show_loopback4(const struct vhost *vh, __u32 *ip4)
{
	if (vh->lo4 && *ip4 == vh->lo4)
		*ip4 = bpf_htonl(LOCALHOST4);
}

/* A client that bound 0.0.0.0:0 before it connected to 127.0.0.1 (rndc,
 * dig +tcp) sits on the vIP (bind4), and talks to lo4 from there: each end
 * sees the other's vIP as 127.0.0.1, as the two ends of a loopback
 * connection on a host do. */
static __always_inline void show_local_peer4(const struct vhost *vh, struct bpf_sock *sk, __u32 *ip4)
{
	__u32 src, dst;

	if (!sk || !vh->lo4 || !(vh->flags & VHOST_HAS_V4) || *ip4 != vh->ip4)
		return;
	src = sk->src_ip4;
	dst = sk->dst_ip4;
	if (src == vh->lo4 || dst == vh->lo4)
		*ip4 = bpf_htonl(LOCALHOST4);
}

static __always_inline int show_peer4(struct bpf_sock_addr *ctx)
{
	struct vhost *vh = current_vhost();
	__u32 ip4;

	if (!vh)
		return SYS_PROCEED;
	ip4 = ctx->user_ip4;
	show_loopback4(vh, &ip4);
	show_local_peer4(vh, ctx->sk, &ip4);
	ctx->user_ip4 = ip4;
	return SYS_PROCEED;
}

/* A v4-mapped lo4 shows as ::ffff:127.0.0.1. */
static __always_inline int show_peer6(struct bpf_sock_addr *ctx)
{
	struct vhost *vh = current_vhost();
	__u32 ip4;

	if (!vh)
		return SYS_PROCEED;
	if (ctx->user_ip6[0] == 0 && ctx->user_ip6[1] == 0 && ctx->user_ip6[2] == bpf_htonl(0xffff)) {
		ip4 = ctx->user_ip6[3];
		show_loopback4(vh, &ip4);
		ctx->user_ip6[3] = ip4;
	}
	return SYS_PROCEED;
}

/* A remapped socket (steer.h, udp_ports.h) shows the port it asked for. */
static __always_inline int show_vport(struct bpf_sock_addr *ctx)
{
	struct sock_facts *facts = facts_of(ctx->sk, 0);

	if (facts && facts->vport)
		ctx->user_port = bpf_htons(facts->vport);
	return SYS_PROCEED;
}

/* RING_VIA_VIP: a client's datagram to 127.0.0.1:P (or ::1:P) that went to
 * the vIP, where the vhost's wildcard UDP socket is (localhost_target,
 * own_udp6_at_vip), is answered from vIP:P; a client that checks where its
 * answer came from (dig, kdig) wants the loopback it asked.  Peers only:
 * getsockname shows the socket's own address as it is. */
static __always_inline void show_asked_loopback(struct bpf_sock_addr *ctx, int v6)
{
	struct vhost *vh = current_vhost();
	__u32 ip6[4];

	if (!vh || !ctx->sk || !ring_has(ctx->sk, RING_VIA_VIP, ctx->user_port))
		return;
	if (!v6) {
		if (ctx->user_ip4 == vh->ip4 && vh->lo4)
			ctx->user_ip4 = bpf_htonl(LOCALHOST4);
		return;
	}
	copy6(ip6, ctx->user_ip6);
	if (!(vh->flags & VHOST_HAS_V6) || ip6[0] != vh->ip6[0] || ip6[1] != vh->ip6[1] || ip6[2] != vh->ip6[2] ||
	    ip6[3] != vh->ip6[3])
		return;
	ctx->user_ip6[0] = 0;
	ctx->user_ip6[1] = 0;
	ctx->user_ip6[2] = 0;
	ctx->user_ip6[3] = bpf_htonl(1);
}

/* bcc loads a function once per name, with one attach type: one each. */
int vaddr_getpeername4(struct bpf_sock_addr *ctx)
{
	show_peer4(ctx);
	show_asked_loopback(ctx, 0);
	return SYS_PROCEED;
}
int vaddr_recvmsg4(struct bpf_sock_addr *ctx)
{
	struct vhost *vh = current_vhost();

	if (vh)
		note_sender4(vh, ctx);
	show_peer4(ctx);
	show_asked_loopback(ctx, 0);
	return SYS_PROCEED;
}
int vaddr_getpeername6(struct bpf_sock_addr *ctx)
{
	show_lo6_port(ctx);
	show_peer6(ctx);
	show_asked_loopback(ctx, 1);
	return SYS_PROCEED;
}
int vaddr_recvmsg6(struct bpf_sock_addr *ctx)
{
	struct vhost *vh = current_vhost();
	__u32 ip6[4];

	copy6(ip6, ctx->user_ip6);
	if (vh && has_private_loopback(vh) && ctx->sk) {
		if (is_localhost6(ip6))
			ring_add(ctx->sk, RING_HEARD, ctx->user_port);
		else if (is_v4_mapped(ip6) && ip6[3] == vh->lo4)
			ring_drop(ctx->sk, RING_HEARD, ctx->user_port);
	}
	show_lo6_port(ctx);
	show_peer6(ctx);
	show_asked_loopback(ctx, 1);
	return SYS_PROCEED;
}
/* A socket bound to a group is held at the vIP (mcast.h): it shows the group. */
static __always_inline int bound_to_group(struct bpf_sock_addr *ctx, int v6)
{
	struct sock_facts *facts = facts_of(ctx->sk, 0);

	if (!facts || !facts->mc_group)
		return 0;
	if (v6)
		set_user_mapped(ctx, facts->mc_group);
	else
		ctx->user_ip4 = facts->mc_group;
	ctx->user_port = bpf_htons(facts->mc_vport);
	return 1;
}

int vaddr_getsockname4(struct bpf_sock_addr *ctx)
{
	if (bound_to_group(ctx, 0))
		return SYS_PROCEED;
	show_peer4(ctx);
	return show_vport(ctx);
}
int vaddr_getsockname6(struct bpf_sock_addr *ctx)
{
	if (bound_to_group(ctx, 1))
		return SYS_PROCEED;
	show_lo6_port(ctx);
	show_any6(ctx);
	show_peer6(ctx);
	return show_vport(ctx);
}

#endif
