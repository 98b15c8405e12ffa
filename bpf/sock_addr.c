/* Socket hooks that give each vhost its own address.
 *
 * Attached once, with BPF_F_ALLOW_MULTI, to vaddr's parent cgroup; each vhost
 * is a child cgroup whose id keys the `vhosts` map.  Sockets really are bound
 * to the vhost's address, so getsockname, getpeername, accept and recvfrom need
 * no rewriting: peers see the vIP because it is the packet's true source.
 *
 * Compiled by bcc at `vaddr` runtime set-up; vaddr.h is shared with Python. */
#include <uapi/linux/bpf.h>
#include <linux/in.h>
#include <linux/in6.h>
#include <linux/socket.h>
#include "vaddr.h"

#define SYS_PROCEED 1
#define SYS_REJECT 0

#ifndef SOL_IPV6
#define SOL_IPV6 41
#endif
#ifndef IPV6_V6ONLY
#define IPV6_V6ONLY 26
#endif
#ifndef EADDRNOTAVAIL
#define EADDRNOTAVAIL 99
#endif

BPF_TABLE_PINNED("hash", u64, struct vhost, vhosts, 16384, VADDR_PIN_DIR "/vhosts");
BPF_TABLE_PINNED("hash", struct addr_key, u64, owners, 32768, VADDR_PIN_DIR "/owners");
BPF_TABLE_PINNED("lpm_trie", struct lab_prefix, u8, lab_nets, 1024, VADDR_PIN_DIR "/lab_nets",
		 BPF_F_NO_PREALLOC);
BPF_SK_STORAGE(sock_facts, struct sock_facts);

#ifdef VADDR_HAVE_SET_RETVAL
/* bpf_set_retval (5.18+) lets a refused bind fail as a real host's would. */
static long (*vaddr_set_retval)(int retval) = (void *)187;
#endif

static __always_inline struct vhost *current_vhost(void)
{
	u64 cgid = bpf_get_current_cgroup_id();
	return vhosts.lookup(&cgid);
}

static __always_inline int is_v4_mapped(const __u32 *ip6)
{
	return ip6[0] == 0 && ip6[1] == 0 && ip6[2] == bpf_htonl(0xffff);
}

static __always_inline int is_any6(const __u32 *ip6)
{
	return (ip6[0] | ip6[1] | ip6[2] | ip6[3]) == 0;
}

static __always_inline void build_v4_mapped(struct addr_key *key, __u32 ip4)
{
	key->ip6[0] = 0;
	key->ip6[1] = 0;
	key->ip6[2] = bpf_htonl(0xffff);
	key->ip6[3] = ip4;
}

static __always_inline u64 owner_of(const struct addr_key *key)
{
	u64 *cgid = owners.lookup((struct addr_key *)key);
	return cgid ? *cgid : 0;
}

/* A destination is "lab" when a vhost owns it or it lies in a lab prefix;
 * only then does the source become the vIP.  Everything else (the internet,
 * the host's interfaces, loopback) keeps the kernel's choice. */
static __always_inline int is_lab(const struct addr_key *key)
{
	struct lab_prefix pfx = {.prefixlen = 128};

	if (owner_of(key))
		return 1;
	__builtin_memcpy(pfx.ip6, key->ip6, sizeof(pfx.ip6));
	return lab_nets.lookup(&pfx) != NULL;
}

static __always_inline int refuse_bind(void)
{
#ifdef VADDR_HAVE_SET_RETVAL
	vaddr_set_retval(-EADDRNOTAVAIL);
#endif
	return SYS_REJECT;
}

/* Binding an address that another vhost owns fails as on a host that lacks it. */
static __always_inline int check_owner(const struct addr_key *key)
{
	u64 owner = owner_of(key);

	if (owner && owner != bpf_get_current_cgroup_id())
		return refuse_bind();
	return SYS_PROCEED;
}

/* A connect on a socket with no chosen source; bpf_bind fails with EINVAL on
 * one already bound, UDP autobound by an earlier sendto included. */
