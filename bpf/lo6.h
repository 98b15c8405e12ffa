/* ::1 inside a vhost, for IPV6_V6ONLY sockets.
 *
 * 127.0.0.1, and ::1 for a dual-stack socket, are carried over the vhost's
 * private lo4 (loopback.h); an IPV6_V6ONLY socket cannot sit on an IPv4
 * address, and IPv6 has no loopback range to give each vhost an address of
 * its own.  Such a socket bound to ::1 (PostgreSQL's and named's), or to
 * [::] in a vhost without IPv6 (nginx's `listen [::]:80`), is parked on the
 * machine's [::1] at an ephemeral port R (sock_addr.c) and filed here as the
 * vhost's ::1:P.  The connect and sendmsg hooks send the vhost's own ::1:P
 * to ::1:R, and the getsockname, getpeername and recvmsg hooks show R as P,
 * so `curl [::1]:80`, `dig @::1` and `psql -h ::1` reach the vhost's server
 * and both ends see ::1:P.  Only the vhost's own connections are sent there:
 * another vhost's ::1:P is its own, the machine's the machine's.  Filed at
 * post_bind and removed at sock_release, like udp_ports.h's pairs, so only
 * where those hooks are (VADDR_UDP_PORTS); elsewhere the socket stays
 * parked, started and unreachable. */
#ifndef VADDR_LO6_H
#define VADDR_LO6_H

#include "lib.h"

#ifdef VADDR_UDP_PORTS
/* (vhost, P, protocol) -> R, and (0, R, protocol) -> (vhost, P, wild). */
BPF_TABLE_PINNED("hash", struct lo6_key, struct lo6_val, lo6_ports, 16384, VADDR_PIN_DIR "/lo6_ports");

/* A bind of ::1:P, or [::]:P, by an IPV6_V6ONLY socket (P > 0): parked, to
 * be filed; steer adds STEER_ANY6 for [::], and STEER_VIP6 for a TCP one in a
 * vhost with IPv6, whose vIP steer.h then steers here too. */
static __always_inline int park_lo6(struct bpf_sock_addr *ctx, __u32 steer)
{
	struct sock_facts *facts = facts_of(ctx->sk, 1);

	if (facts && ctx->user_port) {
		facts->vport = bpf_ntohs(ctx->user_port);
		facts->steer = STEER_LO6 | steer;
		facts->cgid = bpf_get_current_cgroup_id();
	}
	return park6(ctx);
}

/* post_bind: the parked socket holds ::1:R.  A second socket of the vhost on
 * ::1:P stays parked unreached, as before this existed (SO_REUSEPORT groups
 * of such sockets are not formed here). */
static __always_inline int file_lo6(struct sock_facts *facts, __u32 proto)
{
	struct lo6_key ahead = {.cgid = facts->cgid, .port = facts->vport, .proto = proto};
	struct lo6_key back = {.port = facts->real, .proto = proto};
	struct lo6_val to_real = {.cgid = facts->cgid, .port = facts->real};
	struct lo6_val to_asked = {.cgid = facts->cgid, .port = facts->vport, .wild = !!(facts->steer & STEER_ANY6)};

	if (lo6_ports.insert(&ahead, &to_real) != 0) {
		facts->steer = 0;  /* not this socket's to remove, nor to steer to */
		return SYS_PROCEED;
	}
	lo6_ports.update(&back, &to_asked);
	return SYS_PROCEED;
}

static __always_inline void unfile_lo6(struct sock_facts *facts, __u32 proto)
{
	struct lo6_key ahead = {.cgid = facts->cgid, .port = facts->vport, .proto = proto};
	struct lo6_key back = {.port = facts->real, .proto = proto};
	struct lo6_val *held = lo6_ports.lookup(&ahead);

	if (!held || held->port != facts->real)
		return;
	lo6_ports.delete(&ahead);
	lo6_ports.delete(&back);
}

/* Where the vhost's own ::1:port_be is held: R (network order), or 0; also 0
 * for a socket on an IPv4 address, which cannot talk to ::1 (a dual-stack
 * client that bound [::]:0 sits on the v4-mapped vIP: `dig +tcp`), and goes
 * on to lo4 as before. */
static __always_inline __u16 lo6_real_be(struct bpf_sock *sk, __u16 port_be, __u32 proto)
{
	struct lo6_key key = {.cgid = bpf_get_current_cgroup_id(), .port = bpf_ntohs(port_be), .proto = proto};
	__u32 src[4] = {sk->src_ip6[0], sk->src_ip6[1], sk->src_ip6[2], sk->src_ip6[3]};
	struct lo6_val *held;

	if (is_v4_mapped(src))
		return 0;
	held = lo6_ports.lookup(&key);
	return held ? bpf_htons(held->port) : 0;
}

/* Is this socket a parked ::1 server (its replies go to ::1 as they are)? */
static __always_inline int is_lo6_server(struct bpf_sock *sk)
{
	struct sock_facts *facts = facts_of(sk, 0);

	return facts && (facts->steer & STEER_LO6);
}

/* ::1:R shows as ::1:P to the vhost that filed it. */
static __always_inline void show_lo6_port(struct bpf_sock_addr *ctx)
{
	__u32 ip6[4] = {ctx->user_ip6[0], ctx->user_ip6[1], ctx->user_ip6[2], ctx->user_ip6[3]};
	struct lo6_key key = {.port = bpf_ntohs(ctx->user_port), .proto = ctx->protocol};
	struct lo6_val *held;

	if (!is_loopback6(ip6))
		return;
	held = lo6_ports.lookup(&key);
	if (held && held->cgid == bpf_get_current_cgroup_id())
		ctx->user_port = bpf_htons(held->port);
}

/* getsockname of a parked socket that asked for [::] shows the vhost's IPv6
 * address, as for every wildcard bind in a vhost, or [::] where it has none. */
static __always_inline void show_any6(struct bpf_sock_addr *ctx)
{
	struct sock_facts *facts = facts_of(ctx->sk, 0);
	struct vhost *vh = current_vhost();
	__u32 ip6[4] = {};

	if (!facts || !(facts->steer & STEER_ANY6) || !vh)
		return;
	if (vh->flags & VHOST_HAS_V6)
		copy6(ip6, vh->ip6);
	/* Opaque to clang, which would merge the stores into 64-bit ones
	 * that the verifier refuses on this context. */
	asm volatile("" : "+r"(ip6[0]), "+r"(ip6[1]), "+r"(ip6[2]), "+r"(ip6[3]));
	ctx->user_ip6[0] = ip6[0];
	ctx->user_ip6[1] = ip6[1];
	ctx->user_ip6[2] = ip6[2];
	ctx->user_ip6[3] = ip6[3];
}
#else
static __always_inline int park_lo6(struct bpf_sock_addr *ctx, __u32 steer) { return park6(ctx); }
static __always_inline __u16 lo6_real_be(struct bpf_sock *sk, __u16 port_be, __u32 proto) { return 0; }
static __always_inline int is_lo6_server(struct bpf_sock *sk) { return 0; }
static __always_inline void show_lo6_port(struct bpf_sock_addr *ctx) {}
static __always_inline void show_any6(struct bpf_sock_addr *ctx) {}
#endif

#endif
