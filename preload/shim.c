/* The LD_PRELOAD shim: gives a dynamically linked program a virtual IPv4
 * address without root.  Each vIP stands for a distinct real address in
 * 127.0.0.0/8 (see translate.h); calls that choose or reveal addresses are
 * translated both ways, so the program only ever sees vIPs.
 *
 *   VADDR_VIP   this process's vIP; unset for a client with none of its own
 *   VADDR_MAP   the map file, "VIP REAL" lines, written by `vaddr`
 *
 * Real functions are resolved once (pthread_once) with dlsym(RTLD_NEXT).
 * Every wrapper leaves errno as the real call set it. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <stdio.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <ifaddrs.h>
#include <net/if.h>
#include <netinet/in.h>
#include <pthread.h>
#include <spawn.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "translate.h"

#define EXPORT __attribute__((visibility("default")))

static int (*real_bind)(int, const struct sockaddr *, socklen_t);
static int (*real_connect)(int, const struct sockaddr *, socklen_t);
static int (*real_getsockname)(int, struct sockaddr *, socklen_t *);
static int (*real_getpeername)(int, struct sockaddr *, socklen_t *);
static int (*real_accept)(int, struct sockaddr *, socklen_t *);
static int (*real_accept4)(int, struct sockaddr *, socklen_t *, int);
static ssize_t (*real_sendto)(int, const void *, size_t, int, const struct sockaddr *, socklen_t);
static ssize_t (*real_sendmsg)(int, const struct msghdr *, int);
static int (*real_sendmmsg)(int, struct mmsghdr *, unsigned int, int);
static ssize_t (*real_recvfrom)(int, void *, size_t, int, struct sockaddr *, socklen_t *);
static ssize_t (*real_recvfrom_chk)(int, void *, size_t, size_t, int, struct sockaddr *, socklen_t *);
static ssize_t (*real_recvmsg)(int, struct msghdr *, int);
static int (*real_recvmmsg)(int, struct mmsghdr *, unsigned int, int, struct timespec *);
static int (*real_execve)(const char *, char *const[], char *const[]);
static int (*real_getifaddrs)(struct ifaddrs **);
static void (*real_freeifaddrs)(struct ifaddrs *);
static int (*real_execvpe)(const char *, char *const[], char *const[]);
static int (*real_posix_spawn)(pid_t *, const char *, const posix_spawn_file_actions_t *,
			       const posix_spawnattr_t *, char *const[], char *const[]);
static int (*real_posix_spawnp)(pid_t *, const char *, const posix_spawn_file_actions_t *,
				const posix_spawnattr_t *, char *const[], char *const[]);

static pthread_once_t once = PTHREAD_ONCE_INIT;
static pthread_mutex_t map_lock = PTHREAD_MUTEX_INITIALIZER;
static struct vmap map;
static struct stat map_stat;
static uint32_t own_vip;        /* 0: a client */
static char *map_path;          /* read once: daemons such as nginx replace environ */
static char *saved_env[3];      /* "NAME=value" to put back into children */

/* RTLD_NEXT searches the objects after this one, so a wrapper never
 * resolves to itself, even when LD_PRELOAD names the shim twice. */
static void *next(const char *name)
{
	return dlsym(RTLD_NEXT, name);
}

static char *save_var(const char *name)
{
	const char *value = getenv(name);
	char *entry;
	size_t n;

	if (!value)
		return NULL;
	n = strlen(name) + strlen(value) + 2;
	entry = malloc(n);
	if (entry)
		snprintf(entry, n, "%s=%s", name, value);
	return entry;
}

static void after_fork_child(void)
{
	pthread_mutex_init(&map_lock, NULL);
}

