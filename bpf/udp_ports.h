/* UDP ports of a vhost's own.
 *
 * A UDP socket that a vhost binds to port P really holds an ephemeral port R
 * (the bind hooks ask for port 0, as for TCP in steer.h), so the machine's
 * own 0.0.0.0:P and the vhost's :P coexist, whichever came first.  UDP has
 * no listen() for sockops to see and no child socket to answer from P, so
 * instead of steering, the tc program below rewrites ports on lo, which
 * every packet to or from a vhost crosses: P to R on the way in, R to P on
 * the way out (the replies of an unconnected server and of a connected
 * client alike).  The pairs are filed when the bind has chosen R (post_bind)
 * and removed when the socket closes (sock_release).  The loader leaves this
 * out where a hook is missing (sock_release is 5.9+), and UDP binds then keep
 * their port. */
#ifndef VADDR_UDP_PORTS_H
#define VADDR_UDP_PORTS_H

#include "lib.h"
#include <uapi/linux/pkt_cls.h>
#include <uapi/linux/if_ether.h>

/* Offsets after lo's Ethernet header. */
#define IP4_PROTO (ETH_HLEN + 9)
#define IP4_FRAG (ETH_HLEN + 6)
#define IP4_ADDRS (ETH_HLEN + 12)
#define IP6_NEXT (ETH_HLEN + 6)
#define IP6_ADDRS (ETH_HLEN + 8)
#define UDP_CSUM 6

#ifdef VADDR_MCAST
#include "mcast.h"
#endif

/* One address's pair: (addr, P) -> R and (addr, R) -> P.  0 when filed, or
 * already filed for the SO_REUSEPORT group the socket joined (shared);
 * -1 when another socket of the vhost holds (addr, P). */
static __always_inline int file_pair(const __u32 *addr, __u32 vport, __u32 real, int shared)
{
	struct port_key key = {.port = vport, .dir = PORT_TO_REAL};
	__u32 *held;

	copy6(key.addr.ip6, addr);
	if (udp_ports.insert(&key, &real) != 0) {
		held = udp_ports.lookup(&key);
		return shared && held && *held == real ? 0 : -1;
	}
	key.port = real;
	key.dir = PORT_TO_VIRTUAL;
	if (udp_ports.update(&key, &vport) == 0)
		return 0;
	key.port = vport;
	key.dir = PORT_TO_REAL;
	udp_ports.delete(&key);
	return -1;
}

/* The pair goes, if it is still this socket's (group's). */
static __always_inline void unfile_pair(const __u32 *addr, __u32 vport, __u32 real)
{
	struct port_key key = {.port = vport, .dir = PORT_TO_REAL};
	__u32 *held;

	copy6(key.addr.ip6, addr);
	held = udp_ports.lookup(&key);
	if (!held || *held != real)
		return;
	udp_ports.delete(&key);
	key.port = real;
	key.dir = PORT_TO_VIRTUAL;
	udp_ports.delete(&key);
}

/* A dual-stack [::]:P socket in a vhost with both families (sock_addr.c)
 * holds [::]:R, on every address of the machine: pairs for both vIPs, and
 * under the wildcard address a mark that R is held so, by which the tc
 * program turns away datagrams to R at any other address. */
static __always_inline int file_wild(struct sock_facts *facts, int shared)
{
	struct port_key mark = {.port = facts->real, .dir = PORT_TO_VIRTUAL};
	struct addr_key v4;
	__u32 vport = facts->vport;

	build_v4_mapped(&v4, facts->wild4);
	if (file_pair(v4.ip6, vport, facts->real, shared))
		return -1;
	if (file_pair(facts->wild6, vport, facts->real, shared)) {
		if (!shared)
			unfile_pair(v4.ip6, vport, facts->real);
		return -1;
	}
	udp_ports.update(&mark, &vport);
	return 0;
}