static __always_inline int is_unbound(struct bpf_sock *sk)
{
	return sk && sk->src_port == 0 && sk->src_ip4 == 0 && is_any6((const __u32 *)sk->src_ip6);
}

int vaddr_bind4(struct bpf_sock_addr *ctx)
{
	struct vhost *vh = current_vhost();
	struct addr_key key;

	if (!vh)
		return SYS_PROCEED;
	if (ctx->user_ip4 == 0) {
		/* Port 0 too: a client that binds before it connects (dig, Java
		 * clients) must leave from the vIP, and connect4 cannot change
		 * the source of a socket that already has its port. */
		if (vh->flags & VHOST_HAS_V4) {
			ctx->user_ip4 = vh->ip4;
		} else if (ctx->user_port == 0) {
			return SYS_PROCEED;  /* an IPv4 client in an IPv6-only vhost */
		} else {
			/* No IPv4 here: park the listener where nothing reaches it. */
			ctx->user_ip4 = bpf_htonl(0x7f000001);
			ctx->user_port = 0;
		}
		return SYS_PROCEED;
	}
	build_v4_mapped(&key, ctx->user_ip4);
	return check_owner(&key);
}

int vaddr_bind6(struct bpf_sock_addr *ctx)
{
	struct vhost *vh = current_vhost();
	struct sock_facts *facts;
	struct addr_key key;
	__u32 user_ip6[4];
	int v6only;

	if (!vh)
		return SYS_PROCEED;
	user_ip6[0] = ctx->user_ip6[0];
	user_ip6[1] = ctx->user_ip6[1];
	user_ip6[2] = ctx->user_ip6[2];
	user_ip6[3] = ctx->user_ip6[3];
	if (!is_any6(user_ip6)) {
		__builtin_memcpy(key.ip6, user_ip6, sizeof(key.ip6));
		return check_owner(&key);
	}

	facts = sock_facts.sk_storage_get(ctx->sk, 0, 0);
	v6only = facts && facts->v6only;
	if (!v6only && (vh->flags & VHOST_HAS_V4)) {
		/* Dual-stack [::] takes the IPv4 vIP: most clients speak IPv4. */
		ctx->user_ip6[0] = 0;
		ctx->user_ip6[1] = 0;
		ctx->user_ip6[2] = bpf_htonl(0xffff);
		ctx->user_ip6[3] = vh->ip4;
	} else if (vh->flags & VHOST_HAS_V6) {
		ctx->user_ip6[0] = vh->ip6[0];
		ctx->user_ip6[1] = vh->ip6[1];
		ctx->user_ip6[2] = vh->ip6[2];
		ctx->user_ip6[3] = vh->ip6[3];
	} else if (ctx->user_port == 0) {
		return SYS_PROCEED;  /* an IPv6 client in an IPv4-only vhost */
	} else {
		/* IPV6_V6ONLY [::] in a vhost without IPv6, as daemons open next to
		 * their IPv4 socket: park it on [::1] at a free port so it starts and
		 * nothing reaches it, as on a host with no IPv6 address.  (A v4-mapped
		 * address would fail with EINVAL on a V6ONLY socket.) */
		ctx->user_ip6[0] = 0;
		ctx->user_ip6[1] = 0;
		ctx->user_ip6[2] = 0;
		ctx->user_ip6[3] = bpf_htonl(1);
		ctx->user_port = 0;
	}
	return SYS_PROCEED;
}

int vaddr_connect4(struct bpf_sock_addr *ctx)
{
	struct vhost *vh = current_vhost();
	struct sockaddr_in src = {};
	struct addr_key dst;

	if (!vh || !(vh->flags & VHOST_HAS_V4))
		return SYS_PROCEED;
	build_v4_mapped(&dst, ctx->user_ip4);
	if (!is_lab(&dst) || !is_unbound(ctx->sk))
		return SYS_PROCEED;
	src.sin_family = AF_INET;
	src.sin_addr.s_addr = vh->ip4;
	/* Port 0: the port is chosen at connect, like IP_BIND_ADDRESS_NO_PORT. */
	bpf_bind(ctx, (struct sockaddr *)&src, sizeof(src));
	return SYS_PROCEED;
}