static void init(void)
{
	const char *vip = getenv("VADDR_VIP");
	struct in_addr a;

	real_bind = next("bind");
	real_connect = next("connect");
	real_getsockname = next("getsockname");
	real_getpeername = next("getpeername");
	real_accept = next("accept");
	real_accept4 = next("accept4");
	real_sendto = next("sendto");
	real_sendmsg = next("sendmsg");
	real_sendmmsg = next("sendmmsg");
	real_recvfrom = next("recvfrom");
	real_recvfrom_chk = next("__recvfrom_chk");
	real_recvmsg = next("recvmsg");
	real_recvmmsg = next("recvmmsg");
	real_execve = next("execve");
	real_execvpe = next("execvpe");
	real_getifaddrs = next("getifaddrs");
	real_freeifaddrs = next("freeifaddrs");
	real_posix_spawn = next("posix_spawn");
	real_posix_spawnp = next("posix_spawnp");
	if (vip && *vip && inet_pton(AF_INET, vip, &a) == 1)
		own_vip = a.s_addr;
	if (getenv("VADDR_MAP"))
		map_path = strdup(getenv("VADDR_MAP"));
	saved_env[0] = save_var("LD_PRELOAD");
	saved_env[1] = save_var("VADDR_MAP");
	saved_env[2] = save_var("VADDR_VIP");
	pthread_atfork(NULL, NULL, after_fork_child);
}

__attribute__((constructor)) static void shim_constructor(void)
{
	pthread_once(&once, init);
}

#define RECHECK_NS 10000000L  /* 10 ms */
static struct timespec last_check;

/* Re-read the map when the file changed (vaddr replaces it by rename when a
 * vhost comes or goes).  The file is looked at once per RECHECK_NS, or at
 * once when `force` says a lookup just missed: a stat() per call would cost
 * more than the call itself.  Caller holds map_lock. */
static void refresh_map(int force)
{
	const char *path = map_path;
	struct timespec now;
	struct stat st;
	char *text;
	ssize_t got;
	int fd;

	clock_gettime(CLOCK_MONOTONIC_COARSE, &now);
	if (!force && (now.tv_sec - last_check.tv_sec) * 1000000000L + now.tv_nsec - last_check.tv_nsec < RECHECK_NS)
		return;
	last_check = now;
	if (!path || stat(path, &st) != 0)
		return;
	if (st.st_ino == map_stat.st_ino && st.st_size == map_stat.st_size &&
	    st.st_mtim.tv_sec == map_stat.st_mtim.tv_sec && st.st_mtim.tv_nsec == map_stat.st_mtim.tv_nsec)
		return;
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return;
	flock(fd, LOCK_SH);
	fstat(fd, &st);
	text = malloc(st.st_size + 1);
	got = text ? read(fd, text, st.st_size) : -1;
	flock(fd, LOCK_UN);
	close(fd);
	if (got >= 0) {
		struct vmap fresh;
		if (vmap_parse(&fresh, text, got) == 0) {
			vmap_free(&map);
			map = fresh;
			map_stat = st;
		}
	}
	free(text);
}

/* vIP -> real, 0 when addr is not a vIP.  A miss looks at the file again:
 * the vIP may belong to a vhost made a moment ago. */
static uint32_t real_of(uint32_t vip)
{
	uint32_t real;

	pthread_mutex_lock(&map_lock);
	refresh_map(0);
	real = vmap_real_of(&map, vip);
	if (!real) {
		refresh_map(1);
		real = vmap_real_of(&map, vip);
	}
	pthread_mutex_unlock(&map_lock);
	return real;
}

static int is_loopback_not_host(uint32_t addr)
{
	return (ntohl(addr) >> 24) == 127 && addr != htonl(INADDR_LOOPBACK);
}

/* real -> vIP.  Only a loopback address other than 127.0.0.1 can be a real
 * address we have not heard of yet; others need no second look. */
static uint32_t vip_of(uint32_t real)
{
	uint32_t vip;

	pthread_mutex_lock(&map_lock);
	refresh_map(0);
	vip = vmap_vip_of(&map, real);
	if (!vip && is_loopback_not_host(real)) {
		refresh_map(1);
		vip = vmap_vip_of(&map, real);
	}
	pthread_mutex_unlock(&map_lock);
	return vip;
}

