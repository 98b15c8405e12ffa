/* Revealing addresses: what getsockname, getpeername, accept and the
 * receive calls return is rewritten from real to virtual, so the program
 * only ever sees vIPs (and its own loopback as 127.0.0.1 and ::1). */
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

/* Kernel cap on the vector of recvmmsg (UIO_MAXIOV). */
#define MMSG_MAX 1024

/* Rewrite an address the kernel returned from real to virtual, in place.
 * `cap` is the buffer the caller gave; the kernel reports the address's full
 * length in *len even when it cut the copy to cap, so only what fits in both
 * may be looked at. */
static void reveal(struct sockaddr *sa, socklen_t cap, const socklen_t *len)
{
	struct in6_addr vip;
	uint32_t *v4;
	uint16_t *port;

	if (!sa || !len || !(v4 = sockaddr_v4(sa, *len < cap ? *len : cap)) || !vip_of(*v4, &vip))
		return;
	if (IN6_IS_ADDR_V4MAPPED(&vip))
		*v4 = vip.s6_addr32[3];
	else if (sa->sa_family == AF_INET6)  /* an IPv6 vIP, on the IPv6 socket that carries it */
		((struct sockaddr_in6 *)sa)->sin6_addr = vip;
	else
		return;  /* an IPv6 vIP's real address on an IPv4 socket: no IPv4 vIP to show */
	port = sockaddr_port(sa, *len < cap ? *len : cap);
	*port = low_port_swap(*port);
}

/* A process outside any vhost reaches an IPv6 vIP from ::ffff:127.0.0.1 (it
 * has no IPv6 address the shim could give it); on a host, and under the
 * eBPF backend, that is ::1.  So on an IPv6 socket whose other end (the
 * peer when `sa` is the local address, the local one otherwise) is an IPv6
 * vIP's real address, ::ffff:127.0.0.1 is shown as ::1.  One more system
 * call, on this rare address only. */
static void host_as_v6(int fd, struct sockaddr *sa, socklen_t cap, const socklen_t *len, int sa_is_local)
{
	struct sockaddr_storage other;
	socklen_t olen = sizeof(other);
	struct in6_addr vip;
	uint32_t *v4;
	int saved = errno;

	if (!sa || !len || sa->sa_family != AF_INET6 || !(v4 = sockaddr_v4(sa, *len < cap ? *len : cap)) ||
	    *v4 != htonl(INADDR_LOOPBACK))
		return;
	if ((sa_is_local ? real_getpeername : real_getsockname)(fd, (struct sockaddr *)&other, &olen) == 0 &&
	    (v4 = sockaddr_v4((struct sockaddr *)&other, olen)) && vip_of(*v4, &vip) && !IN6_IS_ADDR_V4MAPPED(&vip))
		((struct sockaddr_in6 *)sa)->sin6_addr = in6addr_loopback;
	errno = saved;
}

/* What the program is shown for an address the kernel returned: the
 * vhost's loopback (loopback.c), else the vIP a real address stands for. */
static void show(int fd, struct sockaddr *sa, socklen_t cap, socklen_t *len, int sa_is_local)
{
	if (!sa_is_local)
		lo_note_sender(fd, sa, cap, len);
	if (lo_reveal(fd, sa, cap, len, sa_is_local))
		return;
	host_as_v6(fd, sa, cap, len, sa_is_local);
	reveal(sa, cap, len);
}

static socklen_t cap_of(const struct sockaddr *addr, const socklen_t *len)
{
	return addr && len ? *len : 0;
}

EXPORT int getsockname(int fd, struct sockaddr *addr, socklen_t *len)
{
	socklen_t cap = cap_of(addr, len);
	int ret;

	shim_ready();
	ret = real_getsockname(fd, addr, len);
	if (ret == 0) {
		show(fd, addr, cap, len, 1);
	}
	return ret;
}

EXPORT int getpeername(int fd, struct sockaddr *addr, socklen_t *len)
{
	socklen_t cap = cap_of(addr, len);
	int ret;

	shim_ready();
	ret = real_getpeername(fd, addr, len);
	if (ret == 0) {
		show(fd, addr, cap, len, 0);
	}
	return ret;
}

EXPORT int accept(int fd, struct sockaddr *addr, socklen_t *len)
{
	socklen_t cap = cap_of(addr, len);
	int ret;

	shim_ready();
	ret = real_accept(fd, addr, len);
	if (ret >= 0) {
		show(fd, addr, cap, len, 0);
	}
	return ret;
}

EXPORT int accept4(int fd, struct sockaddr *addr, socklen_t *len, int flags)
{
	socklen_t cap = cap_of(addr, len);
	int ret;

	shim_ready();
	ret = real_accept4(fd, addr, len, flags);
	if (ret >= 0) {
		show(fd, addr, cap, len, 0);
	}
	return ret;
}

EXPORT ssize_t recvfrom(int fd, void *buf, size_t n, int flags, struct sockaddr *addr, socklen_t *len)
{
	socklen_t cap = cap_of(addr, len);
	ssize_t ret;

	shim_ready();
	ret = real_recvfrom(fd, buf, n, flags, addr, len);
	if (ret >= 0) {
		show(fd, addr, cap, len, 0);
	}
	return ret;
}

/* What _FORTIFY_SOURCE builds call instead of recvfrom when the buffer's
 * size is known at compile time.  (__recv_chk needs no wrapper: recv
 * returns no address.) */
EXPORT ssize_t __recvfrom_chk(int fd, void *buf, size_t n, size_t buflen, int flags, struct sockaddr *addr,
			      socklen_t *len)
{
	socklen_t cap = cap_of(addr, len);
	ssize_t ret;

	shim_ready();
	ret = real_recvfrom_chk ? real_recvfrom_chk(fd, buf, n, buflen, flags, addr, len)
				: real_recvfrom(fd, buf, n, flags, addr, len);
	if (ret >= 0) {
		show(fd, addr, cap, len, 0);
	}
	return ret;
}

EXPORT ssize_t recvmsg(int fd, struct msghdr *msg, int flags)
{
	socklen_t cap = msg && msg->msg_name ? msg->msg_namelen : 0;
	ssize_t ret;

	shim_ready();
	ret = real_recvmsg(fd, msg, flags);
	if (ret >= 0 && msg) {
		show(fd, msg->msg_name, cap, &msg->msg_namelen, 0);
	}
	return ret;
}

EXPORT int recvmmsg(int fd, struct mmsghdr *msgs, unsigned int n, int flags, struct timespec *timeout)
{
	socklen_t caps[MMSG_MAX];
	unsigned int i;
	int ret;

	shim_ready();
	if (!msgs)
		return real_recvmmsg(fd, msgs, n, flags, timeout);
	if (n > MMSG_MAX)
		n = MMSG_MAX;
	for (i = 0; i < n; i++)
		caps[i] = msgs[i].msg_hdr.msg_name ? msgs[i].msg_hdr.msg_namelen : 0;
	ret = real_recvmmsg(fd, msgs, n, flags, timeout);
	for (i = 0; ret > 0 && i < (unsigned int)ret; i++) {
		show(fd, msgs[i].msg_hdr.msg_name, caps[i], &msgs[i].msg_hdr.msg_namelen, 0);
	}
	return ret;
}
