/* SO_REUSEPORT groups in a vhost's port space.
 *
 * Servers that set SO_REUSEPORT (HAProxy and unbound by default, nginx's and
 * Envoy's `reuseport`) open one socket per worker on one port, or bind the
 * port again while their old process still holds it (HAProxy's reload), and
 * the kernel groups the sockets by the port they share.  A vhost's port P is
 * not a real port (steer.h, udp_ports.h), so a group's sockets share one real
 * port R instead: the first bind of (address, P) asks for port 0, post_bind
 * files the R it got here, and later binds ask for R, where the kernel lets
 * them in as it would at P (SO_REUSEPORT on both, the same uid) or refuses
 * them with EADDRINUSE.  The entry goes with the group's last socket
 * (sock_release).  A connection reaches the group through any one listener
 * (steer.h files up to GROUP_SLOTS of them under P), and the kernel then picks
 * among the group as for any SO_REUSEPORT lookup.  Needs post_bind and
 * sock_release: compiled with udp_ports.h. */
#ifndef VADDR_GROUPS_H
#define VADDR_GROUPS_H

#include "lib.h"

#define GROUP_MEMBER 1   /* remapped with SO_REUSEPORT: joins or starts a group */
#define GROUP_COUNTED 2  /* post_bind counted it in its group */
#define GROUP_SLOTS 4    /* listeners of one group filed for steering */

struct group_key {
	struct addr_key addr;  /* the address bound, IPv4 as v4-mapped */
	__u16 port;            /* the port asked for, host order */
	__u16 proto;
};

struct group {
	__u32 real;     /* the port its sockets hold, host order */
	__u32 members;  /* sockets counted by post_bind, less those released */
	__u32 listens;  /* listen() calls seen: picks the next slot */
};

BPF_HASH(groups, struct group_key, struct group, 16384);

static __always_inline struct group *group_of(const __u32 *addr, __u16 port, __u16 proto)
{
	struct group_key key = {.port = port, .proto = proto};

	copy6(key.addr.ip6, addr);
	return groups.lookup(&key);
}

/* bind: the real port of the group at (addr, port), 0 to start one. */
static __always_inline __u16 group_port(const __u32 *addr, __u16 port, __u16 proto)
{
	struct group *g = group_of(addr, port, proto);

	return g ? g->real : 0;
}

/* post_bind: count the socket in its group, or start the group at the port
 * the kernel chose.  A socket that lost a race to start one (a real port of
 * its own) stays out, uncounted. */
static __always_inline void join_group(struct sock_facts *facts, __u16 proto)
{
	struct group_key key = {.port = facts->vport, .proto = proto};
	struct group fresh = {.real = facts->real, .members = 1};
	struct group *g;

	copy6(key.addr.ip6, facts->addr);
	g = groups.lookup(&key);
	if (!g) {
		if (groups.insert(&key, &fresh) == 0)
			facts->group |= GROUP_COUNTED;
		return;
	}
	if (g->real != facts->real)
		return;
	__sync_fetch_and_add(&g->members, 1);
	facts->group |= GROUP_COUNTED;
}

/* sock_release: 1 when the socket was its group's last (or in none), so the
 * port it held is free to forget. */
static __always_inline int leave_group(struct sock_facts *facts, __u16 proto)
{
	struct group_key key = {.port = facts->vport, .proto = proto};
	struct group *g;

	if (!(facts->group & GROUP_COUNTED))
		return 1;
	copy6(key.addr.ip6, facts->addr);
	g = groups.lookup(&key);
	if (!g || g->real != facts->real)
		return 1;
	__sync_fetch_and_add(&g->members, -1);
	if (g->members != 0)
		return 0;
	groups.delete(&key);
	return 1;
}

/* sockops, at listen: the slot this listener is filed under (steer.h). */
static __always_inline __u32 group_slot(struct sock_facts *facts)
{
	struct group *g;
	__u32 n;

	if (!(facts->group & GROUP_COUNTED))
		return 0;
	g = group_of(facts->addr, facts->vport, IPPROTO_TCP);
	if (!g || g->real != facts->real)
		return 0;
	/* Not atomic: a fetched add needs BPF v3 instructions, and two
	 * listeners in one slot only cost the robustness of that slot. */
	n = g->listens;
	g->listens = n + 1;
	return n % GROUP_SLOTS;
}

#endif
