/* 127.0.0.1 and ::1 inside a shim vhost are the vhost's own, as under the
 * eBPF backend (bpf/loopback.h): two vhosts each listen on 127.0.0.1:5432,
 * `redis-cli` with no -h reaches its own vhost's server, and neither reaches
 * the other's nor the machine's.
 *
 * vaddr gives each vhost two real loopback addresses of its own in the
 * user's 127.X/16 (VADDR_LOOPBACK="L4 L6"): a bind of 127.0.0.1 lands on L4,
 * one of ::1 on L6 (as ::ffff:L6, like every address the shim hands an IPv6
 * socket), ports swapped as on a vIP.  A connect or send to 127.0.0.1:P goes
 * to L4:P when a socket of its type is bound there, else to the vhost's own
 * address, where its wildcard sockets are (::1 likewise with L6): the
 * kernel answers "is a socket bound there" through one exact sock_diag
 * lookup, as `ss` asks it, so nothing is connected to find out.  The client
 * leaves from L4 (L6), and what programs read back shows L4 and L6, and the
 * vhost's own address at the far end of them, as 127.0.0.1 and ::1: a
 * server sees a local client as 127.0.0.1 (Redis's protected mode lets it
 * in), the client sees the server there.  Clients on the machine come from
 * its own 127.0.0.1 and stay apart: a UDP server's datagram reaches one
 * only as a reply (to the port it last heard from, or to a client
 * connected to it), never the machine's own services. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <linux/inet_diag.h>
#include <linux/netlink.h>
#include <linux/sock_diag.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "loopback.h"
#include "shim.h"
#include "translate.h"

uint32_t own_lo4, own_lo6;

enum { LO_NONE, LO_V4, LO_V6 };

void lo_init(const char *spec)
{
	char a[INET_ADDRSTRLEN], b[INET_ADDRSTRLEN];
	struct in_addr x, y;

	if (!spec || sscanf(spec, "%15s %15s", a, b) != 2 || inet_pton(AF_INET, a, &x) != 1 ||
	    inet_pton(AF_INET, b, &y) != 1)
		return;
	own_lo4 = x.s_addr;
	own_lo6 = y.s_addr;
}

/* LO_V4 for 127.0.0.1 (also ::ffff:127.0.0.1), LO_V6 for ::1. */
static int loopback_kind(const struct sockaddr *sa, socklen_t len)
{
	uint32_t *v4;

	if (!own_lo4)
		return LO_NONE;
	if ((v4 = sockaddr_v4(sa, len)))
		return *v4 == htonl(INADDR_LOOPBACK) ? LO_V4 : LO_NONE;
	if (sa && sa->sa_family == AF_INET6 && len >= (socklen_t)sizeof(struct sockaddr_in6) &&
	    IN6_IS_ADDR_LOOPBACK(&((const struct sockaddr_in6 *)sa)->sin6_addr))
		return LO_V6;
	return LO_NONE;
}

/* A destination's kind: also 0.0.0.0 and [::], which name this host (the
 * kernel sends them to 127.0.0.1 and ::1, or, for 0.0.0.0, to the address
 * the socket is bound to): etcd's gRPC gateway dials its own listen address,
 * 0.0.0.0:2379.  The vhost's loopback, as under the eBPF backend. */
static int dest_kind(int fd, const struct sockaddr *sa, socklen_t len)
{
	struct sockaddr_storage cur;
	socklen_t curlen;
	uint32_t *v4;
	int kind = loopback_kind(sa, len), saved = errno;

	if (kind != LO_NONE || !own_lo4)
		return kind;
	if ((v4 = sockaddr_v4(sa, len)))
		kind = !*v4 && (shim_unbound(fd, &cur, &curlen) || lo_on_loopback(fd)) ? LO_V4 : LO_NONE;
	else if (sa && sa->sa_family == AF_INET6 && len >= (socklen_t)sizeof(struct sockaddr_in6) &&
		 IN6_IS_ADDR_UNSPECIFIED(&((const struct sockaddr_in6 *)sa)->sin6_addr))
		kind = LO_V6;
	errno = saved;
	return kind;
}

