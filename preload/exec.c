/* The shim's exec wrappers: children stay in the vhost (the shim and its
 * variables are put back into environments that dropped them), and what the
 * shim cannot enter (static and Go executables) is refused from inside a
 * vhost rather than run on the machine's own addresses. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <spawn.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "shim.h"
#include "translate.h"

#define EXPORT __attribute__((visibility("default")))

extern char **environ;

static int (*real_execve)(const char *, char *const[], char *const[]);
static int (*real_execvpe)(const char *, char *const[], char *const[]);
static int (*real_fexecve)(int, char *const[], char *const[]);
static int (*real_execveat)(int, const char *, char *const[], char *const[], int);  /* glibc >= 2.34 */
static int (*real_posix_spawn)(pid_t *, const char *, const posix_spawn_file_actions_t *,
			       const posix_spawnattr_t *, char *const[], char *const[]);
static int (*real_posix_spawnp)(pid_t *, const char *, const posix_spawn_file_actions_t *,
				const posix_spawnattr_t *, char *const[], char *const[]);
static pthread_once_t resolved = PTHREAD_ONCE_INIT;

static void resolve(void)
{
	real_execve = dlsym(RTLD_NEXT, "execve");
	real_execvpe = dlsym(RTLD_NEXT, "execvpe");
	real_fexecve = dlsym(RTLD_NEXT, "fexecve");
	real_execveat = dlsym(RTLD_NEXT, "execveat");
	real_posix_spawn = dlsym(RTLD_NEXT, "posix_spawn");
	real_posix_spawnp = dlsym(RTLD_NEXT, "posix_spawnp");
}

static void exec_ready(void)
{
	shim_ready();
	pthread_once(&resolved, resolve);
}

/* An exec from a vhost of what the shim cannot enter would run on the
 * machine's own addresses: refuse it, with vaddr spawn's reason. */
static int refuse_exec(const char *path)
{
	int saved = errno, kind;

	if (!in_vhost || !path)
		return 0;
	kind = exec_kind(path);
	errno = saved;
	if (kind == EXEC_SERVABLE)
		return 0;
	dprintf(2, "vaddr: %s is %s: the LD_PRELOAD shim cannot give it an address "
		"(fix: run it with the eBPF backend: sudo vaddr spawn --backend ebpf ...)\n",
		path, kind == EXEC_STATIC ? "a static binary" : "a Go program");
	errno = EACCES;
	return 1;
}

/* The same for a file that execvp-style calls look up in PATH. */
static int refuse_exec_file(const char *file)
{
	const char *dirs = getenv("PATH"), *end;
	char candidate[4096];

	if (!in_vhost || !file || strchr(file, '/'))
		return refuse_exec(file);
	for (dirs = dirs ? dirs : "/bin:/usr/bin"; *dirs; dirs = *end ? end + 1 : end) {
		int saved = errno, found;

		end = strchrnul(dirs, ':');
		if (snprintf(candidate, sizeof(candidate), "%.*s/%s", (int)(end - dirs), dirs, file) >= (int)sizeof(candidate))
			continue;
		found = access(candidate, X_OK) == 0;
		errno = saved;
		if (found)
			return refuse_exec(candidate);
	}
	return 0;
}

/* ---- keeping children in the vhost -------------------------------------- */

/* glibc's execv, execvp, execl* and fexecve reach execve through internal
 * aliases that no preload can interpose, so each is wrapped itself. */

EXPORT int execve(const char *path, char *const argv[], char *const envp[])
{
	char **env;
	int ret;

	exec_ready();
	if (refuse_exec(path))
		return -1;
	env = child_env(envp);
	ret = real_execve(path, argv, env ? env : envp);
	free_env(env);
	return ret;
}

EXPORT int execv(const char *path, char *const argv[])
{
	return execve(path, argv, environ);
}

EXPORT int execvpe(const char *file, char *const argv[], char *const envp[])
{
	char **env;
	int ret;

	exec_ready();
	if (refuse_exec_file(file))
		return -1;
	env = child_env(envp);
	ret = real_execvpe(file, argv, env ? env : envp);
	free_env(env);
	return ret;
}

EXPORT int execvp(const char *file, char *const argv[])
{
	return execvpe(file, argv, environ);
}

