/* Choosing an address: bind() in a vhost lands on the real address of its
 * vIP (or of its own loopback, loopback.c), with low ports swapped, and
 * another vhost's address is refused as on a host that lacks it.  Also the
 * helpers for IPv6 sockets that carry a vIP as a v4-mapped address. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <pthread.h>

#include "loopback.h"
#include "shim.h"
#include "translate.h"

#define EXPORT __attribute__((visibility("default")))

int v6only(int fd)
{
	int on = 0;
	socklen_t len = sizeof(on);

	return getsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &on, &len) == 0 && on;
}

/* Whether fd has no local address yet: a connect or send would pick one. */
int shim_unbound(int fd, struct sockaddr_storage *cur, socklen_t *len)
{
	*len = sizeof(*cur);
	if (real_getsockname(fd, (struct sockaddr *)cur, len) != 0)
		return 0;
	if (cur->ss_family == AF_INET)
		return ((struct sockaddr_in *)cur)->sin_port == 0 && sockaddr_is_wildcard((struct sockaddr *)cur, *len);
	if (cur->ss_family == AF_INET6)  /* a V6ONLY socket cannot take a v4 address */
		return ((struct sockaddr_in6 *)cur)->sin6_port == 0 &&
		       sockaddr_is_wildcard((struct sockaddr *)cur, *len) && !v6only(fd);
	return 0;
}

/* An IPv6 socket about to carry an IPv6 vIP over a v4-mapped address must
 * accept one: IPV6_V6ONLY is turned off (possible until it is bound). */
void shim_allow_mapped(int fd)
{
	int off = 0, saved = errno;

	if (v6only(fd))
		setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &off, sizeof(off));
	errno = saved;
}

void shim_set_mapped(struct sockaddr *sa, uint32_t real)
{
	struct in6_addr *a = &((struct sockaddr_in6 *)sa)->sin6_addr;

	memset(a, 0, sizeof(*a));
	a->s6_addr16[5] = 0xffff;
	a->s6_addr32[3] = real;
}

/* bind's result, noting how the descriptor is bound when it succeeded. */
static int noted(int fd, int ret, int how)
{
	if (ret == 0)
		lo_note_bind(fd, how);
	return ret;
}

/* A wildcard bind in a vhost: the real address of its vIP of that family.
 * 0.0.0.0 (and ::ffff:0.0.0.0) takes the IPv4 vIP's; an IPV6_V6ONLY [::]
 * the IPv6 vIP's; a dual-stack [::] the IPv4 one's when there is one (as
 * the eBPF backend does), else the IPv6 one's.  A family the vhost lacks
 * takes the vhost's own loopback of that family (127.0.0.1 or ::1, as on a
 * host whose only address of the family is its loopback), so a daemon that
 * binds both families (nginx's `listen [::]` beside its IPv4 one) starts as
 * on a host with one; without a loopback of its own (--host-loopback) it is
 * parked at a free port, where nothing reaches it. */
static int bind_wildcard(int fd, const struct sockaddr *addr, socklen_t len)
{
	struct sockaddr_storage copy;
	int v6 = addr->sa_family == AF_INET6 && !sockaddr_v4(addr, len), use6;
	uint32_t real;

	if (len > (socklen_t)sizeof(copy))
		return real_bind(fd, addr, len);
	use6 = v6 && (v6only(fd) || !own_vip);
	if (use6 ? has_vip6 : own_vip != 0) {
		if (!(real = use6 ? real_of6(&own_vip6) : real_of(own_vip)))
			return vhost_gone() ? -1 : real_bind(fd, addr, len);
	} else {
		/* The vhost's own loopback of that family (127.0.0.1, ::1), as on a
		 * host without that family's address; parked without one. */
		real = v6 ? own_lo6 : own_lo4;
		use6 = v6;
	}
	memcpy(&copy, addr, len);
	*sockaddr_port((struct sockaddr *)&copy, len) = real ? low_port_swap(*sockaddr_port(addr, len)) : 0;
	if (copy.ss_family == AF_INET)
		((struct sockaddr_in *)&copy)->sin_addr.s_addr = real ? real : htonl(INADDR_LOOPBACK);
	else if (!real)
		((struct sockaddr_in6 *)&copy)->sin6_addr = in6addr_loopback;
	else {
		if (use6)
			shim_allow_mapped(fd);
		shim_set_mapped((struct sockaddr *)&copy, real);
	}
	if (real && (real == own_lo4 || real == own_lo6))
		return noted(fd, real_bind(fd, (struct sockaddr *)&copy, len), LO_BIND_WILDCARD);
	lo_note_bind(fd, LO_BIND_OTHER);
	return real_bind(fd, (struct sockaddr *)&copy, len);
}

static int is_own(const struct sockaddr *addr, socklen_t len, int v6)
{
	if (v6)
		return has_vip6 && IN6_ARE_ADDR_EQUAL(&((const struct sockaddr_in6 *)addr)->sin6_addr, &own_vip6);
	return own_vip && *sockaddr_v4(addr, len) == own_vip;
}

EXPORT int bind(int fd, const struct sockaddr *addr, socklen_t len)
{
	struct sockaddr_storage copy;
	uint32_t real;
	int v6;

	shim_ready();
	if (is_inet(addr, len) && vhost_gone())
		return -1;
	if (in_vhost && lo_bind(fd, addr, len, &copy))
		return noted(fd, real_bind(fd, (struct sockaddr *)&copy, len), LO_BIND_LOOPBACK);
	if (in_vhost && sockaddr_is_wildcard(addr, len))
		return bind_wildcard(fd, addr, len);
	if (in_vhost)
		lo_note_bind(fd, LO_BIND_OTHER);
	if (len > (socklen_t)sizeof(copy) || !(real = real_of_sa(addr, len, &v6)))
		return real_bind(fd, addr, len);
	if (!is_own(addr, len, v6)) {
		/* Another vhost's address: as on a host that lacks it. */
		errno = EADDRNOTAVAIL;
		return -1;
	}
	memcpy(&copy, addr, len);
	if (v6) {
		shim_allow_mapped(fd);
		shim_set_mapped((struct sockaddr *)&copy, real);
	} else {
		*sockaddr_v4((struct sockaddr *)&copy, len) = real;
	}
	*sockaddr_port((struct sockaddr *)&copy, len) = low_port_swap(*sockaddr_port(addr, len));
	return real_bind(fd, (struct sockaddr *)&copy, len);
}
