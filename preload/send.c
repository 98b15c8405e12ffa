/* Sending to an address: connect() and the send calls carry a vIP to the
 * real address standing for it (or to the vhost's own loopback socket,
 * loopback.c), after giving an unbound socket the vhost's own address, so
 * the peer sees the vIP as the kernel backend's connect hook makes it. */
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

/* Kernel cap on the vector of sendmmsg (UIO_MAXIOV): longer vectors are cut
 * to this by the kernel itself. */
#define MMSG_MAX 1024
#define MMSG_ON_STACK 64

/* Before a connect or send to a vIP: give an unbound socket the vhost's own
 * address of the destination's family (its IPv6 vIP's real address when
 * v6), so the peer sees it, as the kernel backend's connect hook does. */
static void bind_own(int fd, int v6)
{
	struct sockaddr_storage own;
	socklen_t len;
	uint32_t real;
	int one = 1, saved = errno;

	if (!(v6 ? has_vip6 : own_vip != 0) || !shim_unbound(fd, &own, &len) ||
	    !(real = v6 ? real_of6(&own_vip6) : real_of(own_vip)))
		goto out;
	/* Keep the family and length getsockname gave; zero the port. */
	if (own.ss_family == AF_INET6) {
		struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&own;
		memset(&sin6->sin6_addr, 0, sizeof(sin6->sin6_addr));
		sin6->sin6_addr.s6_addr16[5] = 0xffff;
	}
	*sockaddr_v4((struct sockaddr *)&own, len) = real;
	/* IP_BIND_ADDRESS_NO_PORT: the port is still chosen at connect time,
	 * against the destination, as for an unbound socket, so many outgoing
	 * connections do not exhaust the ephemeral range on bind. */
	setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof(one));
	real_bind(fd, (struct sockaddr *)&own, len);
out:
	errno = saved;
}

/* The real destination for addr, in *out; returns addr itself when no
 * translation applies (not a vIP). */
static const struct sockaddr *hide(int fd, const struct sockaddr *addr, socklen_t len, struct sockaddr_storage *out)
{
	const struct sockaddr *lo = in_vhost ? lo_dest(fd, addr, len, out) : NULL;
	uint32_t real;
	int v6;

	if (lo)
		return lo;
	if (len > (socklen_t)sizeof(*out) || !(real = real_of_sa(addr, len, &v6)))
		return addr;
	if (in_vhost && lo_on_loopback(fd))
		return LO_UNREACH;  /* from its loopback: as from a host's 127.0.0.1 */
	if (v6)
		shim_allow_mapped(fd);
	bind_own(fd, v6);
	memcpy(out, addr, len);
	if (v6)
		shim_set_mapped((struct sockaddr *)out, real);
	else
		*sockaddr_v4((struct sockaddr *)out, len) = real;
	*sockaddr_port((struct sockaddr *)out, len) = low_port_swap(*sockaddr_port(addr, len));
	return (const struct sockaddr *)out;
}

EXPORT int connect(int fd, const struct sockaddr *addr, socklen_t len)
{
	struct sockaddr_storage copy;
	const struct sockaddr *dest;

	shim_ready();
	if (is_inet(addr, len) && vhost_gone())
		return -1;
	if ((dest = hide(fd, addr, len, &copy)) == LO_REFUSED || dest == LO_UNREACH) {
		errno = dest == LO_REFUSED ? ECONNREFUSED : ENETUNREACH;
		return -1;
	}
	return real_connect(fd, dest, len);
}

EXPORT ssize_t sendto(int fd, const void *buf, size_t n, int flags, const struct sockaddr *addr, socklen_t len)
{
	struct sockaddr_storage copy;
	const struct sockaddr *dest;

	shim_ready();
	if (is_inet(addr, len) && vhost_gone())
		return -1;
	if ((dest = hide(fd, addr, len, &copy)) == LO_REFUSED)
		return n;  /* lost, as at a closed port */
	if (dest == LO_UNREACH) {
		errno = ENETUNREACH;
		return -1;
	}
	return real_sendto(fd, buf, n, flags, dest, len);
}

static ssize_t iov_bytes(const struct msghdr *msg)
{
	size_t i, n = 0;

	for (i = 0; i < msg->msg_iovlen; i++)
		n += msg->msg_iov[i].iov_len;
	return n;
}

EXPORT ssize_t sendmsg(int fd, const struct msghdr *msg, int flags)
{
	struct sockaddr_storage copy;
	struct msghdr m;

	shim_ready();
	if (!msg || !msg->msg_name)
		return real_sendmsg(fd, msg, flags);
	if (is_inet(msg->msg_name, msg->msg_namelen) && vhost_gone())
		return -1;
	m = *msg;
	m.msg_name = (void *)hide(fd, msg->msg_name, msg->msg_namelen, &copy);
	if (m.msg_name == LO_REFUSED)
		return iov_bytes(msg);  /* lost, as at a closed port */
	if (m.msg_name == LO_UNREACH) {
		errno = ENETUNREACH;
		return -1;
	}
	return real_sendmsg(fd, &m, flags);
}

/* The caller's vector is rewritten for the call and restored after it:
 * the kernel fills in msg_len, so it cannot be a copy. */
EXPORT int sendmmsg(int fd, struct mmsghdr *msgs, unsigned int n, int flags)
{
	struct sockaddr_storage stack_copies[MMSG_ON_STACK], *copies = stack_copies;
	void *stack_names[MMSG_ON_STACK], **names = stack_names;
	unsigned int i, sendable;
	int ret, saved, unreachable = 0;

	shim_ready();
	if (!msgs)
		return real_sendmmsg(fd, msgs, n, flags);
	if (n && is_inet(msgs[0].msg_hdr.msg_name, msgs[0].msg_hdr.msg_namelen) && vhost_gone())
		return -1;
	if (n > MMSG_MAX)
		n = MMSG_MAX;
	if (n > MMSG_ON_STACK) {
		copies = malloc(n * sizeof(*copies));
		names = malloc(n * sizeof(*names));
		if (!copies || !names) {
			free(copies == stack_copies ? NULL : copies);
			free(names == stack_names ? NULL : names);
			copies = stack_copies, names = stack_names;
			n = MMSG_ON_STACK;  /* a short count is a valid answer */
		}
	}
	for (i = 0; i < n; i++) {
		names[i] = msgs[i].msg_hdr.msg_name;
		if (names[i])
			msgs[i].msg_hdr.msg_name = (void *)hide(fd, names[i], msgs[i].msg_hdr.msg_namelen, &copies[i]);
		if (msgs[i].msg_hdr.msg_name == LO_REFUSED || msgs[i].msg_hdr.msg_name == LO_UNREACH) {
			unreachable = msgs[i].msg_hdr.msg_name == LO_UNREACH;
			msgs[i].msg_hdr.msg_name = names[i];
			break;
		}
	}
	sendable = i;
	ret = sendable ? real_sendmmsg(fd, msgs, sendable, flags) : unreachable ? -1 : 0;
	saved = sendable || !unreachable ? errno : ENETUNREACH;
	if (sendable < n && ret == (int)sendable && !unreachable) {
		msgs[sendable].msg_len = iov_bytes(&msgs[sendable].msg_hdr);
		ret++;  /* the one only the machine would take: lost, as at a closed port */
	}
	for (i = 0; i < sendable; i++)
		msgs[i].msg_hdr.msg_name = names[i];
	if (copies != stack_copies)
		free(copies);
	if (names != stack_names)
		free(names);
	errno = saved;
	return ret;
}
