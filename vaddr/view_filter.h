/* A vhost's own interface view, the child's half (the daemon's is
 * vaddr/viewd.py).
 *
 * A seccomp filter makes socket(AF_NETLINK, *, NETLINK_ROUTE) wait for the
 * view daemon, which answers with a netlink socket it opened in a network
 * namespace holding the vhost's addresses on an "eth0"; the interface ioctls
 * (SIOCGIFCONF, SIOCGIF*), which it answers from that namespace; and socket
 * listings (NETLINK_SOCK_DIAG), which it answers with the vhost's own
 * sockets; and opens of /proc/net files routed to it (preload/procview.c),
 * which it answers with the view's; and socket(AF_UNIX), which it answers
 * with a socket made in that namespace, so that abstract names are the
 * vhost's own (view_install's own_unix).  Every other system call, and every
 * other socket, is allowed at once: the vhost's traffic stays in the
 * machine's namespace.  A filter sees raw system calls, so this covers
 * what LD_PRELOAD cannot: glibc's getifaddrs (its netlink socket is
 * internal), Go's net.Interfaces, `ip addr`.  The filter is inherited across
 * fork and exec; the listener it returns is sent to the daemon over a
 * datagram socket only root can write to.
 *
 * Runs in the forked child before execve: system calls only. */
#include <errno.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/netlink.h>
#include <linux/seccomp.h>
#include <stddef.h>

#define VIEW_FAILED 0x40000000

struct launch_view {
	const char *sock_path; /* the daemon's socket; NULL: no view */
	const char *message;   /* which vhost, for the daemon */
	int own_unix;          /* Unix sockets made in the view: abstract names of the vhost's own */
};

#if defined(__x86_64__)
#define VIEW_ARCH AUDIT_ARCH_X86_64
#elif defined(__aarch64__)
#define VIEW_ARCH AUDIT_ARCH_AARCH64
#endif

#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#define ARG_LO(n) (offsetof(struct seccomp_data, args) + 8 * (n))
#else
#define ARG_LO(n) (offsetof(struct seccomp_data, args) + 8 * (n) + 4)
#endif

#ifndef SECCOMP_FILTER_FLAG_NEW_LISTENER
#define SECCOMP_FILTER_FLAG_NEW_LISTENER (1UL << 3)
#endif
#ifndef SECCOMP_RET_USER_NOTIF
#define SECCOMP_RET_USER_NOTIF 0x7fc00000U
#endif

/* fd: a datagram socket made before the filter, which would stop its own
 * socket(AF_UNIX) for a daemon that has no listener yet. */
static int view_send(int fd, const char *sock_path, const char *message, int listener)
{
	struct sockaddr_un to = {.sun_family = AF_UNIX};
	char control[CMSG_SPACE(sizeof(int))];
	struct iovec iov = {.iov_base = (void *)message, .iov_len = strlen(message)};
	struct msghdr msg = {.msg_name = &to, .msg_namelen = sizeof(to), .msg_iov = &iov, .msg_iovlen = 1,
			     .msg_control = control, .msg_controllen = sizeof(control)};
	struct cmsghdr *cm;

	if (strlen(sock_path) >= sizeof(to.sun_path))
		return ENAMETOOLONG;
	memcpy(to.sun_path, sock_path, strlen(sock_path) + 1);
	memset(control, 0, sizeof(control));
	cm = CMSG_FIRSTHDR(&msg);
	cm->cmsg_level = SOL_SOCKET;
	cm->cmsg_type = SCM_RIGHTS;
	cm->cmsg_len = CMSG_LEN(sizeof(int));
	memcpy(CMSG_DATA(cm), &listener, sizeof(int));
	return sendmsg(fd, &msg, 0) < 0 ? errno : 0;
}

/* Interface ioctls answered from the view too (vaddr/viewioctl.py keeps the
 * same list): SIOCGIFCONF and the per-interface SIOCGIF* queries. */
static const unsigned int view_ioctls[] = {0x8912, 0x8910, 0x8913, 0x8915, 0x8917, 0x8919, 0x891b,
					   0x891d, 0x8921, 0x8927, 0x8933, 0x8942};
#define VIEW_IOCTLS_N (sizeof(view_ioctls) / sizeof(view_ioctls[0]))

/* Socket listings (`ss`, NETLINK_SOCK_DIAG): the daemon hands the caller a
 * diag socket at a descriptor in this range (vaddr/viewdiag.py keeps the
 * same numbers), and the filter stops sends and receives on these
 * descriptors only, so that the daemon answers them with the vhost's own
 * sockets at the ports its programs asked for.  Just under the usual soft
 * limit of 1024: few programs ever reach these numbers, and a call on one
 * that is not a diag socket of ours goes back to the kernel unchanged. */