/* The IPv4 address inside a socket address: AF_INET, or AF_INET6 holding a
 * v4-mapped address (::ffff:a.b.c.d), as dual-stack programs (Java, nginx)
 * use.  NULL for anything else. */
static uint32_t *v4_in(const struct sockaddr *sa, socklen_t len)
{
	if (!sa)
		return NULL;
	if (sa->sa_family == AF_INET && len >= (socklen_t)sizeof(struct sockaddr_in))
		return (uint32_t *)&((struct sockaddr_in *)sa)->sin_addr.s_addr;
	if (sa->sa_family == AF_INET6 && len >= (socklen_t)sizeof(struct sockaddr_in6) &&
	    IN6_IS_ADDR_V4MAPPED(&((struct sockaddr_in6 *)sa)->sin6_addr))
		return &((struct sockaddr_in6 *)sa)->sin6_addr.s6_addr32[3];
	return NULL;
}

static int v6only(int fd)
{
	int on = 0;
	socklen_t len = sizeof(on);

	return getsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &on, &len) == 0 && on;
}

/* Rewrite a returned address from real to virtual, in place. */
static void reveal(struct sockaddr *sa, socklen_t *len)
{
	uint32_t *v4, vip;
	int saved = errno;

	if (!len || !(v4 = v4_in(sa, *len)))
		return;
	vip = vip_of(*v4);
	if (vip)
		*v4 = vip;
	errno = saved;
}

/* Before a connect or send to a vIP: give an unbound socket the vhost's own
 * address, so the peer sees it, as the kernel backend's connect hook does. */
static void bind_own(int fd)
{
	struct sockaddr_storage cur, own;
	socklen_t len = sizeof(cur);
	uint32_t *v4, real;
	int one = 1;

	if (!own_vip || real_getsockname(fd, (struct sockaddr *)&cur, &len) != 0)
		return;
	if (cur.ss_family == AF_INET) {
		struct sockaddr_in *sin = (struct sockaddr_in *)&cur;
		if (sin->sin_addr.s_addr != INADDR_ANY || sin->sin_port != 0)
			return;
	} else if (cur.ss_family == AF_INET6) {
		struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&cur;
		if (!IN6_IS_ADDR_UNSPECIFIED(&sin6->sin6_addr) || sin6->sin6_port != 0 || v6only(fd))
			return;
	} else {
		return;
	}
	real = real_of(own_vip);
	if (!real)
		return;
	memset(&own, 0, sizeof(own));
	own.ss_family = cur.ss_family;
	if (cur.ss_family == AF_INET6)
		((struct sockaddr_in6 *)&own)->sin6_addr.s6_addr16[5] = 0xffff;
	v4 = v4_in((struct sockaddr *)&own, cur.ss_family == AF_INET ? sizeof(struct sockaddr_in) : sizeof(struct sockaddr_in6));
	*v4 = real;
	/* Port chosen at connect time, as for an unbound socket. */
	setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof(one));
	real_bind(fd, (struct sockaddr *)&own, len);
}

/* The real destination for addr, in *out; returns addr itself when no
 * translation applies. */
static const struct sockaddr *hide(int fd, const struct sockaddr *addr, socklen_t len, struct sockaddr_storage *out)
{
	uint32_t *v4, real;
	int saved = errno;

	if (!v4_in(addr, len) || len > (socklen_t)sizeof(*out))
		return addr;
	real = real_of(*v4_in(addr, len));
	if (!real)
		return addr;
	bind_own(fd);
	memcpy(out, addr, len);
	v4 = v4_in((struct sockaddr *)out, len);
	*v4 = real;
	errno = saved;
	return (const struct sockaddr *)out;
}