/* addr:port as the socket really holds it: the real address in the family
 * of the socket (v4-mapped on IPv6), the port swapped. */
static void put_real(int fd, struct sockaddr_storage *out, socklen_t len, uint32_t real)
{
	uint16_t *port = sockaddr_port((struct sockaddr *)out, len);

	if (out->ss_family == AF_INET6) {
		shim_allow_mapped(fd);
		shim_set_mapped((struct sockaddr *)out, real);
	} else {
		((struct sockaddr_in *)out)->sin_addr.s_addr = real;
	}
	*port = low_port_swap(*port);
}

int lo_bind(int fd, const struct sockaddr *addr, socklen_t len, struct sockaddr_storage *out)
{
	int kind = loopback_kind(addr, len);

	if (kind == LO_NONE || len > (socklen_t)sizeof(*out))
		return 0;
	memcpy(out, addr, len);
	put_real(fd, out, len, kind == LO_V4 ? own_lo4 : own_lo6);
	return 1;
}

/* A sock_diag answer's own (or, peer: its peer's) address, as IPv4; 0
 * for one that is not (a wildcard, or IPv6 proper). */
static uint32_t diag_addr(const struct inet_diag_msg *m, int peer)
{
	const __be32 *a = peer ? m->id.idiag_dst : m->id.idiag_src;

	if (m->idiag_family == AF_INET)
		return a[0];
	if (m->idiag_family == AF_INET6 && !a[0] && !a[1] && a[2] == htonl(0xffff))
		return a[3];
	return 0;
}

/* The kernel's record of the socket that would take a TCP connection (a
 * listener) or a UDP datagram from peer:peer_port at addr:port (network
 * order), in *found; 0 when none.  One exact sock_diag request, no dump.
 * The field order follows inet_diag_find_one_icsk and udp_dump_one, which
 * read a request's src and dst differently ("swapped for historical
 * reasons"); a UDP socket connected elsewhere than peer does not match. */
static int lookup(int protocol, uint32_t addr, uint16_t port, uint32_t peer, uint16_t peer_port,
		  struct inet_diag_msg *found)
{
	struct {
		struct nlmsghdr nlh;
		struct inet_diag_req_v2 req;
	} ask;
	union {
		struct nlmsghdr nlh;
		char bytes[1024];
	} answer;
	int fd, ok = 0, saved = errno;

	memset(&ask, 0, sizeof(ask));
	ask.nlh.nlmsg_len = sizeof(ask);
	ask.nlh.nlmsg_type = SOCK_DIAG_BY_FAMILY;
	ask.nlh.nlmsg_flags = NLM_F_REQUEST;
	ask.req.sdiag_family = AF_INET;
	ask.req.sdiag_protocol = protocol;
	ask.req.idiag_states = ~0u;
	ask.req.id.idiag_cookie[0] = ask.req.id.idiag_cookie[1] = INET_DIAG_NOCOOKIE;
	if (protocol == IPPROTO_TCP) {
		ask.req.id.idiag_src[0] = addr;
		ask.req.id.idiag_sport = port;
	} else {
		ask.req.id.idiag_dst[0] = addr;
		ask.req.id.idiag_dport = port;
		ask.req.id.idiag_src[0] = peer;
		ask.req.id.idiag_sport = peer_port;
	}
	fd = socket(AF_NETLINK, SOCK_DGRAM | SOCK_CLOEXEC, NETLINK_SOCK_DIAG);
	if (fd < 0)
		goto out;
	if (send(fd, &ask, sizeof(ask), 0) == (ssize_t)sizeof(ask) &&
	    recv(fd, &answer, sizeof(answer), 0) >= (ssize_t)(NLMSG_HDRLEN + sizeof(*found)) &&
	    answer.nlh.nlmsg_type == SOCK_DIAG_BY_FAMILY) {
		memcpy(found, NLMSG_DATA(&answer.nlh), sizeof(*found));
		ok = 1;
	}
	close(fd);
out:
	errno = saved;
	return ok;
}

