/* Pure helpers for the shim (see translate.h): parsing and lookup for the
 * address map that `vaddr` writes and every shim-backed process reads
 * (RUN_DIR/preload.map), socket-address inspection, and child environments.
 * No libc wrapper lives here, so tests link this file alone. */
#define _GNU_SOURCE
#include <elf.h>
#include <fcntl.h>
#include <unistd.h>

#include "translate.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>

/* ---- the address map ---------------------------------------------------- */

/* An entry with its line number, so that sorting can keep the later line. */
struct numbered {
	struct vmap_entry e;
	size_t line;
};

static int cmp_u32(uint32_t x, uint32_t y)
{
	return x < y ? -1 : x > y;
}

static int by_vip(const void *a, const void *b)
{
	return memcmp(&((const struct vmap_entry *)a)->vip, &((const struct vmap_entry *)b)->vip, sizeof(struct in6_addr));
}

static void mapped(struct in6_addr *out, uint32_t v4)
{
	memset(out, 0, sizeof(*out));
	out->s6_addr16[5] = 0xffff;
	out->s6_addr32[3] = v4;
}

static int by_real(const void *a, const void *b)
{
	return cmp_u32(ntohl(((const struct vmap_entry *)a)->real), ntohl(((const struct vmap_entry *)b)->real));
}

/* qsort is not stable: order ties by line so the last of a run is the latest. */
static int numbered_by_vip(const void *a, const void *b)
{
	const struct numbered *x = a, *y = b;
	int c = by_vip(&x->e, &y->e);
	return c ? c : cmp_u32(x->line, y->line);
}

static int numbered_by_real(const void *a, const void *b)
{
	const struct numbered *x = a, *y = b;
	int c = by_real(&x->e, &y->e);
	return c ? c : cmp_u32(x->line, y->line);
}

static int is_blank(char c)
{
	return c == ' ' || c == '\t' || c == '\r';
}

static int in_loopback_net(uint32_t addr)
{
	return (ntohl(addr) >> 24) == 127;
}

/* The next blank-separated word of [*p, end) into buf; 0 on success. */
static int next_word(const char **p, const char *end, char *buf, size_t size)
{
	const char *start;

	while (*p < end && is_blank(**p))
		(*p)++;
	start = *p;
	while (*p < end && !is_blank(**p))
		(*p)++;
	if (*p == start || (size_t)(*p - start) >= size)
		return -1;
	memcpy(buf, start, *p - start);
	buf[*p - start] = '\0';
	return 0;
}

/* One "VIP REAL" line into *e; 0 on success.  VIP is IPv4 or IPv6. */
static int parse_line(const char *line, size_t len, struct vmap_entry *e)
{
	const char *p = line, *end = line + len;
	char vip_text[INET6_ADDRSTRLEN], real_text[INET_ADDRSTRLEN];
	struct in_addr vip4, real;
	struct in6_addr vip6;

	if (next_word(&p, end, vip_text, sizeof(vip_text)) || next_word(&p, end, real_text, sizeof(real_text)))
		return -1;
	while (p < end && is_blank(*p))
		p++;
	if (p != end)
		return -1;  /* a third word: not our format */
	if (inet_pton(AF_INET, real_text, &real) != 1)
		return -1;
	/* A real address must be local: a bad line must never send traffic off
	 * the machine.  The wildcard and broadcast are nobody's vIP, and an
	 * IPv6 vIP that is v4-mapped would be an IPv4 one in disguise. */
	if (!in_loopback_net(real.s_addr))
		return -1;
	if (inet_pton(AF_INET, vip_text, &vip4) == 1) {
		if (vip4.s_addr == INADDR_ANY || vip4.s_addr == INADDR_BROADCAST)
			return -1;
		mapped(&e->vip, vip4.s_addr);
	} else if (inet_pton(AF_INET6, vip_text, &vip6) == 1) {
		if (IN6_IS_ADDR_UNSPECIFIED(&vip6) || IN6_IS_ADDR_V4MAPPED(&vip6) || IN6_IS_ADDR_LOOPBACK(&vip6))
			return -1;
		e->vip = vip6;
	} else {
		return -1;
	}
	e->real = real.s_addr;
	return 0;
}