static __always_inline void unfile_wild(struct sock_facts *facts)
{
	struct port_key mark = {.port = facts->real, .dir = PORT_TO_VIRTUAL};
	struct addr_key v4;
	__u32 *held;

	build_v4_mapped(&v4, facts->wild4);
	unfile_pair(v4.ip6, facts->vport, facts->real);
	unfile_pair(facts->wild6, facts->vport, facts->real);
	held = udp_ports.lookup(&mark);
	if (held && *held == facts->vport)
		udp_ports.delete(&mark);
}

static __always_inline void note_asked_any(struct sock_facts *facts)
{
	struct port_key mark = {.port = facts->real, .dir = PORT_ASKED_ANY};
	__u32 vport = facts->vport;

	copy6(mark.addr.ip6, facts->addr);
	udp_ports.update(&mark, &vport);
}

/* post_bind: file the socket's pairs, and note them in its facts for
 * sock_release, which cannot read the socket's address or port.  A second
 * socket of the vhost on (address, P) fails as on a host, EADDRINUSE, unless
 * it joined the SO_REUSEPORT group there (groups.h), which shares the pairs. */
static __always_inline int file_udp_port(struct sock_facts *facts)
{
	int shared = facts->group & GROUP_COUNTED, failed;
	struct vhost *vh;

	if (is_any6(facts->addr)) {
		vh = vhosts.lookup(&facts->cgid);
		if (!vh)
			return SYS_PROCEED;
		facts->wild4 = vh->ip4;
		copy6(facts->wild6, vh->ip6);
		failed = file_wild(facts, shared);
	} else {
		failed = file_pair(facts->addr, facts->vport, facts->real, shared);
		if (!failed && (facts->steer & STEER_LO4) && (facts->steer & STEER_VIP4))
			note_asked_any(facts);  /* on the vIP for 0.0.0.0: it answers lo4 too */
	}
	if (!failed)
		return SYS_PROCEED;
	leave_group(facts, IPPROTO_UDP);
	facts->real = 0;  /* no pair of this socket's to remove */
	return refuse(ERR_ADDRINUSE);
}

/* A remapped bind (vport set) got its real port: note it, count the socket
 * in its group, and file a UDP one's pairs. */
static __always_inline int filed_bind(struct bpf_sock *sk, struct port_key *key, __u32 real)
{
	struct sock_facts *facts = sock_facts.sk_storage_get(sk, 0, 0);
	__u32 proto = sk->protocol;

	if (!facts || !facts->vport)
		return SYS_PROCEED;
	facts->real = real;
	copy6(facts->addr, key->addr.ip6);
	if (facts->steer & STEER_LO6)
		return file_lo6(facts, proto);
	if (facts->group & GROUP_MEMBER)
		join_group(facts, proto);
	if (proto != IPPROTO_UDP)
		return SYS_PROCEED;
	return file_udp_port(facts);
}

/* Each reads only its family's fields: the verifier allows no others. */
int vaddr_post_bind4(struct bpf_sock *sk)
{
	struct port_key key = {};
	__u32 ip4 = sk->src_ip4, port = sk->src_port;

	build_v4_mapped(&key.addr, ip4);
	return filed_bind(sk, &key, port);
}

int vaddr_post_bind6(struct bpf_sock *sk)
{
	struct port_key key = {};
	__u32 port = sk->src_port;

	key.addr.ip6[0] = sk->src_ip6[0];
	key.addr.ip6[1] = sk->src_ip6[1];
	key.addr.ip6[2] = sk->src_ip6[2];
	key.addr.ip6[3] = sk->src_ip6[3];
	return filed_bind(sk, &key, port);
}

/* sock_release: a group loses a member; a UDP socket's pairs go with it (a
 * group's with its last one). */
