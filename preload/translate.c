/* Parsing and lookup for the address map that `vaddr` writes and every
 * shim-backed process reads (RUN_DIR/preload.map). */
#include "translate.h"

#include <arpa/inet.h>
#include <stdlib.h>
#include <string.h>

static int by_vip(const void *a, const void *b)
{
	uint32_t x = ntohl(((const struct vmap_entry *)a)->vip), y = ntohl(((const struct vmap_entry *)b)->vip);
	return x < y ? -1 : x > y;
}

static int by_real(const void *a, const void *b)
{
	uint32_t x = ntohl(((const struct vmap_entry *)a)->real), y = ntohl(((const struct vmap_entry *)b)->real);
	return x < y ? -1 : x > y;
}

/* One "VIP REAL" line into *e; 0 on success. */
static int parse_line(const char *line, size_t len, struct vmap_entry *e)
{
	char buf[64], *space;
	struct in_addr vip, real;

	if (len == 0 || len >= sizeof(buf))
		return -1;
	memcpy(buf, line, len);
	buf[len] = '\0';
	space = strchr(buf, ' ');
	if (!space)
		return -1;
	*space = '\0';
	if (inet_pton(AF_INET, buf, &vip) != 1 || inet_pton(AF_INET, space + 1, &real) != 1)
		return -1;
	e->vip = vip.s_addr;
	e->real = real.s_addr;
	return 0;
}

int vmap_parse(struct vmap *map, const char *text, size_t len)
{
	size_t lines = 0, i, start = 0;

	for (i = 0; i < len; i++)
		lines += text[i] == '\n';
	lines++;
	if (lines > VMAP_MAX)
		lines = VMAP_MAX;
	map->n = 0;
	map->entries = calloc(lines, sizeof(*map->entries));
	map->by_real = calloc(lines, sizeof(*map->by_real));
	if (!map->entries || !map->by_real) {
		vmap_free(map);
		return -1;
	}
	for (i = 0; i <= len && map->n < lines; i++) {
		if (i == len || text[i] == '\n') {
			if (parse_line(text + start, i - start, &map->entries[map->n]) == 0)
				map->n++;
			start = i + 1;
		}
	}
	memcpy(map->by_real, map->entries, map->n * sizeof(*map->entries));
	qsort(map->entries, map->n, sizeof(*map->entries), by_vip);
	qsort(map->by_real, map->n, sizeof(*map->by_real), by_real);
	return 0;
}

void vmap_free(struct vmap *map)
{
	free(map->entries);
	free(map->by_real);
	map->entries = map->by_real = NULL;
	map->n = 0;
}

uint32_t vmap_real_of(const struct vmap *map, uint32_t vip)
{
	struct vmap_entry key = {.vip = vip}, *hit;

	if (!map->n)
		return 0;
	hit = bsearch(&key, map->entries, map->n, sizeof(key), by_vip);
	return hit ? hit->real : 0;
}

uint32_t vmap_vip_of(const struct vmap *map, uint32_t real)
{
	struct vmap_entry key = {.real = real}, *hit;

	if (!map->n)
		return 0;
	hit = bsearch(&key, map->by_real, map->n, sizeof(key), by_real);
	return hit ? hit->vip : 0;
}
