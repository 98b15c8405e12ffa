/* Socket hooks that give each vhost its own address.
 *
 * Attached once, with BPF_F_ALLOW_MULTI, to vaddr's parent cgroup; each vhost
 * is a child cgroup whose id keys the `vhosts` map.  Sockets really are bound
 * to the vhost's address, so peers see the vIP because it is the packet's
 * true source.  What the kernel cannot express that way has its own file:
 * 127.0.0.1 inside a vhost (loopback.h), a port space of its own (remap.h,
 * steer.h, udp_ports.h, groups.h).
 *
 * Compiled by bcc at `vaddr` runtime set-up; vaddr.h is shared with Python. */
#include "lib.h"
#include "loopback.h"
#ifdef VADDR_UDP_PORTS
#include "groups.h"
#endif
#ifdef VADDR_STEER
#include "steer.h"
#endif
#ifdef VADDR_UDP_PORTS
#include "udp_ports.h"
#endif
#include "remap.h"

/* Binding an address that another vhost owns fails as on a host that lacks it. */
static __always_inline int check_owner(const struct addr_key *key)
{
	u64 owner = owner_of(key);

	if (owner && owner != bpf_get_current_cgroup_id())
		return refuse(ERR_ADDRNOTAVAIL);
	if (is_v4_mapped(key->ip6) && is_foreign_loopback(key->ip6[3]))
		return refuse(ERR_ADDRNOTAVAIL);
	return SYS_PROCEED;
}

int vaddr_bind4(struct bpf_sock_addr *ctx)
{
	struct vhost *vh = current_vhost();
	struct addr_key key;
	__u32 ip4;

	if (!vh)
		return SYS_PROCEED;
	ip4 = ctx->user_ip4;
	if (ip4 == 0) {
		/* Port 0 too: a client that binds before it connects (dig, Java
		 * clients) must leave from the vIP, and connect4 cannot change
		 * the source of a socket that already has its port. */
		if (vh->flags & VHOST_HAS_V4) {
			ctx->user_ip4 = vh->ip4;
			return remap_port(ctx, vh, STEER_VIP4 | STEER_LO4, vh->ip4);
		}
		if (ctx->user_port == 0)
			return SYS_PROCEED;  /* an IPv4 client in an IPv6-only vhost */
		if (has_private_loopback(vh)) {
			ctx->user_ip4 = vh->lo4;
			return remap_port(ctx, vh, STEER_LO4, vh->lo4);
		}
		/* No IPv4 here: park the listener where nothing reaches it. */
		ctx->user_ip4 = bpf_htonl(LOCALHOST4);
		ctx->user_port = 0;
		return SYS_PROCEED;
	}
	if (is_localhost4(ip4) && has_private_loopback(vh)) {
		ctx->user_ip4 = vh->lo4;
		return remap_port(ctx, vh, STEER_LO4, vh->lo4);
	}
#ifdef VADDR_MCAST
	if (is_multicast4(ip4))
		return mc_bind(ctx, vh, ip4, 0);
#endif
	build_v4_mapped(&key, ip4);
	if (check_owner(&key) != SYS_PROCEED)
		return SYS_REJECT;
	return remap_port(ctx, vh, steer_of4(vh, ip4), ip4);
}

static __always_inline int bind6_wildcard(struct bpf_sock_addr *ctx, const struct vhost *vh, int v6only)
{
	__u32 steer;

	/* Dual-stack [::] listens on the IPv4 vIP and steer.h adds the IPv6
	 * one; a dual-stack client (port 0) in a vhost with IPv6 leaves from
	 * the IPv6 vIP, since it was made for an IPv6 destination. */
	if (!v6only && (vh->flags & VHOST_HAS_V4) && (ctx->user_port != 0 || !(vh->flags & VHOST_HAS_V6))) {
#ifdef VADDR_UDP_PORTS
		/* UDP has no steering: a socket on the IPv4 vIP could not answer
		 * IPv6 peers, so it stays on the wildcard at a real port that
		 * udp_ports.h translates for both vIPs only (file_wild). */
		if (ctx->protocol == IPPROTO_UDP && (vh->flags & VHOST_HAS_V6)) {
			struct addr_key any = {};

			return remap(ctx, vh, STEER_VIP4 | STEER_VIP6, 0, any.ip6);
		}
#endif
		set_user_mapped(ctx, vh->ip4);
		steer = STEER_VIP4 | STEER_LO4 | ((vh->flags & VHOST_HAS_V6) ? STEER_VIP6 : 0);
		return remap_port(ctx, vh, steer, vh->ip4);
	}
	if (vh->flags & VHOST_HAS_V6) {
#if defined(VADDR_STEER) && defined(VADDR_UDP_PORTS)
		/* An IPV6_V6ONLY [::]:P listener (nginx's `listen [::]:80`)
		 * answers ::1 too: parked there (lo6.h), its vIP steered to it. */
		struct sock_facts *facts = facts_of(ctx->sk, 0);

		if (v6only && ctx->type == SOCK_STREAM && ctx->user_port && has_private_loopback(vh) &&
		    !(facts && facts->reuseport))
			return park_lo6(ctx, STEER_ANY6 | STEER_VIP6);
#endif
		set_user_ip6(ctx, vh->ip6);
		return remap_port6(ctx, vh);
	}
	if (ctx->user_port == 0)
		return SYS_PROCEED;  /* an IPv6 client in an IPv4-only vhost */
	/* IPV6_V6ONLY [::]:P without IPv6: on a host like that it answers ::1 only. */
	return has_private_loopback(vh) ? park_lo6(ctx, STEER_ANY6) : park6(ctx);
}