#define VIEW_DIAG_FD_LO 1020
#define VIEW_DIAG_FD_HI 1023
#ifndef NETLINK_SOCK_DIAG
#define NETLINK_SOCK_DIAG 4
#endif

/* Opens of the /proc/net files the view serves: preload/procview.c opens
 * them with this dirfd, which no descriptor can have (so the kernel, which
 * ignores the dirfd of an absolute path, opens the machine's file wherever
 * no filter stops the call); vaddr/viewd.py keeps the same number. */
#define VIEW_OPEN_DIRFD 0x7ffffff0

#define VIEW_FILTER_LEN (25 + VIEW_IOCTLS_N)

/* 0, or the errno of the step that failed.  own_unix: socket(AF_UNIX) waits
 * for the daemon too, which makes the socket in the view's namespace, where
 * abstract names (\0name, bound by corosync's libqb, Chrome, X11) are the
 * vhost's own, as on a host of its own; a path names a file, which every
 * namespace reaches, so /dev/log and the machine's sockets still work. */
static int view_install(const char *sock_path, const char *message, int own_unix)
{
#ifdef VIEW_ARCH
	/* Forward jumps only: the socket() test, the ioctl() test, the test of
	 * sends and receives, the openat() test, then the two verdicts. */
	struct sock_filter code[VIEW_FILTER_LEN];
	const int allow = VIEW_FILTER_LEN - 2, notify = VIEW_FILTER_LEN - 1, ioctl_at = 10;
	const int io_at = ioctl_at + 3 + VIEW_IOCTLS_N, fd_at = io_at + 4, open_at = fd_at + 3;
	const unsigned int io_calls[] = {__NR_sendto, __NR_recvfrom, __NR_sendmsg, __NR_recvmsg};
	unsigned int i;
	int k = 0;

#define JUMP(op, value, yes, no) (struct sock_filter) BPF_JUMP(BPF_JMP | (op) | BPF_K, value, (yes) - k - 1, (no) - k - 1)
#define LOAD(offset) (struct sock_filter) BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offset)
	code[k++] = LOAD(offsetof(struct seccomp_data, arch));
	code[k] = JUMP(BPF_JEQ, VIEW_ARCH, k + 1, allow), k++;
	code[k++] = LOAD(offsetof(struct seccomp_data, nr));
	code[k] = JUMP(BPF_JEQ, __NR_socket, k + 1, ioctl_at), k++;
	code[k++] = LOAD(ARG_LO(0));
	code[k] = JUMP(BPF_JEQ, AF_UNIX, own_unix ? notify : allow, k + 1), k++;
	code[k] = JUMP(BPF_JEQ, AF_NETLINK, k + 1, allow), k++;
	code[k++] = LOAD(ARG_LO(2));
	code[k] = JUMP(BPF_JEQ, NETLINK_ROUTE, notify, k + 1), k++;
	code[k] = JUMP(BPF_JEQ, NETLINK_SOCK_DIAG, notify, allow), k++;
	code[k] = JUMP(BPF_JEQ, __NR_ioctl, k + 1, io_at), k++; /* ioctl_at */
	code[k++] = LOAD(ARG_LO(1));
	for (i = 0; i < VIEW_IOCTLS_N; i++, k++)
		code[k] = JUMP(BPF_JEQ, view_ioctls[i], notify, k + 1);
	code[k] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JA | BPF_K, allow - k - 1, 0, 0), k++;
	for (i = 0; i < 4; i++, k++) /* io_at */
		code[k] = JUMP(BPF_JEQ, io_calls[i], fd_at, i == 3 ? open_at : k + 1);
	code[k++] = LOAD(ARG_LO(0)); /* fd_at */
	code[k] = JUMP(BPF_JGE, VIEW_DIAG_FD_LO, k + 1, allow), k++;
	code[k] = JUMP(BPF_JGT, VIEW_DIAG_FD_HI, allow, notify), k++;
	code[k] = JUMP(BPF_JEQ, __NR_openat, k + 1, allow), k++; /* open_at */
	code[k++] = LOAD(ARG_LO(0));
	code[k] = JUMP(BPF_JEQ, VIEW_OPEN_DIRFD, notify, allow), k++;
	code[k++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW);
	code[k++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_USER_NOTIF);
#undef JUMP
#undef LOAD
	struct sock_fprog prog = {.len = (unsigned short)k, .filter = code};
	long listener;
	int fd, err;

	fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return errno;
	listener = syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_NEW_LISTENER, &prog);
	if (listener < 0) {
		err = errno;
		close(fd);
		return err;
	}
	err = view_send(fd, sock_path, message, (int)listener);
	close((int)listener);
	close(fd);
	return err;
#else
	(void)sock_path;
	(void)message;
	(void)own_unix;
	return ENOSYS;
#endif
}