int vaddr_sock_release(struct bpf_sock *sk)
{
	struct sock_facts *facts;
	__u32 proto = sk->protocol;

	facts = sock_facts.sk_storage_get(sk, 0, 0);
#ifdef VADDR_MCAST
	if (facts && facts->mc_ip4)
		mc_release(facts);
#endif
	if (!facts || !facts->real)
		return SYS_PROCEED;
	if (facts->steer & STEER_LO6) {
		unfile_lo6(facts, proto);
		return SYS_PROCEED;
	}
	if (!leave_group(facts, proto) || proto != IPPROTO_UDP)
		return SYS_PROCEED;
	if (is_any6(facts->addr)) {
		unfile_wild(facts);
	} else {
		struct port_key mark = {.port = facts->real, .dir = PORT_ASKED_ANY};

		unfile_pair(facts->addr, facts->vport, facts->real);
		copy6(mark.addr.ip6, facts->addr);
		udp_ports.delete(&mark);
	}
	return SYS_PROCEED;
}

/* One port of a packet: rewritten when (addr, port, dir) is filed; 1 if so. */
static __always_inline int rewrite_port(struct __sk_buff *skb, struct port_key *key, __u16 port_be,
					 __u32 port_off, __u32 csum_off, __u64 csum_flags)
{
	__u32 *to;
	__u16 new_be;

	key->port = bpf_ntohs(port_be);
	to = udp_ports.lookup(key);
	if (!to)
		return 0;
	new_be = bpf_htons(*to);
	bpf_l4_csum_replace(skb, csum_off, port_be, new_be, sizeof(new_be) | csum_flags);
	bpf_skb_store_bytes(skb, port_off, &new_be, sizeof(new_be), 0);
	return 1;
}

/* A datagram to port R at an address that is not the vhost's, where a
 * vhost's dual-stack wildcard socket holds R (file_wild): not its to get. */
static __always_inline int stray(struct port_key *dst, __u16 port_be)
{
	struct port_key mark = {.port = bpf_ntohs(port_be), .dir = PORT_TO_VIRTUAL};

	if (!udp_ports.lookup(&mark))
		return 0;
	dst->port = mark.port;
	dst->dir = PORT_TO_VIRTUAL;
	return udp_ports.lookup(dst) == NULL;
}

/* A datagram to a vhost's address at a port none of its sockets files: a
 * reply to one of its clients, or nothing of its.  The kernel would hand the
 * latter to a socket bound to the wildcard on that port, the machine's or
 * another vhost's client's, so that a client believes it reached the vhost:
 * such a flow is filed in `refusals`, and the sk_lookup program refuses it
 * (the sender gets "port unreachable", as from a host with nothing there). */
static __always_inline void judge_unheard(struct __sk_buff *skb, const struct port_key *src,
					  const struct port_key *dst, __u32 l4, int v4)
{
	struct refusal_key rk = {};
	struct bpf_sock_tuple tuple = {};
	struct bpf_sock *sk;
	__u16 ports[2];
	u64 owner, *lo_owner;
	int foreign;

	owner = owner_of(&dst->addr);
	if (!owner) {
		lo_owner = loopbacks.lookup((struct addr_key *)&dst->addr);
		if (!lo_owner)
			return;
		owner = *lo_owner;
	}
	if (bpf_skb_load_bytes(skb, l4, ports, sizeof(ports)) < 0)  /* as rewritten */
		return;
	if (v4) {
		tuple.ipv4.saddr = src->addr.ip6[3];
		tuple.ipv4.daddr = dst->addr.ip6[3];
		tuple.ipv4.sport = ports[0];
		tuple.ipv4.dport = ports[1];
		sk = bpf_sk_lookup_udp(skb, &tuple, sizeof(tuple.ipv4), BPF_F_CURRENT_NETNS, 0);
	} else {
		copy6(tuple.ipv6.saddr, src->addr.ip6);
		copy6(tuple.ipv6.daddr, dst->addr.ip6);
		tuple.ipv6.sport = ports[0];
		tuple.ipv6.dport = ports[1];
		sk = bpf_sk_lookup_udp(skb, &tuple, sizeof(tuple.ipv6), BPF_F_CURRENT_NETNS, 0);
	}
	if (!sk)
		return;  /* the kernel refuses it itself */
	foreign = 0;
	if (sk->src_ip4 == 0 && is_any6((const __u32 *)sk->src_ip6)) {
		/* A vhost's socket there was bound by the kernel, and noted
		 * (loopback.h's mark_autobind). */
		struct sock_facts *facts = facts_of(sk, 0);

		foreign = !facts || facts->cgid != owner;
	}
	bpf_sk_release(sk);
	copy6(rk.src.ip6, src->addr.ip6);
	copy6(rk.dst.ip6, dst->addr.ip6);
	rk.sport = ports[0];
	rk.dport = bpf_ntohs(ports[1]);
	if (foreign) {
		u8 yes = 1;

		refusals.update(&rk, &yes);
	} else if (refusals.lookup(&rk)) {
		refusals.delete(&rk);  /* a socket of its own came since */
	}
}

