/* /proc/net in a vhost's view, for the eBPF backend (not the shim: this
 * library only routes opens; the answers come from the root view daemon).
 *
 * netstat, lsof -i, ifconfig, route and Java's NetworkInterface (its IPv6
 * addresses) read files under /proc/net, whose contents follow the reader's
 * network namespace, and a vhost shares the machine's.  A seccomp filter
 * cannot read the path an open names, and stopping every open for the view
 * daemon would cost each one a round trip (about 20 us here).  So this
 * library, preloaded into the vhost's programs, sends only the opens of the
 * files the view serves to the daemon: it opens them with a dirfd no
 * process can hold (VIEW_OPEN_DIRFD), which the filter stops
 * (vaddr/view_filter.h); the daemon answers with the vhost's own file
 * (vaddr/procnet.py).  Outside a vhost, or if the daemon hands the call
 * back, the kernel ignores the dirfd of an absolute path and opens the
 * machine's file: nothing here can fail an open that would have worked.
 *
 * Dynamically linked programs only; static ones (Go) read the machine's. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

/* Above any descriptor a process can hold (fs.nr_open tops out at
 * 0x7fffffc0); vaddr/view_filter.h and vaddr/viewd.py use the same. */
#define VIEW_OPEN_DIRFD 0x7ffffff0

#define EXPORT __attribute__((visibility("default")))

/* Also in vaddr/procnet.py (SERVED), which decides what to answer. */
static const char *const served_names[] = {"tcp",   "tcp6",  "udp",        "udp6", "dev",
					   "if_inet6", "route", "ipv6_route", "unix", NULL};

/* /proc/net/NAME, /proc/self/net/NAME, /proc/thread-self/net/NAME or
 * /proc/<own pid>/net/NAME for a NAME the view serves. */
static int served(const char *path)
{
	static const char *const dirs[] = {"net/", "self/net/", "thread-self/net/", NULL};
	const char *rest;
	char own[32];
	int i, n;

	if (!path || strncmp(path, "/proc/", 6) != 0)
		return 0;
	rest = path + 6;
	for (i = 0; dirs[i]; i++)
		if (strncmp(rest, dirs[i], strlen(dirs[i])) == 0)
			break;
	if (dirs[i]) {
		rest += strlen(dirs[i]);
	} else {
		n = snprintf(own, sizeof(own), "%d/net/", (int)getpid());
		if (strncmp(rest, own, n) != 0)
			return 0;
		rest += n;
	}
	for (i = 0; served_names[i]; i++)
		if (strcmp(rest, served_names[i]) == 0)
			return 1;
	return 0;
}

/* The view's file, or -2 when path is not one (the caller opens it as
 * asked).  An error from the daemon also gives -2: the machine's file beats
 * none. */
static int view_open(const char *path, int flags)
{
	long fd;

	if ((flags & O_ACCMODE) != O_RDONLY || !served(path))
		return -2;
	fd = syscall(SYS_openat, VIEW_OPEN_DIRFD, path, flags, 0);
	return fd < 0 ? -2 : (int)fd;
}

static int mode_of(int flags, va_list ap)
{
	return (flags & O_CREAT) || (flags & O_TMPFILE) == O_TMPFILE ? va_arg(ap, int) : 0;
}

#define REAL(name, type) \
	static type real_##name; \
	if (!real_##name) \
		real_##name = (type)dlsym(RTLD_NEXT, #name)

typedef int (*open_fn)(const char *, int, ...);
typedef int (*openat_fn)(int, const char *, int, ...);
typedef int (*open2_fn)(const char *, int);
typedef int (*openat2_fn)(int, const char *, int);
typedef FILE *(*fopen_fn)(const char *, const char *);

#define OPEN_WRAPPER(name) \
	EXPORT int name(const char *path, int flags, ...) \
	{ \
		va_list ap; \
		int fd = view_open(path, flags), mode; \
		REAL(name, open_fn); \
		if (fd != -2) \
			return fd; \
		va_start(ap, flags); \
		mode = mode_of(flags, ap); \
		va_end(ap); \
		return real_##name(path, flags, mode); \
	}

#define OPENAT_WRAPPER(name) \
	EXPORT int name(int dirfd, const char *path, int flags, ...) \
	{ \
		va_list ap; \
		int fd = view_open(path, flags), mode; \
		REAL(name, openat_fn); \
		if (fd != -2) \
			return fd; \
		va_start(ap, flags); \
		mode = mode_of(flags, ap); \
		va_end(ap); \
		return real_##name(dirfd, path, flags, mode); \
	}

/* _FORTIFY_SOURCE builds call these instead. */
#define OPEN2_WRAPPER(name) \
	EXPORT int name(const char *path, int flags) \
	{ \
		int fd = view_open(path, flags); \
		REAL(name, open2_fn); \
		return fd != -2 ? fd : real_##name(path, flags); \
	}

#define OPENAT2_WRAPPER(name) \
	EXPORT int name(int dirfd, const char *path, int flags) \
	{ \
		int fd = view_open(path, flags); \
		REAL(name, openat2_fn); \
		return fd != -2 ? fd : real_##name(dirfd, path, flags); \
	}

/* stdio opens through glibc's internal open, which no wrapper sees. */
#define FOPEN_WRAPPER(name) \
	EXPORT FILE *name(const char *path, const char *mode) \
	{ \
		int fd = -2; \
		FILE *f; \
		REAL(name, fopen_fn); \
		if (mode && mode[0] == 'r' && !strchr(mode, '+')) \
			fd = view_open(path, O_RDONLY | (strchr(mode, 'e') ? O_CLOEXEC : 0)); \
		if (fd == -2) \
			return real_##name(path, mode); \
		f = fdopen(fd, mode); \
		if (!f) { \
			int err = errno; \
			close(fd); \
			errno = err; \
		} \
		return f; \
	}

OPEN_WRAPPER(open)
OPEN_WRAPPER(open64)
OPENAT_WRAPPER(openat)
OPENAT_WRAPPER(openat64)
OPEN2_WRAPPER(__open_2)
OPEN2_WRAPPER(__open64_2)
OPENAT2_WRAPPER(__openat_2)
OPENAT2_WRAPPER(__openat64_2)
FOPEN_WRAPPER(fopen)
FOPEN_WRAPPER(fopen64)