enum { NOBODY, OURS, MACHINE };

/* Who takes a connection or datagram to addr:port: a socket bound there
 * (OURS; family_v6: an IPv6, dual-stack one only), one of the machine's on
 * the wildcard, which every 127/8 address reaches (MACHINE), or NOBODY. */
static int bound_at(int protocol, uint32_t addr, uint16_t port, int family_v6)
{
	struct inet_diag_msg m;

	if (!lookup(protocol, addr, port, htonl(INADDR_LOOPBACK), 0, &m) ||
	    (protocol == IPPROTO_TCP && m.idiag_state != 10 /* TCP_LISTEN */))
		return NOBODY;
	if (diag_addr(&m, 0) != addr)
		return MACHINE;
	return !family_v6 || m.idiag_family == AF_INET6 ? OURS : NOBODY;
}

/* Whether a UDP datagram from fd to 127.0.0.1:port is a reply to a client
 * on the machine: one connected to exactly fd's address and port.  Only
 * that one: a vhost cannot reach the machine's loopback services this way
 * (bpf/loopback.h asks the same of the kernel). */
static int answers_machine_client(int fd, uint16_t port)
{
	struct sockaddr_storage own;
	socklen_t len = sizeof(own);
	struct inet_diag_msg m;
	uint32_t *v4;
	uint16_t *own_port;

	if (shim_real_name(fd, 1, (struct sockaddr *)&own, &len) != 0 || !(v4 = sockaddr_v4((struct sockaddr *)&own, len)) ||
	    !*v4 || !*(own_port = sockaddr_port((struct sockaddr *)&own, len)))
		return 0;
	return lookup(IPPROTO_UDP, htonl(INADDR_LOOPBACK), port, *v4, *own_port, &m) &&
	       diag_addr(&m, 1) == *v4 && m.id.idiag_dport == *own_port;
}

/* The machine's clients come from its 127.0.0.1, as do the replies a
 * vhost's UDP server sends them: per descriptor, the port of the last
 * datagram from 127.0.0.1, so that a reply to it leaves as one (an
 * unconnected client has nothing else to know it by). */
#define SEEN_FDS 4096
static uint16_t seen_from[SEEN_FDS];

void lo_note_sender(int fd, const struct sockaddr *sa, socklen_t cap, const socklen_t *len)
{
	uint32_t *v4;

	if (own_lo4 && fd >= 0 && fd < SEEN_FDS && sa && len && (v4 = sockaddr_v4(sa, *len < cap ? *len : cap)) &&
	    *v4 == htonl(INADDR_LOOPBACK))
		__atomic_store_n(&seen_from[fd], *sockaddr_port(sa, *len < cap ? *len : cap), __ATOMIC_RELAXED);
}

/* Per descriptor, the real port of the vhost's own address that its last
 * datagram or connect to 127.0.0.1 (or ::1) went to, from a socket bound to
 * that address (kdig and dig bind 0.0.0.0:0 first, which lands on the vIP,
 * and compare where the answer came from): the answer from there shows as
 * from the loopback it asked. */
static uint32_t asked_vip[SEEN_FDS];  /* kind << 16 | port */

/* Per descriptor, how its socket was bound (enum in loopback.h). */
static uint8_t bound_as[SEEN_FDS];

void lo_note_bind(int fd, int how)
{
	if (fd >= 0 && fd < SEEN_FDS) {
		__atomic_store_n(&bound_as[fd], (uint8_t)how, __ATOMIC_RELAXED);
		__atomic_store_n(&seen_from[fd], 0, __ATOMIC_RELAXED);  /* a new socket on this number has heard nobody */
		__atomic_store_n(&asked_vip[fd], 0, __ATOMIC_RELAXED);
	}
}

static int noted_as(int fd)
{
	return fd >= 0 && fd < SEEN_FDS ? __atomic_load_n(&bound_as[fd], __ATOMIC_RELAXED) : LO_BIND_OTHER;
}

/* The note is per descriptor number, which a closed socket hands on to the
 * next: it is trusted only where the socket itself agrees. */