/* A wildcard bind in a vhost: its own real address.  An IPV6_V6ONLY [::]
 * socket (nginx's `listen [::]`, next to its IPv4 one) cannot hold a v4
 * address: park it on [::1] at a free port, where nothing reaches it, as the
 * eBPF backend does, so the program starts as on a host without IPv6. */
static int bind_wildcard(int fd, const struct sockaddr *addr, socklen_t len)
{
	struct sockaddr_storage copy;
	uint32_t real = real_of(own_vip);

	if (!real || len > (socklen_t)sizeof(copy))
		return real_bind(fd, addr, len);
	memcpy(&copy, addr, len);
	if (copy.ss_family == AF_INET) {
		((struct sockaddr_in *)&copy)->sin_addr.s_addr = real;
	} else if (v6only(fd)) {
		((struct sockaddr_in6 *)&copy)->sin6_addr = in6addr_loopback;
		((struct sockaddr_in6 *)&copy)->sin6_port = 0;
	} else {
		struct in6_addr *a = &((struct sockaddr_in6 *)&copy)->sin6_addr;
		memset(a, 0, sizeof(*a));
		a->s6_addr16[5] = 0xffff;
		a->s6_addr32[3] = real;
	}
	return real_bind(fd, (struct sockaddr *)&copy, len);
}

EXPORT int bind(int fd, const struct sockaddr *addr, socklen_t len)
{
	struct sockaddr_storage copy;
	uint32_t *v4, want, real;

	pthread_once(&once, init);
	if (addr && own_vip && ((addr->sa_family == AF_INET && len >= (socklen_t)sizeof(struct sockaddr_in) &&
				 ((const struct sockaddr_in *)addr)->sin_addr.s_addr == INADDR_ANY) ||
				(addr->sa_family == AF_INET6 && len >= (socklen_t)sizeof(struct sockaddr_in6) &&
				 IN6_IS_ADDR_UNSPECIFIED(&((const struct sockaddr_in6 *)addr)->sin6_addr))))
		return bind_wildcard(fd, addr, len);
	if (!v4_in(addr, len) || len > (socklen_t)sizeof(copy))
		return real_bind(fd, addr, len);
	memcpy(&copy, addr, len);
	v4 = v4_in((struct sockaddr *)&copy, len);
	want = *v4;
	if ((real = real_of(want)) != 0) {
		if (want != own_vip) {
			/* Another vhost's address: as on a host that lacks it. */
			errno = EADDRNOTAVAIL;
			return -1;
		}
		*v4 = real;
	}
	return real_bind(fd, (struct sockaddr *)&copy, len);
}

EXPORT int connect(int fd, const struct sockaddr *addr, socklen_t len)
{
	struct sockaddr_storage copy;

	pthread_once(&once, init);
	return real_connect(fd, hide(fd, addr, len, &copy), len);
}

EXPORT int getsockname(int fd, struct sockaddr *addr, socklen_t *len)
{
	int ret;

	pthread_once(&once, init);
	ret = real_getsockname(fd, addr, len);
	if (ret == 0)
		reveal(addr, len);
	return ret;
}

EXPORT int getpeername(int fd, struct sockaddr *addr, socklen_t *len)
{
	int ret;

	pthread_once(&once, init);
	ret = real_getpeername(fd, addr, len);
	if (ret == 0)
		reveal(addr, len);
	return ret;
}

EXPORT int accept(int fd, struct sockaddr *addr, socklen_t *len)
{
	int ret;

	pthread_once(&once, init);
	ret = real_accept(fd, addr, len);
	if (ret >= 0)
		reveal(addr, len);
	return ret;
}

EXPORT int accept4(int fd, struct sockaddr *addr, socklen_t *len, int flags)
{
	int ret;

	pthread_once(&once, init);
	ret = real_accept4(fd, addr, len, flags);
	if (ret >= 0)
		reveal(addr, len);
	return ret;
}

