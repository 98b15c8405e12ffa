/* Starts a program directly inside a cgroup with clone3(CLONE_INTO_CGROUP),
 * Linux 5.7+.  Moving a running process instead (a write to cgroup.procs)
 * waits for an RCU grace period: 5 to 25 ms per move on the machines we
 * measured, which would dominate a spawn.
 *
 * Called from Python through ctypes.  The child runs only async-signal-safe
 * calls before execve, so a multithreaded caller (a test runner) is safe.
 * On x86-64 the child shares the caller's memory until it execs, as
 * posix_spawn's does (CLONE_VM | CLONE_VFORK): copying a test runner's page
 * tables cost 3 ms a spawn from a bare interpreter, 20 ms from one holding
 * 500 MB.  So it touches nothing but its own stack, uses raw system calls
 * where glibc would act for the whole process (set*id), and starts with every
 * signal blocked and every handler reset, so none of the caller's handlers
 * can run on its stack.
 * Exec failures come back through a close-on-exec pipe, so the caller learns
 * "not found" or "permission denied" synchronously, as posix_spawn reports. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <linux/sched.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
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

	/* Handlers are the caller's code: a signal must not run one here.  A
	 * Python parent ignores SIGPIPE and may block signals; the program
	 * should start as from a shell. */
	for (i = 1; i < _NSIG; i++) {
		struct sigaction sa;
		if (sigaction(i, NULL, &sa) == 0 && sa.sa_handler != SIG_DFL &&
		    (sa.sa_handler != SIG_IGN || i == SIGPIPE || i == SIGXFSZ)) {
			memset(&sa, 0, sizeof(sa));
			sa.sa_handler = SIG_DFL;
			sigaction(i, &sa, NULL);
		}
	}
	sigemptyset(&none);
	sigprocmask(SIG_SETMASK, &none, NULL);
	/* Before the privileges go: installing the filter without no_new_privs
	 * needs CAP_SYS_ADMIN, and no_new_privs would break setuid programs. */
	if (view && view->sock_path) {
		int err = view_install(view->sock_path, view->message, view->own_unix);
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
	/* Raw calls: glibc's would signal the caller's other threads to change
	 * their ids too. */
	if (ids->ngroups >= 0 && syscall(SYS_setgroups, ids->ngroups, ids->groups) < 0)
		child_fail(pipe_w, errno);
	if (ids->gid >= 0 && syscall(SYS_setresgid, ids->gid, ids->gid, ids->gid) < 0)
		child_fail(pipe_w, errno);
	if (ids->uid >= 0 && syscall(SYS_setresuid, ids->uid, ids->uid, ids->uid) < 0)
		child_fail(pipe_w, errno);
	execve(path, argv, envp);
	child_fail(pipe_w, errno);
}

struct child_args {
	int pipe_w;
	const char *path;
	char *const *argv;
	char *const *envp;
	const int *dups;
	int ndups;
	const struct launch_ids *ids;
	const struct launch_view *view;
};

static void child_start(void *p)
{
	struct child_args *a = p;
	child_exec(a->pipe_w, a->path, a->argv, a->envp, a->dups, a->ndups, a->ids, a->view);
}

#define CHILD_STACK (256 * 1024)

#if defined(__x86_64__)
/* clone3 with the child on its own stack, calling fn(arg); glibc exports no
 * clone3.  The child never returns here: fn execs or exits. */
static long clone3_on_stack(struct clone_args *args, void (*fn)(void *), void *arg)
{
	register long rax __asm__("rax") = SYS_clone3;
	register void *rdi __asm__("rdi") = args;
	register long rsi __asm__("rsi") = sizeof(*args);
	register void (*r12)(void *) __asm__("r12") = fn;
	register void *r13 __asm__("r13") = arg;

	__asm__ volatile("syscall\n\t"
			 "test %%rax, %%rax\n\t"
			 "jnz 1f\n\t"
			 "xor %%ebp, %%ebp\n\t"
			 "mov %%r13, %%rdi\n\t"
			 "call *%%r12\n\t"
			 "mov $231, %%eax\n\t" /* exit_group(127), should fn return */
			 "mov $127, %%edi\n\t"
			 "syscall\n\t"
			 "1:"
			 : "+r"(rax)
			 : "r"(rdi), "r"(rsi), "r"(r12), "r"(r13)
			 : "rcx", "r11", "memory");
	if (rax < 0 && rax > -4096) {
		errno = (int)-rax;
		return -1;
	}
	return rax;
}
#endif

/* The child's pid (0 in the child, without CLONE_VM), or -1 and errno. */
static long start_child(struct clone_args *args, struct child_args *ca)
{
#if defined(__x86_64__)
	void *stack = mmap(NULL, CHILD_STACK, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
	if (stack != MAP_FAILED) {
		sigset_t all, old;
		long pid;
		int err;

		args->flags |= CLONE_VM | CLONE_VFORK;
		args->stack = (uint64_t)(uintptr_t)stack;
		args->stack_size = CHILD_STACK;
		sigfillset(&all);
		pthread_sigmask(SIG_SETMASK, &all, &old);
		pid = clone3_on_stack(args, child_start, ca);  /* back once the child has exec'd or exited */
		err = errno;
		pthread_sigmask(SIG_SETMASK, &old, NULL);
		munmap(stack, CHILD_STACK);
		errno = err;
		return pid;
	}
#endif
	return syscall(SYS_clone3, args, sizeof(*args));
}

/* Returns the child's pid, or -errno: of clone3 (the caller may fall back)
 * or of the child's set-up or execve (then the child has been reaped; an
 * errno with VIEW_FAILED set came from giving it its interface view). */
long vaddr_launch(int cgroup_fd, const char *path, char *const argv[], char *const envp[],
		  const int *dups, int ndups, const struct launch_ids *ids, const struct launch_view *view,
		  int *exec_failed)
{
	struct clone_args args;
	struct child_args ca;
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
	ca = (struct child_args){pipefd[1], path, argv, envp, dups, ndups, ids, view};
	pid = start_child(&args, &ca);
	if (pid == 0) {  /* a copy of the caller (no CLONE_VM): the read end is ours to close */
		close(pipefd[0]);
		child_start(&ca);
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