int lo_on_loopback(int fd)
{
	struct sockaddr_storage own;
	socklen_t len = sizeof(own);
	uint32_t *v4;
	int saved = errno, yes;

	if (noted_as(fd) == LO_BIND_OTHER)
		return 0;
	yes = shim_real_name(fd, 1, (struct sockaddr *)&own, &len) == 0 &&
	      (v4 = sockaddr_v4((struct sockaddr *)&own, len)) && (*v4 == own_lo4 || *v4 == own_lo6);
	errno = saved;
	return yes;
}

/* A wildcard bind that landed on the loopback: the socket, not one that
 * came to the same number since, is one with no peer (a listener, or an
 * unconnected datagram socket). */
static int bound_to_wildcard(int fd)
{
	struct sockaddr_storage peer;
	socklen_t len = sizeof(peer);
	int saved = errno, yes;

	yes = noted_as(fd) == LO_BIND_WILDCARD && shim_real_name(fd, 0, (struct sockaddr *)&peer, &len) != 0;
	errno = saved;
	return yes;
}

static int replies_to(int fd, uint16_t port)
{
	return fd >= 0 && fd < SEEN_FDS && port && __atomic_load_n(&seen_from[fd], __ATOMIC_RELAXED) == port;
}

static int protocol_of(int fd)
{
	int type = 0;
	socklen_t len = sizeof(type);

	getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len);
	return type == SOCK_DGRAM ? IPPROTO_UDP : IPPROTO_TCP;
}

#define REFUSED 0xffffffffu

/* Where the vhost's 127.0.0.1:port (kind LO_V4) or ::1:port goes: its own
 * loopback address when a socket is bound there; else its own address of
 * the family, where its wildcard sockets are (for ::1, also a dual-stack
 * [::] on the IPv4 vIP's, then the IPv4 ones); else, for a UDP server's reply, the machine's
 * client connected to it (0: leave the address alone); else its own
 * loopback address, where the kernel refuses, as on a host, unless a
 * wildcard socket of the machine's would answer there (REFUSED). */
static uint32_t lo_target(int fd, int kind, uint16_t port)
{
	int protocol = protocol_of(fd), at_lo;
	uint32_t lo = kind == LO_V4 ? own_lo4 : own_lo6;
	uint32_t v4 = shim_own_real(0), v6 = shim_own_real(1);

	if (protocol == IPPROTO_UDP && replies_to(fd, low_port_swap(port)))  /* the port as the sender had it */
		return 0;  /* first: no lookup for each reply a server sends */
	if ((at_lo = bound_at(protocol, lo, port, 0)) == OURS)
		return lo;
	if (kind == LO_V4 && v4 && bound_at(protocol, v4, port, 0) == OURS)
		return v4;
	if (kind == LO_V6 && v6 && bound_at(protocol, v6, port, 1) == OURS)
		return v6;
	if (kind == LO_V6 && v4 && bound_at(protocol, v4, port, 1) == OURS)
		return v4;
	/* As under the eBPF backend, ::1 is carried on to the IPv4 loopback
	 * ("localhost" tried as ::1 first reaches a 127.0.0.1 server). */
	if (kind == LO_V6 && bound_at(protocol, own_lo4, port, 0) == OURS)
		return own_lo4;
	if (kind == LO_V6 && v4 && bound_at(protocol, v4, port, 0) == OURS)
		return v4;
	if (protocol == IPPROTO_UDP && answers_machine_client(fd, port))
		return 0;
	return at_lo == MACHINE ? REFUSED : lo;
}

/* A client of the vhost's loopback leaves from the vhost's own loopback
 * address, so the server (and `ss`) sees 127.0.0.1, not the machine's. */