int vaddr_bind6(struct bpf_sock_addr *ctx)
{
	struct vhost *vh = current_vhost();
	struct sock_facts *facts;
	struct addr_key key;
	__u32 ip6[4];
	int v6only;

	if (!vh)
		return SYS_PROCEED;
	copy6(ip6, ctx->user_ip6);
	facts = facts_of(ctx->sk, 0);
	v6only = facts && facts->v6only;
	if (is_any6(ip6))
		return bind6_wildcard(ctx, vh, v6only);
	/* ::ffff:0.0.0.0 is IPv4's wildcard, not an address of the vhost's. */
	if (is_v4_mapped(ip6) && ip6[3] == 0) {
		if (!(vh->flags & VHOST_HAS_V4))
			return refuse(ERR_ADDRNOTAVAIL);
		set_user_mapped(ctx, vh->ip4);
		return remap_port(ctx, vh, STEER_VIP4 | STEER_LO4, vh->ip4);
	}
	if (is_localhost6(ip6) && has_private_loopback(vh)) {
		if (v6only)  /* ::1 is carried over lo4 (loopback.h), which it cannot reach */
			return is_loopback6(ip6) ? park_lo6(ctx, 0) : park6(ctx);
		set_user_mapped(ctx, vh->lo4);
		return remap_port(ctx, vh, STEER_LO4, vh->lo4);
	}
#ifdef VADDR_MCAST
	if (is_v4_mapped(ip6) && is_multicast4(ip6[3]))
		return mc_bind(ctx, vh, ip6[3], 1);
#endif
	copy6(key.ip6, ip6);
	if (check_owner(&key) != SYS_PROCEED)
		return SYS_REJECT;
	if (is_v4_mapped(ip6))
		return remap_port(ctx, vh, steer_of4(vh, ip6[3]), ip6[3]);
	if ((vh->flags & VHOST_HAS_V6) && ip6[0] == vh->ip6[0] && ip6[1] == vh->ip6[1] &&
	    ip6[2] == vh->ip6[2] && ip6[3] == vh->ip6[3])
		return remap_port6(ctx, vh);
	return SYS_PROCEED;
}

static __always_inline int is_udp(struct bpf_sock_addr *ctx)
{
	return ctx->protocol == IPPROTO_UDP;
}

static __always_inline int is_tcp_or_udp(struct bpf_sock_addr *ctx)
{
	return ctx->protocol == IPPROTO_TCP || ctx->protocol == IPPROTO_UDP;
}

/* A connection from inside the vhost to 127.0.0.1:port (or ::1): sets the
 * destination, and the source when the program chose none, to the vhost's
 * own loopback.  Returns the address to connect to, 0 to refuse. */
static __always_inline __u32 localhost_connect(struct bpf_sock_addr *ctx, const struct vhost *vh)
{
	return localhost_target(ctx, vh, ctx->user_port, is_udp(ctx));
}

/* A socket bound to its 127.0.0.1 cannot reach another host, as on a real
 * one (without this it would reach it as "the machine", past links). */
static __always_inline int loopback_bound_to_lab(struct bpf_sock_addr *ctx, const struct vhost *vh, __u32 dst4)
{
	return ctx->sk && vh->lo4 && ctx->sk->src_ip4 == vh->lo4 && dst4 != vh->lo4 &&
	       !((vh->flags & VHOST_HAS_V4) && dst4 == vh->ip4);
}