/* tc on lo's ingress, before the shaping program (which reads addresses
 * only): TC_ACT_UNSPEC hands every packet on to the next filter. */
int vaddr_udp_ports(struct __sk_buff *skb)
{
	struct port_key src = {}, dst = {};
	__u16 ports[2];
	__u32 l4;
	__u64 csum_flags = 0;
	int filed, v4 = skb->protocol == bpf_htons(ETH_P_IP);

	if (v4) {
		__u8 vihl, proto;
		__u16 frag;
		__u32 addrs[2];

		if (bpf_skb_load_bytes(skb, IP4_PROTO, &proto, 1) < 0 || proto != IPPROTO_UDP)
			return TC_ACT_UNSPEC;
		/* Later fragments carry no UDP header. */
		if (bpf_skb_load_bytes(skb, IP4_FRAG, &frag, 2) < 0 || (bpf_ntohs(frag) & 0x1fff))
			return TC_ACT_UNSPEC;
		if (bpf_skb_load_bytes(skb, ETH_HLEN, &vihl, 1) < 0 ||
		    bpf_skb_load_bytes(skb, IP4_ADDRS, addrs, sizeof(addrs)) < 0)
			return TC_ACT_UNSPEC;
		build_v4_mapped(&src.addr, addrs[0]);
		build_v4_mapped(&dst.addr, addrs[1]);
		l4 = ETH_HLEN + (vihl & 0xf) * 4;
		csum_flags = BPF_F_MARK_MANGLED_0;  /* 0: an IPv4 datagram without a checksum */
	} else if (skb->protocol == bpf_htons(ETH_P_IPV6)) {
		__u8 next;

		if (bpf_skb_load_bytes(skb, IP6_NEXT, &next, 1) < 0 || next != IPPROTO_UDP)
			return TC_ACT_UNSPEC;
		if (bpf_skb_load_bytes(skb, IP6_ADDRS, src.addr.ip6, 16) < 0 ||
		    bpf_skb_load_bytes(skb, IP6_ADDRS + 16, dst.addr.ip6, 16) < 0)
			return TC_ACT_UNSPEC;
		l4 = ETH_HLEN + 40;
	} else {
		return TC_ACT_UNSPEC;
	}
	if (bpf_skb_load_bytes(skb, l4, ports, sizeof(ports)) < 0)
		return TC_ACT_UNSPEC;
	dst.dir = PORT_TO_REAL;
	filed = rewrite_port(skb, &dst, ports[1], l4 + 2, l4 + UDP_CSUM, csum_flags);
	if (!filed && stray(&dst, ports[1]))
		return TC_ACT_SHOT;
	src.dir = PORT_TO_VIRTUAL;
	rewrite_port(skb, &src, ports[0], l4, l4 + UDP_CSUM, csum_flags);
	if (!filed)
		judge_unheard(skb, &src, &dst, l4, v4);
	return TC_ACT_UNSPEC;
}

#endif