static void bind_loopback(int fd, int kind)
{
	struct sockaddr_storage cur;
	socklen_t len;
	int one = 1, saved = errno;

	if (shim_unbound(fd, &cur, &len)) {
		if (cur.ss_family == AF_INET6) {
			shim_allow_mapped(fd);
			shim_set_mapped((struct sockaddr *)&cur, kind == LO_V4 ? own_lo4 : own_lo6);
		} else {
			((struct sockaddr_in *)&cur)->sin_addr.s_addr = own_lo4;
		}
		setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof(one));
		if (shim_real_bind(fd, (struct sockaddr *)&cur, len) == 0)
			lo_note_bind(fd, LO_BIND_LOOPBACK);
	}
	errno = saved;
}

const struct sockaddr *lo_dest(int fd, const struct sockaddr *addr, socklen_t len, struct sockaddr_storage *out)
{
	int kind = dest_kind(fd, addr, len);
	uint16_t port;
	uint32_t target;

	if (kind == LO_NONE || len > (socklen_t)sizeof(*out))
		return NULL;
	port = low_port_swap(*sockaddr_port(addr, len));
	if (!(target = lo_target(fd, kind, port)))
		return addr;
	if (target == REFUSED)
		return LO_REFUSED;
	memcpy(out, addr, len);
	put_real(fd, out, len, target);  /* first: an IPv6 socket must take v4-mapped addresses to be bound below */
	bind_loopback(fd, kind);
	if (fd >= 0 && fd < SEEN_FDS && target != own_lo4 && target != own_lo6)
		__atomic_store_n(&asked_vip[fd], (uint32_t)kind << 16 | *sockaddr_port((struct sockaddr *)out, len),
				 __ATOMIC_RELAXED);
	return (const struct sockaddr *)out;
}

/* sa as the loopback of kind: ::1 on an IPv6 socket for LO_V6, else
 * 127.0.0.1 (::ffff:127.0.0.1 on an IPv6 socket), its port swapped back. */
static void show_loopback(struct sockaddr *sa, socklen_t room, int kind)
{
	uint16_t *port = sockaddr_port(sa, room);

	if (sa->sa_family == AF_INET6 && kind == LO_V6)
		((struct sockaddr_in6 *)sa)->sin6_addr = in6addr_loopback;
	else
		*sockaddr_v4(sa, room) = htonl(INADDR_LOOPBACK);
	*port = low_port_swap(*port);
}

int lo_reveal(int fd, struct sockaddr *sa, socklen_t cap, const socklen_t *len, int sa_is_local)
{
	struct sockaddr_storage other;
	socklen_t room, olen = sizeof(other);
	uint32_t *v4, *o4, a, asked;
	int saved = errno, done = 0;

	if (!own_lo4 || !sa || !len || !(v4 = sockaddr_v4(sa, room = *len < cap ? *len : cap)))
		return 0;
	a = *v4;
	if (a == own_lo4 || a == own_lo6) {
		show_loopback(sa, room, a == own_lo6 ? LO_V6 : LO_V4);
		if (sa_is_local && bound_to_wildcard(fd)) {  /* as asked: 0.0.0.0 or [::] */
			if (sa->sa_family == AF_INET6)
				((struct sockaddr_in6 *)sa)->sin6_addr = in6addr_any;
			else
				*v4 = htonl(INADDR_ANY);
		}
		return 1;
	}
	/* The vhost's own address at one end of its loopback (a wildcard
	 * server and its local client): one more system call, for those only. */
	if (!a || (a != shim_own_real(0) && a != shim_own_real(1)))
		return 0;
	if (!sa_is_local && fd >= 0 && fd < SEEN_FDS && *sockaddr_port(sa, room) &&
	    (uint16_t)(asked = __atomic_load_n(&asked_vip[fd], __ATOMIC_RELAXED)) == *sockaddr_port(sa, room)) {
		show_loopback(sa, room, asked >> 16);
		return 1;
	}
	if (shim_real_name(fd, !sa_is_local, (struct sockaddr *)&other, &olen) == 0 &&
	    (o4 = sockaddr_v4((struct sockaddr *)&other, olen)) && (*o4 == own_lo4 || *o4 == own_lo6)) {
		show_loopback(sa, room, *o4 == own_lo6 ? LO_V6 : LO_V4);
		done = 1;
	}
	errno = saved;
	return done;
}