EXPORT int fexecve(int fd, char *const argv[], char *const envp[])
{
	char **env;
	int ret;

	char self[64];

	exec_ready();
	snprintf(self, sizeof(self), "/proc/self/fd/%d", fd);
	if (refuse_exec(self))
		return -1;
	env = child_env(envp);
	ret = real_fexecve(fd, argv, env ? env : envp);
	free_env(env);
	return ret;
}

/* execveat's file as a path: absolute, relative to the working folder, or
 * through /proc for a descriptor (AT_EMPTY_PATH) or a folder descriptor. */
static const char *at_path(int dirfd, const char *path, char *buf, size_t size)
{
	if (path[0] == '/' || (dirfd == AT_FDCWD && path[0]))
		return path;
	if (path[0])
		snprintf(buf, size, "/proc/self/fd/%d/%s", dirfd, path);
	else
		snprintf(buf, size, "/proc/self/fd/%d", dirfd);
	return buf;
}

EXPORT int execveat(int dirfd, const char *path, char *const argv[], char *const envp[], int flags)
{
	char **env, target[4096];
	int ret;

	exec_ready();
	if (!real_execveat) {
		errno = ENOSYS;
		return -1;
	}
	if (refuse_exec(at_path(dirfd, path, target, sizeof(target))))
		return -1;
	env = child_env(envp);
	ret = real_execveat(dirfd, path, argv, env ? env : envp, flags);
	free_env(env);
	return ret;
}

/* The execl family: the variadic list becomes an argv on the stack (exec
 * either replaces the process or returns at once, so no allocation), then
 * goes to our execve/execvpe wrapper.  ap is passed by pointer: a va_list
 * handed on by value may not be read again by its owner (C11 7.16), and
 * execle reads envp after argv's NULL. */
typedef int (*exec_fn)(const char *, char *const[], char *const[]);

static int exec_list(exec_fn run, const char *target, const char *arg0, va_list *ap, int env_follows)
{
	va_list counter;
	size_t n, i;

	va_copy(counter, *ap);
	for (n = 1; va_arg(counter, const char *); n++)
		;
	va_end(counter);
	{
		char *argv[n + 1];
		char *const *envp = environ;

		argv[0] = (char *)arg0;
		for (i = 1; i <= n; i++)
			argv[i] = va_arg(*ap, char *);  /* the last is the NULL */
		if (env_follows)
			envp = va_arg(*ap, char *const *);
		return run(target, argv, envp);
	}
}

EXPORT int execl(const char *path, const char *arg0, ...)
{
	va_list ap;
	int ret;

	va_start(ap, arg0);
	ret = exec_list(execve, path, arg0, &ap, 0);
	va_end(ap);
	return ret;
}

EXPORT int execlp(const char *file, const char *arg0, ...)
{
	va_list ap;
	int ret;

	va_start(ap, arg0);
	ret = exec_list(execvpe, file, arg0, &ap, 0);
	va_end(ap);
	return ret;
}

EXPORT int execle(const char *path, const char *arg0, ...)
{
	va_list ap;
	int ret;

	va_start(ap, arg0);
	ret = exec_list(execve, path, arg0, &ap, 1);
	va_end(ap);
	return ret;
}

EXPORT int posix_spawn(pid_t *pid, const char *path, const posix_spawn_file_actions_t *fa,
		       const posix_spawnattr_t *attr, char *const argv[], char *const envp[])
{
	char **env;
	int ret;

	exec_ready();
	if (refuse_exec(path))
		return errno;  /* posix_spawn reports, not sets, errno */
	env = child_env(envp);
	ret = real_posix_spawn(pid, path, fa, attr, argv, env ? env : envp);
	free_env(env);
	return ret;
}

EXPORT int posix_spawnp(pid_t *pid, const char *file, const posix_spawn_file_actions_t *fa,
			const posix_spawnattr_t *attr, char *const argv[], char *const envp[])
{
	char **env;
	int ret;

	exec_ready();
	if (refuse_exec_file(file))
		return errno;
	env = child_env(envp);
	ret = real_posix_spawnp(pid, file, fa, attr, argv, env ? env : envp);
	free_env(env);
	return ret;
}