/* Sort by cmp (which orders ties by line) and keep the last of each run of
 * equal keys, as judged by same(); returns the count kept, at the front. */
static size_t keep_latest(struct numbered *v, size_t n, int (*cmp)(const void *, const void *),
			  int (*same)(const void *, const void *))
{
	size_t i, kept = 0;

	qsort(v, n, sizeof(*v), cmp);
	for (i = 0; i < n; i++) {
		if (i + 1 < n && same(&v[i].e, &v[i + 1].e) == 0)
			continue;
		v[kept++] = v[i];
	}
	return kept;
}

int vmap_parse(struct vmap *map, const char *text, size_t len)
{
	size_t lines = 1, i, start = 0, n = 0, n_real;
	struct numbered *tmp;

	memset(map, 0, sizeof(*map));
	for (i = 0; i < len; i++)
		lines += text[i] == '\n';
	if (lines > VMAP_MAX)
		lines = VMAP_MAX;
	tmp = calloc(lines, sizeof(*tmp));
	map->entries = calloc(lines, sizeof(*map->entries));
	map->by_real = calloc(lines, sizeof(*map->by_real));
	if (!tmp || !map->entries || !map->by_real) {
		free(tmp);
		vmap_free(map);
		return -1;
	}
	for (i = 0; i <= len && n < lines; i++) {
		if (i == len || text[i] == '\n') {
			if (parse_line(text + start, i - start, &tmp[n].e) == 0)
				tmp[n].line = n, n++;
			start = i + 1;
		}
	}
	/* One entry per vIP, the latest; then, of those, one per real address. */
	n = keep_latest(tmp, n, numbered_by_vip, by_vip);
	for (i = 0; i < n; i++)
		map->entries[i] = tmp[i].e;
	n_real = keep_latest(tmp, n, numbered_by_real, by_real);
	for (i = 0; i < n_real; i++)
		map->by_real[i] = tmp[i].e;
	free(tmp);
	/* A vIP whose real address a later line gave to another vIP is gone. */
	for (i = 0, map->n = 0; i < n; i++) {
		struct vmap_entry *owner = bsearch(&map->entries[i], map->by_real, n_real, sizeof(*owner), by_real);
		if (owner && by_vip(owner, &map->entries[i]) == 0)
			map->entries[map->n++] = map->entries[i];
	}
	return 0;
}

void vmap_free(struct vmap *map)
{
	free(map->entries);
	free(map->by_real);
	map->entries = map->by_real = NULL;
	map->n = 0;
}

uint32_t vmap_real_of6(const struct vmap *map, const struct in6_addr *vip)
{
	struct vmap_entry key = {.vip = *vip}, *hit;

	if (!map->n)
		return 0;
	hit = bsearch(&key, map->entries, map->n, sizeof(key), by_vip);
	return hit ? hit->real : 0;
}

uint32_t vmap_real_of(const struct vmap *map, uint32_t vip)
{
	struct in6_addr key;

	mapped(&key, vip);
	return vmap_real_of6(map, &key);
}

const struct vmap_entry *vmap_entry_of_real(const struct vmap *map, uint32_t real)
{
	struct vmap_entry key = {.real = real};

	if (!map->n)
		return NULL;
	return bsearch(&key, map->by_real, map->n, sizeof(key), by_real);
}

uint32_t vmap_vip_of(const struct vmap *map, uint32_t real)
{
	const struct vmap_entry *hit = vmap_entry_of_real(map, real);

	return hit && IN6_IS_ADDR_V4MAPPED(&hit->vip) ? hit->vip.s6_addr32[3] : 0;
}

/* ---- socket addresses --------------------------------------------------- */

