/* Maps, socket facts and small helpers shared by the socket hooks
 * (sock_addr.c), the loopback rewriting (loopback.h) and the steering
 * programs (steer.h), which bcc compiles as one object. */
#ifndef VADDR_LIB_H
#define VADDR_LIB_H

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
#ifndef SO_REUSEPORT
#define SO_REUSEPORT 15
#endif
#define ERR_ADDRINUSE 98
#define ERR_ADDRNOTAVAIL 99
#define ERR_NETUNREACH 101
#define ERR_NOBUFS 105
#define ERR_CONNREFUSED 111

BPF_TABLE_PINNED("hash", u64, struct vhost, vhosts, 16384, VADDR_PIN_DIR "/vhosts");
BPF_TABLE_PINNED("hash", struct addr_key, u64, owners, 32768, VADDR_PIN_DIR "/owners");
BPF_TABLE_PINNED("hash", struct addr_key, u64, loopbacks, 16384, VADDR_PIN_DIR "/loopbacks");
BPF_TABLE_PINNED("lpm_trie", struct lab_prefix, u8, lab_nets, 1024, VADDR_PIN_DIR "/lab_nets",
		 BPF_F_NO_PREALLOC);

/* Which addresses a remapped listener answers on (steer.h). */
#define STEER_VIP4 1
#define STEER_LO4 2
#define STEER_VIP6 4
#define STEER_LO6 8   /* not steered: a parked ::1 socket (lo6.h) */
#define STEER_ANY6 16 /* with STEER_LO6: it asked for [::] */

/* Per-socket facts, learned where the kernel shows them and read where it
 * does not (bind6 cannot ask for IPV6_V6ONLY: bpf_getsockopt returns
 * -EINVAL for it). */
#define PORT_RING 4  /* a power of two */
#define MC_PER_SOCK 8  /* IPv4 groups one socket joins (mcast.h); a power of two */
#define MC_SLOTS 64    /* vhosts one group reaches */

struct sock_facts {
	__u32 v6only;
	__u32 reuseport;
	__u32 vport;   /* the port the program asked for, host order; 0: none */
	__u32 steer;   /* STEER_* */
	__u64 cgid;    /* the vhost that bound it */
	__u32 real;    /* UDP, groups: the port it holds, host order */
	__u32 addr[4]; /* and the address, IPv4 as v4-mapped */
	__u32 group;   /* GROUP_* (groups.h) */
	__u32 wild4;   /* UDP on [::] (udp_ports.h): the vhost's vIPs */
	__u32 wild6[4];
	/* UDP, loopback.h: rings of PORT_RING ports, network order */
	__u16 ring[2][PORT_RING];  /* RING_HEARD, RING_VIA_VIP */
	__u32 ring_next[2];
	/* mcast.h: the IPv4 groups it joined, how often, and as which vIP;
	 * the group it bound, if any, its port, and the port it holds */
	__u32 mc[MC_PER_SOCK];
	__u8 mc_joins[MC_PER_SOCK];
	__u32 mc_ip4;
	__u32 mc_group;
	__u16 mc_vport;
	__u16 mc_real;
};
BPF_SK_STORAGE(sock_facts, struct sock_facts);

/* A few ports a socket remembers (sock_facts' rings, loopback.h says which):
 * the oldest makes room.  `which` is a constant at every call. */
#define RING_HEARD 0    /* machine clients a server heard from on 127.0.0.1 or ::1 */
#define RING_VIA_VIP 1  /* loopback ports a client asked that its vIP answered */

/* Where port_be is in the ring: its index, or -1. */
static __always_inline int ring_find(const struct sock_facts *facts, int which, __u16 port_be)
{
	int i;

#pragma unroll
	for (i = 0; i < PORT_RING; i++)
		if (facts->ring[which][i] == port_be)
			return i;
	return -1;
}

static __always_inline void ring_add(struct bpf_sock *sk, int which, __u16 port_be)
{
	struct sock_facts *facts = sock_facts.sk_storage_get(sk, 0, BPF_SK_STORAGE_GET_F_CREATE);

	if (!facts || ring_find(facts, which, port_be) >= 0)
		return;
	facts->ring[which][facts->ring_next[which] & (PORT_RING - 1)] = port_be;
	facts->ring_next[which]++;
}

static __always_inline int ring_has(struct bpf_sock *sk, int which, __u16 port_be)
{
	struct sock_facts *facts = sock_facts.sk_storage_get(sk, 0, 0);

	return facts && port_be && ring_find(facts, which, port_be) >= 0;
}