#define DST_OTHER 0   /* the internet, the machine: the kernel's source */
#define DST_LAB 1     /* a vhost or a lab subnet: the vIP as source */
#define DST_REFUSE 2  /* another vhost's loopback, or from our own */

static __always_inline int classify_dst4(struct bpf_sock_addr *ctx, const struct vhost *vh)
{
	struct addr_key dst;

	if (is_foreign_loopback(ctx->user_ip4))
		return DST_REFUSE;
	build_v4_mapped(&dst, ctx->user_ip4);
	if (!is_lab(&dst))
		return DST_OTHER;
	return loopback_bound_to_lab(ctx, vh, ctx->user_ip4) ? DST_REFUSE : DST_LAB;
}

int vaddr_connect4(struct bpf_sock_addr *ctx)
{
	struct vhost *vh = current_vhost();
	struct sockaddr_in src = {};
	__u32 target;
	int kind;

	if (!vh || !is_tcp_or_udp(ctx))
		return SYS_PROCEED;
	if (means_this_host4(ctx, vh, ctx->user_ip4))
		ctx->user_ip4 = bpf_htonl(LOCALHOST4);
	if (is_multicast4(ctx->user_ip4)) {
		/* From the vIP, which sends it out of lo (mcast.h). */
		if (!(vh->flags & VHOST_HAS_V4))
			return refuse(ERR_NETUNREACH);
		src.sin_addr.s_addr = vh->ip4;
	} else if (is_localhost4(ctx->user_ip4) && has_private_loopback(vh)) {
		if (is_udp(ctx) && answers_machine_client(ctx, ctx->sk, ctx->user_port, 0))
			return SYS_PROCEED;
		target = localhost_connect(ctx, vh);
		if (!target)
			return refuse(ERR_CONNREFUSED);
		ctx->user_ip4 = target;
		src.sin_addr.s_addr = vh->lo4;
	} else {
		kind = classify_dst4(ctx, vh);
		if (kind != DST_LAB)
			return kind == DST_REFUSE ? refuse(ERR_NETUNREACH) : SYS_PROCEED;
		/* A vIP with nothing of its own on the port: the machine's
		 * wildcard socket must not answer for it. */
		if (answering(ctx, vh, ctx->user_ip4, ctx->user_port, is_udp(ctx)) == ANSWER_MACHINE)
			return refuse(ERR_CONNREFUSED);
		if (!(vh->flags & VHOST_HAS_V4))
			return SYS_PROCEED;
		src.sin_addr.s_addr = vh->ip4;
	}
	if (!is_unbound(ctx->sk))
		return SYS_PROCEED;
	src.sin_family = AF_INET;
	/* Port 0: the port is chosen at connect, like IP_BIND_ADDRESS_NO_PORT. */
	bpf_bind(ctx, (struct sockaddr *)&src, sizeof(src));
	return SYS_PROCEED;
}