uint32_t *sockaddr_v4(const struct sockaddr *sa, socklen_t len)
{
	if (!sa || len < (socklen_t)sizeof(sa_family_t))
		return NULL;
	if (sa->sa_family == AF_INET && len >= (socklen_t)sizeof(struct sockaddr_in))
		return (uint32_t *)&((struct sockaddr_in *)sa)->sin_addr.s_addr;
	if (sa->sa_family == AF_INET6 && len >= (socklen_t)sizeof(struct sockaddr_in6) &&
	    IN6_IS_ADDR_V4MAPPED(&((struct sockaddr_in6 *)sa)->sin6_addr))
		return &((struct sockaddr_in6 *)sa)->sin6_addr.s6_addr32[3];
	return NULL;
}

uint16_t low_port_swap(uint16_t port)
{
	uint16_t p = ntohs(port);

	if (p >= 1 && p < 1024)
		return htons(p + LOW_PORT_BASE);
	if (p > LOW_PORT_BASE)  /* up to 65535 = LOW_PORT_BASE + 1023 */
		return htons(p - LOW_PORT_BASE);
	return port;
}

uint16_t *sockaddr_port(const struct sockaddr *sa, socklen_t len)
{
	if (!sa || len < (socklen_t)sizeof(sa_family_t))
		return NULL;
	if (sa->sa_family == AF_INET && len >= (socklen_t)sizeof(struct sockaddr_in))
		return &((struct sockaddr_in *)sa)->sin_port;
	if (sa->sa_family == AF_INET6 && len >= (socklen_t)sizeof(struct sockaddr_in6))
		return &((struct sockaddr_in6 *)sa)->sin6_port;
	return NULL;
}

int sockaddr_is_wildcard(const struct sockaddr *sa, socklen_t len)
{
	if (!sa || len < (socklen_t)sizeof(sa_family_t))
		return 0;
	if (sa->sa_family == AF_INET && len >= (socklen_t)sizeof(struct sockaddr_in))
		return ((const struct sockaddr_in *)sa)->sin_addr.s_addr == htonl(INADDR_ANY);
	/* ::ffff:0.0.0.0 is IPv4's wildcard: left alone it listens on every
	 * IPv4 address of the machine, other vhosts' included. */
	if (sa->sa_family == AF_INET6 && len >= (socklen_t)sizeof(struct sockaddr_in6)) {
		const struct in6_addr *a = &((const struct sockaddr_in6 *)sa)->sin6_addr;
		return IN6_IS_ADDR_UNSPECIFIED(a) || (IN6_IS_ADDR_V4MAPPED(a) && a->s6_addr32[3] == htonl(INADDR_ANY));
	}
	return 0;
}

/* ---- child environments ------------------------------------------------- */

/* ld.so splits LD_PRELOAD at spaces and colons (ld.so(8)). */
int preload_list_has(const char *list, const char *lib)
{
	size_t n = strlen(lib);
	const char *p = list;

	if (!n)
		return 1;
	while (p && *p) {
		size_t word = strcspn(p, " :\t");
		if (word == n && strncmp(p, lib, n) == 0)
			return 1;
		p += word;
		p += strspn(p, " :\t");
	}
	return 0;
}

/* Length of "NAME=" in a "NAME=value" entry; 0 when there is no '='. */
static size_t name_len(const char *entry)
{
	const char *eq = strchr(entry, '=');
	return eq ? (size_t)(eq - entry) + 1 : 0;
}

static int has_name(char *const envp[], size_t n, const char *entry)
{
	size_t len = name_len(entry), i;

	for (i = 0; len && i < n; i++)
		if (strncmp(envp[i], entry, len) == 0)
			return 1;
	return 0;
}

#define LD_PRELOAD_EQ "LD_PRELOAD="