/* A port is held once in a ring (ring_add), so one slot to clear. */
static __always_inline void ring_drop(struct bpf_sock *sk, int which, __u16 port_be)
{
	struct sock_facts *facts = sock_facts.sk_storage_get(sk, 0, 0);
	int i;

	if (facts && (i = ring_find(facts, which, port_be)) >= 0)
		facts->ring[which][i & (PORT_RING - 1)] = 0;
}

/* Datagrams to a vhost's address that only a socket not of that vhost, bound
 * to the wildcard, would receive: found by the tc program (udp_ports.h), which
 * sees the packet, and refused by the sk_lookup program (steer.h), which alone
 * can make the kernel answer "port unreachable".  Last verdict per flow. */
struct refusal_key {
	struct addr_key src, dst;  /* IPv4 as v4-mapped */
	__u16 sport;               /* network order */
	__u16 dport;               /* host order */
};

#ifdef VADDR_UDP_PORTS
BPF_TABLE_PINNED("hash", struct port_key, __u32, udp_ports, 65536, VADDR_PIN_DIR "/udp_ports");

BPF_TABLE("lru_hash", struct refusal_key, u8, refusals, 4096);
#endif

#ifdef VADDR_HAVE_SET_RETVAL
/* bpf_set_retval (5.18+) lets a refused call fail as a real host's would. */
static long (*vaddr_set_retval)(int retval) = (void *)187;
#endif

static __always_inline int refuse(int err)
{
#ifdef VADDR_HAVE_SET_RETVAL
	vaddr_set_retval(-err);
#endif
	return SYS_REJECT;
}

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

static __always_inline int is_loopback6(const __u32 *ip6)
{
	return (ip6[0] | ip6[1] | ip6[2]) == 0 && ip6[3] == bpf_htonl(1);
}

static __always_inline int is_multicast4(__u32 ip4_be)
{
	return (bpf_ntohl(ip4_be) & 0xf0000000) == 0xe0000000;
}

static __always_inline void build_v4_mapped(struct addr_key *key, __u32 ip4)
{
	key->ip6[0] = 0;
	key->ip6[1] = 0;
	key->ip6[2] = bpf_htonl(0xffff);
	key->ip6[3] = ip4;
}

static __always_inline void copy6(__u32 *dst, const __u32 *src)
{
	dst[0] = src[0];
	dst[1] = src[1];
	dst[2] = src[2];
	dst[3] = src[3];
}

static __always_inline u64 owner_of(const struct addr_key *key)
{
	u64 *cgid = owners.lookup((struct addr_key *)key);
	return cgid ? *cgid : 0;
}

static __always_inline u64 loopback_owner(__u32 ip4)
{
	struct addr_key key;
	u64 *cgid;

	build_v4_mapped(&key, ip4);
	cgid = loopbacks.lookup(&key);
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

/* A connect on a socket with no chosen source; bpf_bind fails with EINVAL on
 * one already bound, UDP autobound by an earlier sendto included. */
static __always_inline int is_unbound(struct bpf_sock *sk)
{
	return sk && sk->src_port == 0 && sk->src_ip4 == 0 && is_any6((const __u32 *)sk->src_ip6);
}

static __always_inline struct sock_facts *facts_of(struct bpf_sock *sk, int create)
{
	if (!sk)
		return NULL;
	return sock_facts.sk_storage_get(sk, 0, create ? BPF_SK_STORAGE_GET_F_CREATE : 0);
}

/* Rewriting a bind6 or connect6 address. */
static __always_inline void set_user_ip6(struct bpf_sock_addr *ctx, const __u32 *ip6)
{
	ctx->user_ip6[0] = ip6[0];
	ctx->user_ip6[1] = ip6[1];
	ctx->user_ip6[2] = ip6[2];
	ctx->user_ip6[3] = ip6[3];
}

static __always_inline void set_user_mapped(struct bpf_sock_addr *ctx, __u32 ip4)
{
	ctx->user_ip6[0] = 0;
	ctx->user_ip6[1] = 0;
	ctx->user_ip6[2] = bpf_htonl(0xffff);
	ctx->user_ip6[3] = ip4;
}

/* IPV6_V6ONLY [::] in a vhost without IPv6, as daemons open next to their
 * IPv4 socket: park it on [::1] at a free port so it starts and nothing
 * reaches it, as on a host with no IPv6 address.  (A v4-mapped address would
 * fail with EINVAL on a V6ONLY socket.) */
static __always_inline int park6(struct bpf_sock_addr *ctx)
{
	ctx->user_ip6[0] = 0;
	ctx->user_ip6[1] = 0;
	ctx->user_ip6[2] = 0;
	ctx->user_ip6[3] = bpf_htonl(1);
	ctx->user_port = 0;
	return SYS_PROCEED;
}

#endif
