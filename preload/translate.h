/* The shim's pure logic, kept apart from the libc wrappers (bind.c, send.c, ...) so
 * that it can be tested alone (tests/preload/, tests/preload_c/): the vIP <-> real
 * loopback address map, finding the IPv4 address inside a socket address,
 * and building a child's environment that still carries the shim.
 * Nothing here calls a wrapped function or touches errno on purpose. */
#ifndef VADDR_TRANSLATE_H
#define VADDR_TRANSLATE_H

#include <netinet/in.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#define VMAP_MAX 65536

/* An IPv6 vIP is carried over a real IPv4 address of its own, as a
 * v4-mapped address on IPv6 sockets: an unprivileged process can make no
 * IPv6 address local, and every 127/8 address already is. */
struct vmap_entry {
	struct in6_addr vip;  /* an IPv4 vIP as ::ffff:a.b.c.d */
	uint32_t real;        /* network byte order, in 127.0.0.0/8 */
};

struct vmap {
	size_t n;
	struct vmap_entry *entries;  /* sorted by vip, one per vip */
	struct vmap_entry *by_real;  /* sorted by real, one per real */
};

/* Parse "VIP REAL" lines (any blanks between, CR/LF endings).  Lines that do
 * not parse, or whose REAL is outside 127.0.0.0/8, are skipped; when a vIP
 * (or a real address) appears twice, the later line wins, so appending a
 * line re-maps.  Returns 0, or -1 (out of memory; *map is then empty). */
int vmap_parse(struct vmap *map, const char *text, size_t len);
void vmap_free(struct vmap *map);

/* 0 when absent. */
uint32_t vmap_real_of(const struct vmap *map, uint32_t vip);
uint32_t vmap_real_of6(const struct vmap *map, const struct in6_addr *vip);
/* The IPv4 vIP of real; 0 when absent or when real carries an IPv6 vIP. */
uint32_t vmap_vip_of(const struct vmap *map, uint32_t real);
/* The entry whose real address is real (either family), or NULL. */
const struct vmap_entry *vmap_entry_of_real(const struct vmap *map, uint32_t real);

/* Where the IPv4 address sits inside sa: sin_addr of an AF_INET address, or
 * the last 4 bytes of a v4-mapped AF_INET6 one (::ffff:a.b.c.d, as
 * dual-stack programs use).  NULL when sa is neither, or when `len` (the
 * bytes of sa that may be read and written) is too short to hold it. */
uint32_t *sockaddr_v4(const struct sockaddr *sa, socklen_t len);

/* Ports below 1024 need privilege to bind, so on a vhost's real address
 * port P (1..1023) is carried as LOW_PORT_BASE + P, above the kernel's
 * default ephemeral range (32768-60999), and the other way round: the swap
 * is its own inverse, so every call translates with the same function and
 * no two virtual ports share a real one.  (A vhost that binds 64535 gets
 * the real port 23, and EACCES, as if it had asked for 23.)  Returns the
 * port in network byte order, as given. */
#define LOW_PORT_BASE 64512
uint16_t low_port_swap(uint16_t port);

/* The port field of an AF_INET or AF_INET6 sa (NULL as sockaddr_v4 does). */
uint16_t *sockaddr_port(const struct sockaddr *sa, socklen_t len);

/* Whether sa is the wildcard address (0.0.0.0 or ::) of its family. */
int sockaddr_is_wildcard(const struct sockaddr *sa, socklen_t len);

/* Whether `list` (LD_PRELOAD syntax: names separated by blanks or colons)
 * names `lib`. */
int preload_list_has(const char *list, const char *lib);

/* The environment for a child: envp (NULL counts as empty) plus each
 * "NAME=value" of keep[0..nkeep) whose NAME envp lacks.  When envp has an
 * LD_PRELOAD that does not name `shim`, that entry is replaced by one with
 * `shim` in front (shim may be NULL: no such check).  One malloc'd block:
 * free() it, never its strings.  NULL when out of memory. */
char **env_for_child(char *const envp[], char *const keep[], size_t nkeep, const char *shim);

/* What an exec of `path` would run, for refusing what the shim cannot enter
 * (as vaddr/elf.py decides for `vaddr spawn`): EXEC_STATIC (no dynamic
 * loader reads LD_PRELOAD), EXEC_GO (its net package makes system calls
 * itself), else EXEC_SERVABLE (dynamic, or anything unreadable or unknown).
 * A "#!" script is judged by its interpreter, up to 4 levels deep. */
enum { EXEC_SERVABLE = 0, EXEC_STATIC = 1, EXEC_GO = 2 };
int exec_kind(const char *path);

#endif
