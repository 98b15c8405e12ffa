/* Membership that a program cannot lose by accident.
 *
 * Every process of an LD_PRELOAD vhost holds its member file,
 * RUN_DIR/members/VIP, open at one descriptor number (VADDR_MEMBER_FD) with
 * a shared flock; vaddr asks the flock whether the vhost lives and reads
 * /proc/PID/fd/N to list its processes.  The descriptor is inherited across
 * fork, exec, setsid and double forks, and the environment and the process
 * title play no part, so daemons that rewrite either stay members.
 *
 * What a program could still do to the descriptor, these wrappers turn
 * aside: close() of it reports success and keeps it; close_range() and
 * closefrom() close around it; dup2()/dup3() onto it first move the hold to
 * another number.  A process that lost it anyway (a raw close_range system
 * call before an exec) takes a new hold here, at init of the next image.
 * Not covered: raw system calls on it, and fcntl(F_SETFD, FD_CLOEXEC) on it
 * followed by an exec of a program the shim cannot enter. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "member.h"

#define EXPORT __attribute__((visibility("default")))

static int (*real_close)(int);
static int (*real_dup2)(int, int);
static int (*real_dup3)(int, int, int);
static int (*real_close_range)(unsigned int, unsigned int, int);  /* glibc >= 2.34 */

static pthread_once_t resolved = PTHREAD_ONCE_INIT;
static volatile int held = -1;     /* our descriptor, or -1 */
static char env_entry[32];

static void resolve(void)
{
	real_close = dlsym(RTLD_NEXT, "close");
	real_dup2 = dlsym(RTLD_NEXT, "dup2");
	real_dup3 = dlsym(RTLD_NEXT, "dup3");
	real_close_range = dlsym(RTLD_NEXT, "close_range");
}

static void set_env_entry(int fd)
{
	snprintf(env_entry, sizeof(env_entry), "VADDR_MEMBER_FD=%d", fd);
}

const char *member_env(void)
{
	return held >= 0 ? env_entry : NULL;
}

/* Whether fd is open on the same file as path. */
static int is_open_on(int fd, const char *path)
{
	struct stat a, b;

	return fd >= 0 && fstat(fd, &a) == 0 && stat(path, &b) == 0 && a.st_dev == b.st_dev && a.st_ino == b.st_ino;
}

void member_init(const char *map_path, const char *vip)
{
	char path[PATH_MAX];
	const char *slash = strrchr(map_path, '/');
	const char *wanted = getenv("VADDR_MEMBER_FD");
	int want = wanted ? atoi(wanted) : -1, fd, moved;

	pthread_once(&resolved, resolve);
	if (!slash || snprintf(path, sizeof(path), "%.*s/members/%s", (int)(slash - map_path), map_path, vip)
	    >= (int)sizeof(path))
		return;
	if (is_open_on(want, path)) {  /* inherited: the usual case */
		held = want;
		set_env_entry(want);
		return;
	}
	fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	if (fd < 0)
		return;  /* the vhost is gone: binds and connects fail closed */
	flock(fd, LOCK_SH);
	/* At the number asked for when it is free, else the next free above. */
	moved = fcntl(fd, F_DUPFD, want > 2 ? want : 1000);
	if (moved >= 0) {
		real_close(fd);
		fd = moved;
	} else {
		fcntl(fd, F_SETFD, 0);
	}
	held = fd;
	set_env_entry(fd);
}

/* Before the program's own descriptor takes `fd`: move our hold off it. */
static void step_aside(int fd)
{
	int moved;

	if (fd < 0 || fd != held)
		return;
	moved = fcntl(held, F_DUPFD, held + 1);
	if (moved >= 0) {
		held = moved;
		set_env_entry(moved);  /* children are told the new number */
	}
}

EXPORT int close(int fd)
{
	pthread_once(&resolved, resolve);
	if (fd >= 0 && fd == held)
		return 0;
	return real_close(fd);
}

static int close_range_raw(unsigned int first, unsigned int last, int flags)
{
	if (real_close_range)
		return real_close_range(first, last, flags);
	return syscall(SYS_close_range, first, last, flags);
}

/* close_range in up to two parts, around our descriptor. */
static int close_around(unsigned int first, unsigned int last, int flags)
{
	unsigned int h = (unsigned int)held;
	int ret = 0;

	if (held < 0 || h < first || h > last)
		return close_range_raw(first, last, flags);
	if (h > first)
		ret = close_range_raw(first, h - 1, flags);
	if (ret == 0 && h < last)
		ret = close_range_raw(h + 1, last, flags);
	return ret;
}

EXPORT int close_range(unsigned int first, unsigned int last, int flags)
{
	pthread_once(&resolved, resolve);
	return close_around(first, last, flags);
}

EXPORT void closefrom(int lowfd)
{
	int saved = errno;

	pthread_once(&resolved, resolve);
	if (close_around(lowfd < 0 ? 0 : lowfd, ~0U, 0) != 0) {
		/* No close_range (kernels before 5.9): one at a time. */
		long max = sysconf(_SC_OPEN_MAX);
		for (int fd = lowfd; fd < max; fd++)
			if (fd != held)
				real_close(fd);
	}
	errno = saved;
}

EXPORT int dup2(int oldfd, int newfd)
{
	pthread_once(&resolved, resolve);
	if (oldfd != newfd)
		step_aside(newfd);
	return real_dup2(oldfd, newfd);
}

EXPORT int dup3(int oldfd, int newfd, int flags)
{
	pthread_once(&resolved, resolve);
	if (oldfd != newfd)
		step_aside(newfd);
	return real_dup3(oldfd, newfd, flags);
}