int vaddr_connect6(struct bpf_sock_addr *ctx)
{
	struct vhost *vh = current_vhost();
	struct sockaddr_in6 src = {};
	struct sock_facts *facts;
	struct addr_key dst;
	__u32 target;

	if (!vh || !is_tcp_or_udp(ctx))
		return SYS_PROCEED;
	copy6(dst.ip6, ctx->user_ip6);
	if (is_any6(dst.ip6) && has_private_loopback(vh)) {
		this_host6(dst.ip6);
		set_user_ip6(ctx, dst.ip6);
	} else if (is_v4_mapped(dst.ip6) && means_this_host4(ctx, vh, dst.ip6[3])) {
		dst.ip6[3] = bpf_htonl(LOCALHOST4);
	}
	src.sin6_family = AF_INET6;
	if (is_localhost6(dst.ip6) && has_private_loopback(vh)) {
		target = is_loopback6(dst.ip6) && ctx->sk ? lo6_real_be(ctx->sk, ctx->user_port, ctx->protocol) : 0;
		if (target) {
			ctx->user_port = target;  /* a parked IPV6_V6ONLY server of its own (lo6.h) */
			return SYS_PROCEED;
		}
		if (is_udp(ctx) && is_loopback6(dst.ip6) && ctx->sk && own_udp6_at_vip(vh, ctx->user_port)) {
			set_user_ip6(ctx, vh->ip6);
			ring_add(ctx->sk, RING_VIA_VIP, ctx->user_port);
			copy6(src.sin6_addr.in6_u.u6_addr32, vh->ip6);
			goto bind;
		}
		/* Else ::1 is carried over lo4, which an IPV6_V6ONLY socket
		 * cannot reach: it finds no IPv6 loopback listener, as on a
		 * host whose servers listen on 127.0.0.1 only. */
		facts = facts_of(ctx->sk, 0);
		if (facts && facts->v6only)
			return refuse(ERR_CONNREFUSED);
		target = localhost_connect(ctx, vh);
		if (!target)
			return refuse(ERR_CONNREFUSED);
		set_user_mapped(ctx, target);
		src.sin6_addr.in6_u.u6_addr32[2] = bpf_htonl(0xffff);
		src.sin6_addr.in6_u.u6_addr32[3] = vh->lo4;
	} else if (is_v4_mapped(dst.ip6)) {
		if (is_foreign_loopback(dst.ip6[3]))
			return refuse(ERR_NETUNREACH);
		if (!is_lab(&dst))
			return SYS_PROCEED;
		if (answering(ctx, vh, dst.ip6[3], ctx->user_port, is_udp(ctx)) == ANSWER_MACHINE)
			return refuse(ERR_CONNREFUSED);
		/* A v4-mapped destination takes the v4 path without connect4
		 * running, so this program binds the mapped IPv4 vIP itself. */
		if (!(vh->flags & VHOST_HAS_V4))
			return SYS_PROCEED;
		src.sin6_addr.in6_u.u6_addr32[2] = bpf_htonl(0xffff);
		src.sin6_addr.in6_u.u6_addr32[3] = vh->ip4;
	} else {
		if (!is_lab(&dst) || !(vh->flags & VHOST_HAS_V6))
			return SYS_PROCEED;
		copy6(src.sin6_addr.in6_u.u6_addr32, vh->ip6);
	}
bind:
	if (!is_unbound(ctx->sk))
		return SYS_PROCEED;
	bpf_bind(ctx, (struct sockaddr *)&src, sizeof(src));
	return SYS_PROCEED;
}

/* IP_PKTINFO and IPV6_PKTINFO may name a source address: only the vhost's
 * own, or a UDP server could speak as another vhost. */
static __always_inline int foreign_source(const struct addr_key *src)
{
	u64 owner;

	if (is_any6(src->ip6))
		return 0;
	owner = owner_of(src);
	if (owner && owner != bpf_get_current_cgroup_id())
		return 1;
	return is_v4_mapped(src->ip6) && is_foreign_loopback(src->ip6[3]);
}

/* Unconnected UDP: the hooks run only when the caller names a destination
 * (or passes control messages). */
int vaddr_sendmsg4(struct bpf_sock_addr *ctx)
{
	struct vhost *vh = current_vhost();
	struct sock_facts *facts;
	struct addr_key src;
	__u32 target;
	int kind;

	if (!vh || !ctx->sk)
		return SYS_PROCEED;
	mark_autobind(ctx->sk);
	build_v4_mapped(&src, ctx->msg_src_ip4);
	if (foreign_source(&src))
		return refuse(ERR_ADDRNOTAVAIL);
	if (means_this_host4(ctx, vh, ctx->user_ip4))
		ctx->user_ip4 = bpf_htonl(LOCALHOST4);
	if (is_multicast4(ctx->user_ip4)) {
		/* A group: from the vIP, so out of lo (mcast.h), never out of
		 * the machine's route for 224/4. */
		if (!(vh->flags & VHOST_HAS_V4))
			return refuse(ERR_NETUNREACH);
		if (!ctx->sk->src_ip4 && !ctx->msg_src_ip4)
			ctx->msg_src_ip4 = vh->ip4;
		return SYS_PROCEED;
	}
	if (is_localhost4(ctx->user_ip4) && has_private_loopback(vh)) {
		if (answers_machine_client(ctx, ctx->sk, ctx->user_port, 0) ||
		    (ring_has(ctx->sk, RING_HEARD, ctx->user_port) &&
		     answering(ctx, vh, vh->lo4, ctx->user_port, 1) != ANSWER_OURS)) {
			facts = facts_of(ctx->sk, 0);
			if (facts && facts->wild4 && !ctx->sk->src_ip4 && !ctx->msg_src_ip4)
				ctx->msg_src_ip4 = facts->wild4;  /* the vIP it asked, not 127.0.0.1 */
			return SYS_PROCEED;
		}
		target = localhost_target(ctx, vh, ctx->user_port, 1);
		if (!target)
			return refuse(ERR_CONNREFUSED);
		if (target == vh->ip4)
			ring_add(ctx->sk, RING_VIA_VIP, ctx->user_port);
		ctx->user_ip4 = target;
		if (!ctx->sk->src_ip4 && !ctx->msg_src_ip4)
			ctx->msg_src_ip4 = vh->lo4;
		return SYS_PROCEED;
	}
	kind = classify_dst4(ctx, vh);
	if (kind != DST_LAB)
		return kind == DST_REFUSE ? refuse(ERR_NETUNREACH) : SYS_PROCEED;
	if ((vh->flags & VHOST_HAS_V4) && !ctx->sk->src_ip4 && !ctx->msg_src_ip4)
		ctx->msg_src_ip4 = vh->ip4;
	return SYS_PROCEED;
}

