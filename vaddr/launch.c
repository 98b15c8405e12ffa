/* Starts a program directly inside a cgroup with clone3(CLONE_INTO_CGROUP),
 * Linux 5.7+.  Moving a running process instead (a write to cgroup.procs)
 * waits for an RCU grace period: 5 to 25 ms per move on the machines we
 * measured, which would dominate a spawn.
 *
 * Called from Python through ctypes.  The child runs only async-signal-safe
 * calls before execve, so a multithreaded caller (a test runner) is safe.
 * Exec failures come back through a close-on-exec pipe, so the caller learns
 * "not found" or "permission denied" synchronously, as posix_spawn reports. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <linux/sched.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef CLONE_INTO_CGROUP
#define CLONE_INTO_CGROUP 0x200000000ULL
#endif
#ifndef SYS_clone3
#define SYS_clone3 435
#endif

#include "view_filter.h"

struct launch_ids {
	int uid;           /* -1: keep */
	int gid;           /* -1: keep */
	int ngroups;       /* -1: keep */
	const gid_t *groups;
};

static void child_fail(int pipe_w, int err)
{
	ssize_t unused = write(pipe_w, &err, sizeof(err));
	(void)unused;
	_exit(127);
}

static void child_exec(int pipe_w, const char *path, char *const argv[], char *const envp[],
		       const int *dups, int ndups, const struct launch_ids *ids, const struct launch_view *view)
{
	sigset_t none;
	int i;

	/* A Python parent ignores SIGPIPE and may block signals; the program
	 * should start as from a shell. */
	signal(SIGPIPE, SIG_DFL);
	signal(SIGXFSZ, SIG_DFL);
	sigemptyset(&none);
	sigprocmask(SIG_SETMASK, &none, NULL);
	/* Before the privileges go: installing the filter without no_new_privs
	 * needs CAP_SYS_ADMIN, and no_new_privs would break setuid programs. */
	if (view && view->sock_path) {
		int err = view_install(view->sock_path, view->message);
		if (err)
			child_fail(pipe_w, err | VIEW_FAILED);
	}
	for (i = 0; i < ndups; i++) {
		if (dups[2 * i] == dups[2 * i + 1]) {
			int flags = fcntl(dups[2 * i], F_GETFD);
			if (flags >= 0)
				fcntl(dups[2 * i], F_SETFD, flags & ~FD_CLOEXEC);
		} else if (dup2(dups[2 * i], dups[2 * i + 1]) < 0) {
			child_fail(pipe_w, errno);
		}
	}
	if (ids->ngroups >= 0 && setgroups(ids->ngroups, ids->groups) < 0)
		child_fail(pipe_w, errno);
	if (ids->gid >= 0 && setresgid(ids->gid, ids->gid, ids->gid) < 0)
		child_fail(pipe_w, errno);
	if (ids->uid >= 0 && setresuid(ids->uid, ids->uid, ids->uid) < 0)
		child_fail(pipe_w, errno);
	execve(path, argv, envp);
	child_fail(pipe_w, errno);
}

/* Returns the child's pid, or -errno: of clone3 (the caller may fall back)
 * or of the child's set-up or execve (then the child has been reaped; an
 * errno with VIEW_FAILED set came from giving it its interface view). */
long vaddr_launch(int cgroup_fd, const char *path, char *const argv[], char *const envp[],
		  const int *dups, int ndups, const struct launch_ids *ids, const struct launch_view *view,
		  int *exec_failed)
{
	struct clone_args args;
	int pipefd[2], err = 0;
	long pid;
	ssize_t n;

	*exec_failed = 0;
	if (pipe2(pipefd, O_CLOEXEC) < 0)
		return -errno;
	memset(&args, 0, sizeof(args));
	args.flags = CLONE_INTO_CGROUP;
	args.exit_signal = SIGCHLD;
	args.cgroup = (uint64_t)cgroup_fd;
	pid = syscall(SYS_clone3, &args, sizeof(args));
	if (pid == 0) {
		close(pipefd[0]);
		child_exec(pipefd[1], path, argv, envp, dups, ndups, ids, view);
	}
	err = errno;
	close(pipefd[1]);
	if (pid < 0) {
		close(pipefd[0]);
		return -err;
	}
	do {
		n = read(pipefd[0], &err, sizeof(err));
	} while (n < 0 && errno == EINTR);
	close(pipefd[0]);
	if (n == sizeof(err)) {
		int status;
		while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
			;
		*exec_failed = 1;
		return -err;
	}
	return pid;
}