int vaddr_connect6(struct bpf_sock_addr *ctx)
{
	struct vhost *vh = current_vhost();
	struct sockaddr_in6 src = {};
	struct addr_key dst;

	if (!vh)
		return SYS_PROCEED;
	dst.ip6[0] = ctx->user_ip6[0];
	dst.ip6[1] = ctx->user_ip6[1];
	dst.ip6[2] = ctx->user_ip6[2];
	dst.ip6[3] = ctx->user_ip6[3];
	if (!is_lab(&dst) || !is_unbound(ctx->sk))
		return SYS_PROCEED;
	src.sin6_family = AF_INET6;
	/* A v4-mapped destination takes the v4 path without connect4 running,
	 * so this program binds the mapped IPv4 vIP itself. */
	if (is_v4_mapped(dst.ip6)) {
		if (!(vh->flags & VHOST_HAS_V4))
			return SYS_PROCEED;
		src.sin6_addr.in6_u.u6_addr32[2] = bpf_htonl(0xffff);
		src.sin6_addr.in6_u.u6_addr32[3] = vh->ip4;
	} else {
		if (!(vh->flags & VHOST_HAS_V6))
			return SYS_PROCEED;
		src.sin6_addr.in6_u.u6_addr32[0] = vh->ip6[0];
		src.sin6_addr.in6_u.u6_addr32[1] = vh->ip6[1];
		src.sin6_addr.in6_u.u6_addr32[2] = vh->ip6[2];
		src.sin6_addr.in6_u.u6_addr32[3] = vh->ip6[3];
	}
	bpf_bind(ctx, (struct sockaddr *)&src, sizeof(src));
	return SYS_PROCEED;
}

/* Unconnected UDP: the hooks run only when the caller names a destination. */
int vaddr_sendmsg4(struct bpf_sock_addr *ctx)
{
	struct vhost *vh = current_vhost();
	struct addr_key dst;

	if (!vh || !(vh->flags & VHOST_HAS_V4) || !ctx->sk || ctx->sk->src_ip4)
		return SYS_PROCEED;
	build_v4_mapped(&dst, ctx->user_ip4);
	if (is_lab(&dst))
		ctx->msg_src_ip4 = vh->ip4;
	return SYS_PROCEED;
}

int vaddr_sendmsg6(struct bpf_sock_addr *ctx)
{
	struct vhost *vh = current_vhost();
	struct addr_key dst;

	if (!vh || !(vh->flags & VHOST_HAS_V6) || !ctx->sk)
		return SYS_PROCEED;
	if (!is_any6((const __u32 *)ctx->sk->src_ip6))
		return SYS_PROCEED;
	dst.ip6[0] = ctx->user_ip6[0];
	dst.ip6[1] = ctx->user_ip6[1];
	dst.ip6[2] = ctx->user_ip6[2];
	dst.ip6[3] = ctx->user_ip6[3];
	if (!is_lab(&dst))
		return SYS_PROCEED;
	ctx->msg_src_ip6[0] = vh->ip6[0];
	ctx->msg_src_ip6[1] = vh->ip6[1];
	ctx->msg_src_ip6[2] = vh->ip6[2];
	ctx->msg_src_ip6[3] = vh->ip6[3];
	return SYS_PROCEED;
}

/* Remember IPV6_V6ONLY for bind6, which cannot ask for it. */
int vaddr_setsockopt(struct bpf_sockopt *ctx)
{
	struct sock_facts *facts;
	int *optval = ctx->optval;

	if (ctx->level != SOL_IPV6 || ctx->optname != IPV6_V6ONLY)
		return SYS_PROCEED;
	if ((void *)(optval + 1) > ctx->optval_end)
		return SYS_PROCEED;
	facts = sock_facts.sk_storage_get(ctx->sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (facts)
		facts->v6only = *optval != 0;
	return SYS_PROCEED;
}