char **env_for_child(char *const envp[], char *const keep[], size_t nkeep, const char *shim)
{
	size_t n = 0, i, k, extra = 0, text = 0, slot = (size_t)-1;
	char **out, *buf;

	while (envp && envp[n])
		n++;
	for (i = 0; shim && *shim && i < n; i++) {
		if (strncmp(envp[i], LD_PRELOAD_EQ, sizeof(LD_PRELOAD_EQ) - 1) == 0 &&
		    !preload_list_has(envp[i] + sizeof(LD_PRELOAD_EQ) - 1, shim)) {
			slot = i;  /* the last one is what ld.so sees... */
		}
	}
	if (slot != (size_t)-1)
		text = strlen(envp[slot]) + strlen(shim) + 2;
	out = malloc((n + nkeep + 1) * sizeof(*out) + text);
	if (!out)
		return NULL;
	for (i = 0; i < n; i++)
		out[i] = envp[i];
	if (slot != (size_t)-1) {
		/* "LD_PRELOAD=" shim " " old-list */
		const char *old = envp[slot] + sizeof(LD_PRELOAD_EQ) - 1;
		buf = (char *)(out + n + nkeep + 1);
		strcpy(buf, LD_PRELOAD_EQ);
		strcat(buf, shim);
		if (*old) {
			strcat(buf, " ");
			strcat(buf, old);
		}
		/* ...but the first is what getenv() finds: fix every one. */
		for (i = 0; i < n; i++)
			if (strncmp(envp[i], LD_PRELOAD_EQ, sizeof(LD_PRELOAD_EQ) - 1) == 0)
				out[i] = buf;
	}
	for (k = 0; k < nkeep; k++)
		if (keep[k] && !has_name(envp, n, keep[k]))
			out[n + extra++] = keep[k];
	out[n + extra] = NULL;
	return out;
}

/* ---- what an exec would run ---------------------------------------------- */

static int elf_kind(int fd)
{
	Elf64_Ehdr eh;
	Elf64_Phdr ph;
	Elf64_Shdr strtab;
	int interp = 0, kind;
	size_t i;

	if (pread(fd, &eh, sizeof(eh), 0) != (ssize_t)sizeof(eh) || memcmp(eh.e_ident, ELFMAG, SELFMAG) != 0 ||
	    eh.e_ident[EI_CLASS] != ELFCLASS64 || eh.e_phentsize != sizeof(ph))
		return EXEC_SERVABLE;
	for (i = 0; i < eh.e_phnum; i++)
		if (pread(fd, &ph, sizeof(ph), eh.e_phoff + i * sizeof(ph)) == (ssize_t)sizeof(ph) && ph.p_type == PT_INTERP)
			interp = 1;
	kind = interp ? EXEC_SERVABLE : EXEC_STATIC;
	/* Go's section names, as debug/buildinfo finds them. */
	if (eh.e_shoff && eh.e_shstrndx < eh.e_shnum && eh.e_shentsize == sizeof(strtab) &&
	    pread(fd, &strtab, sizeof(strtab), eh.e_shoff + eh.e_shstrndx * sizeof(strtab)) == (ssize_t)sizeof(strtab)) {
		size_t size = strtab.sh_size < (1u << 20) ? strtab.sh_size : (1u << 20);
		char *names = malloc(size + 1);
		if (names && pread(fd, names, size, strtab.sh_offset) == (ssize_t)size &&
		    (memmem(names, size, ".go.buildinfo", 13) || memmem(names, size, ".note.go.buildid", 16)))
			kind = EXEC_GO;
		free(names);
	}
	return kind;
}

static int exec_kind_depth(const char *path, int depth)
{
	char head[256], *interp, *end;
	ssize_t n;
	int fd = open(path, O_RDONLY | O_CLOEXEC), kind;

	if (fd < 0)
		return EXEC_SERVABLE;  /* exec itself will say why */
	n = pread(fd, head, sizeof(head) - 1, 0);
	if (n > 2 && head[0] == '#' && head[1] == '!' && depth < 4) {
		close(fd);
		head[n] = 0;
		for (interp = head + 2; *interp == ' ' || *interp == '\t'; interp++)
			;
		for (end = interp; *end && *end != ' ' && *end != '\t' && *end != '\n'; end++)
			;
		*end = 0;
		return *interp ? exec_kind_depth(interp, depth + 1) : EXEC_SERVABLE;
	}
	kind = elf_kind(fd);
	close(fd);
	return kind;
}

int exec_kind(const char *path)
{
	return exec_kind_depth(path, 0);
}