int vaddr_sendmsg6(struct bpf_sock_addr *ctx)
{
	struct vhost *vh = current_vhost();
	struct sock_facts *facts;
	struct addr_key dst, src;
	__u16 target;

	if (!vh || !ctx->sk)
		return SYS_PROCEED;
	mark_autobind(ctx->sk);
	copy6(src.ip6, ctx->msg_src_ip6);
	if (foreign_source(&src))
		return refuse(ERR_ADDRNOTAVAIL);
	copy6(dst.ip6, ctx->user_ip6);
	if (is_any6(dst.ip6) && has_private_loopback(vh)) {
		this_host6(dst.ip6);
		set_user_ip6(ctx, dst.ip6);
	}
	/* ::1 reaches the vhost's parked IPV6_V6ONLY servers (lo6.h); a
	 * sendmsg6 destination cannot be rewritten to a v4-mapped one
	 * (ENOTSUPP), so it has no lo4 path here: refused, not the machine's. */
	if (is_loopback6(dst.ip6) && has_private_loopback(vh)) {
		if (is_lo6_server(ctx->sk))
			return SYS_PROCEED;  /* a parked ::1 server answers its clients there */
		target = lo6_real_be(ctx->sk, ctx->user_port, ctx->protocol);
		if (target) {
			ctx->user_port = target;
			return SYS_PROCEED;
		}
		if (!answers_machine_client(ctx, ctx->sk, ctx->user_port, 1) &&
		    !ring_has(ctx->sk, RING_HEARD, ctx->user_port)) {
			if (!own_udp6_at_vip(vh, ctx->user_port))
				return refuse(ERR_NETUNREACH);
			copy6(ctx->user_ip6, vh->ip6);
			if (is_any6(src.ip6) && is_any6((const __u32 *)ctx->sk->src_ip6))
				copy6(ctx->msg_src_ip6, vh->ip6);
			ring_add(ctx->sk, RING_VIA_VIP, ctx->user_port);
			return SYS_PROCEED;
		}
		facts = facts_of(ctx->sk, 0);
		if (facts && facts->wild4 && is_any6(src.ip6))
			copy6(ctx->msg_src_ip6, facts->wild6);
		return SYS_PROCEED;
	}
	if (!(vh->flags & VHOST_HAS_V6) || !is_any6((const __u32 *)ctx->sk->src_ip6))
		return SYS_PROCEED;
	if (!is_lab(&dst) || !is_any6(src.ip6))
		return SYS_PROCEED;
	copy6(ctx->msg_src_ip6, vh->ip6);
	return SYS_PROCEED;
}

/* Remember IPV6_V6ONLY and SO_REUSEPORT for the bind hooks, which cannot ask;
 * keep a vhost's multicast on lo (mcast.h). */
int vaddr_setsockopt(struct bpf_sockopt *ctx)
{
	struct sock_facts *facts;
	int *optval = ctx->optval;
	int v6only = ctx->level == SOL_IPV6 && ctx->optname == IPV6_V6ONLY;
	int reuseport = ctx->level == SOL_SOCKET && ctx->optname == SO_REUSEPORT;

#ifdef VADDR_MCAST
	if (!v6only && !reuseport) {
		struct vhost *vh = current_vhost();

		return vh ? mc_setsockopt(ctx, vh) : SYS_PROCEED;
	}
#else
	if (!v6only && !reuseport)
		return SYS_PROCEED;
#endif
	if ((void *)(optval + 1) > ctx->optval_end)
		return SYS_PROCEED;
	facts = sock_facts.sk_storage_get(ctx->sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (!facts)
		return SYS_PROCEED;
	if (v6only)
		facts->v6only = *optval != 0;
	else
		facts->reuseport = *optval != 0;
	return SYS_PROCEED;
}