EXPORT ssize_t sendto(int fd, const void *buf, size_t n, int flags, const struct sockaddr *addr, socklen_t len)
{
	struct sockaddr_storage copy;

	pthread_once(&once, init);
	return real_sendto(fd, buf, n, flags, hide(fd, addr, len, &copy), len);
}

EXPORT ssize_t sendmsg(int fd, const struct msghdr *msg, int flags)
{
	struct sockaddr_storage copy;
	struct msghdr m;

	pthread_once(&once, init);
	if (!msg || !msg->msg_name)
		return real_sendmsg(fd, msg, flags);
	m = *msg;
	m.msg_name = (void *)hide(fd, msg->msg_name, msg->msg_namelen, &copy);
	return real_sendmsg(fd, &m, flags);
}

EXPORT int sendmmsg(int fd, struct mmsghdr *msgs, unsigned int n, int flags)
{
	struct sockaddr_storage copies[64];
	void *names[64];
	unsigned int i, k = n < 64 ? n : 64;
	int ret, saved;

	pthread_once(&once, init);
	/* Rewrite in place for the call, then restore: the caller's array is theirs. */
	for (i = 0; i < k; i++) {
		names[i] = msgs[i].msg_hdr.msg_name;
		if (names[i])
			msgs[i].msg_hdr.msg_name = (void *)hide(fd, names[i], msgs[i].msg_hdr.msg_namelen, &copies[i]);
	}
	ret = real_sendmmsg(fd, msgs, k, flags);
	saved = errno;
	for (i = 0; i < k; i++)
		msgs[i].msg_hdr.msg_name = names[i];
	errno = saved;
	return ret;
}

EXPORT ssize_t recvfrom(int fd, void *buf, size_t n, int flags, struct sockaddr *addr, socklen_t *len)
{
	ssize_t ret;

	pthread_once(&once, init);
	ret = real_recvfrom(fd, buf, n, flags, addr, len);
	if (ret >= 0)
		reveal(addr, len);
	return ret;
}

/* What _FORTIFY_SOURCE builds call instead of recvfrom. */
EXPORT ssize_t __recvfrom_chk(int fd, void *buf, size_t n, size_t buflen, int flags, struct sockaddr *addr,
			      socklen_t *len)
{
	ssize_t ret;

	pthread_once(&once, init);
	ret = real_recvfrom_chk ? real_recvfrom_chk(fd, buf, n, buflen, flags, addr, len)
				: real_recvfrom(fd, buf, n, flags, addr, len);
	if (ret >= 0)
		reveal(addr, len);
	return ret;
}

EXPORT ssize_t recvmsg(int fd, struct msghdr *msg, int flags)
{
	ssize_t ret;

	pthread_once(&once, init);
	ret = real_recvmsg(fd, msg, flags);
	if (ret >= 0 && msg)
		reveal(msg->msg_name, &msg->msg_namelen);
	return ret;
}

EXPORT int recvmmsg(int fd, struct mmsghdr *msgs, unsigned int n, int flags, struct timespec *timeout)
{
	int ret, i;

	pthread_once(&once, init);
	ret = real_recvmmsg(fd, msgs, n, flags, timeout);
	for (i = 0; i < ret; i++)
		reveal(msgs[i].msg_hdr.msg_name, &msgs[i].msg_hdr.msg_namelen);
	return ret;
}

/* The vhost's own address as an interface, "vaddr0", ahead of the real list,
 * so that programs looking for their address (hostname -I, daemons picking
 * an address to advertise) find the vIP.  One block, tagged, so that our
 * freeifaddrs can tell it from glibc's. */
#define IFA_TAG 0x76616464u  /* "vadd" */

struct own_ifaddr {
	struct ifaddrs ifa;
	struct sockaddr_in addr, mask;
	char name[IFNAMSIZ];
	uint32_t tag;
};

