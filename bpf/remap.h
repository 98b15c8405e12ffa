/* A bind's port in a vhost's port space: the bind hooks (sock_addr.c) ask
 * the kernel for another port than the program did, and steer.h,
 * udp_ports.h and groups.h serve the one it asked for. */
#ifndef VADDR_REMAP_H
#define VADDR_REMAP_H

#include "lib.h"
#include "loopback.h"

#ifndef SOCK_STREAM
#define SOCK_STREAM 1
#endif

/* Which of the vhost's addresses an explicitly bound IPv4 address is. */
static __always_inline __u32 steer_of4(const struct vhost *vh, __u32 ip4)
{
	if (ip4 == vh->lo4)
		return STEER_LO4;
	if ((vh->flags & VHOST_HAS_V4) && ip4 == vh->ip4)
		return STEER_VIP4;
	return 0;
}

/* A TCP bind of a port becomes a bind of port 0, its port served by steer.h;
 * a UDP one too, its port served by udp_ports.h; an SO_REUSEPORT one a bind
 * of its group's port (groups.h).  bound: the address the bind will hold,
 * IPv4 as v4-mapped.  probe4: the address a second TCP listener of the vhost
 * on that port would be found at (0: none to check; UDP's second bind is
 * refused when post_bind files it). */
static __always_inline int remap(struct bpf_sock_addr *ctx, const struct vhost *vh, __u32 steer,
				 __u32 probe4, const __u32 *bound)
{
#ifdef VADDR_STEER
	struct sock_facts *facts;
	__u16 port = bpf_ntohs(ctx->user_port), real = 0;
	int tcp = ctx->type == SOCK_STREAM;

	if (!steer || port == 0)
		return SYS_PROCEED;
#ifdef VADDR_UDP_PORTS
	if (!tcp && ctx->protocol != IPPROTO_UDP)
		return SYS_PROCEED;
#else
	if (!tcp)
		return SYS_PROCEED;
#endif
	facts = facts_of(ctx->sk, 1);
	if (!facts)
		return SYS_PROCEED;
#ifdef VADDR_UDP_PORTS
	/* A group's later sockets join it; the kernel judges them as at P. */
	if (facts->reuseport)
		real = group_port(bound, port, ctx->protocol);
	facts->group = facts->reuseport ? GROUP_MEMBER : 0;
#else
	if (facts->reuseport)
		return SYS_PROCEED;  /* groups form at their shared port: keep it */
#endif
	/* The port is the vhost's own: a second listener fails as on a host. */
	if (!real && tcp && probe4 && answering(ctx, vh, probe4, ctx->user_port, 0) == ANSWER_OURS)
		return refuse(ERR_ADDRINUSE);
	facts->vport = port;
	facts->steer = steer;
	facts->cgid = bpf_get_current_cgroup_id();
	ctx->user_port = bpf_htons(real);
#endif
	return SYS_PROCEED;
}

/* A bind of the vhost's IPv4 address ip4 (its vIP or lo4). */
static __always_inline int remap_port(struct bpf_sock_addr *ctx, const struct vhost *vh, __u32 steer, __u32 ip4)
{
	struct addr_key bound;

	build_v4_mapped(&bound, ip4);
	return remap(ctx, vh, steer, ip4, bound.ip6);
}

/* A bind of the vhost's IPv6 address. */
static __always_inline int remap_port6(struct bpf_sock_addr *ctx, const struct vhost *vh)
{
	return remap(ctx, vh, STEER_VIP6, 0, vh->ip6);
}

#endif