EXPORT int getifaddrs(struct ifaddrs **out)
{
	struct own_ifaddr *own;
	int ret;

	pthread_once(&once, init);
	ret = real_getifaddrs(out);
	if (ret != 0 || !own_vip)
		return ret;
	own = calloc(1, sizeof(*own));
	if (!own)
		return ret;  /* the real list still serves */
	own->tag = IFA_TAG;
	strcpy(own->name, "vaddr0");
	own->addr.sin_family = own->mask.sin_family = AF_INET;
	own->addr.sin_addr.s_addr = own_vip;
	own->mask.sin_addr.s_addr = 0xffffffff;
	own->ifa.ifa_name = own->name;
	own->ifa.ifa_flags = IFF_UP | IFF_RUNNING;
	own->ifa.ifa_addr = (struct sockaddr *)&own->addr;
	own->ifa.ifa_netmask = (struct sockaddr *)&own->mask;
	own->ifa.ifa_next = *out;
	*out = &own->ifa;
	return 0;
}

EXPORT void freeifaddrs(struct ifaddrs *ifa)
{
	struct own_ifaddr *own = (struct own_ifaddr *)ifa;

	pthread_once(&once, init);
	if (ifa && own->tag == IFA_TAG && ifa->ifa_name == own->name) {
		real_freeifaddrs(ifa->ifa_next);
		free(own);
		return;
	}
	real_freeifaddrs(ifa);
}

/* An environment for a child that still carries the shim and its variables,
 * even when the program built a clean one (daemons often do). */
static char **with_shim_env(char *const envp[])
{
	size_t n = 0, i, k, extra = 0;
	char **out;

	while (envp && envp[n])
		n++;
	out = malloc((n + 4) * sizeof(*out));
	if (!out)
		return NULL;
	for (i = 0; i < n; i++)
		out[i] = envp[i];
	for (k = 0; k < 3; k++) {
		size_t name_len;
		int present = 0;
		if (!saved_env[k])
			continue;
		name_len = strchr(saved_env[k], '=') - saved_env[k] + 1;
		for (i = 0; i < n && !present; i++)
			present = strncmp(envp[i], saved_env[k], name_len) == 0;
		if (!present)
			out[n + extra++] = saved_env[k];
	}
	out[n + extra] = NULL;
	return out;
}

EXPORT int execve(const char *path, char *const argv[], char *const envp[])
{
	char **env;
	int ret;

	pthread_once(&once, init);
	env = with_shim_env(envp);
	ret = real_execve(path, argv, env ? env : envp);
	free(env);
	return ret;
}

/* glibc's execv and execvp reach execve through an internal alias that no
 * preload can interpose, so they are wrapped themselves. */
EXPORT int execv(const char *path, char *const argv[])
{
	return execve(path, argv, environ);
}

EXPORT int execvpe(const char *file, char *const argv[], char *const envp[])
{
	char **env;
	int ret;

	pthread_once(&once, init);
	env = with_shim_env(envp);
	ret = real_execvpe(file, argv, env ? env : envp);
	free(env);
	return ret;
}

EXPORT int execvp(const char *file, char *const argv[])
{
	return execvpe(file, argv, environ);
}

EXPORT int posix_spawn(pid_t *pid, const char *path, const posix_spawn_file_actions_t *fa,
		       const posix_spawnattr_t *attr, char *const argv[], char *const envp[])
{
	char **env;
	int ret;

	pthread_once(&once, init);
	env = with_shim_env(envp);
	ret = real_posix_spawn(pid, path, fa, attr, argv, env ? env : envp);
	free(env);
	return ret;
}

EXPORT int posix_spawnp(pid_t *pid, const char *file, const posix_spawn_file_actions_t *fa,
			const posix_spawnattr_t *attr, char *const argv[], char *const envp[])
{
	char **env;
	int ret;

	pthread_once(&once, init);
	env = with_shim_env(envp);
	ret = real_posix_spawnp(pid, file, fa, attr, argv, env ? env : envp);
	free(env);
	return ret;
}
