/* The vIP <-> real loopback address map: pure functions, no libc wrappers,
 * so they can be tested alone (tests/preload/test_translate.c). */
#ifndef VADDR_TRANSLATE_H
#define VADDR_TRANSLATE_H

#include <stddef.h>
#include <stdint.h>

#define VMAP_MAX 65536

struct vmap_entry {
	uint32_t vip;   /* network byte order */
	uint32_t real;  /* network byte order, in 127.0.0.0/8 */
};

struct vmap {
	size_t n;
	struct vmap_entry *entries;  /* sorted by vip */
	struct vmap_entry *by_real;  /* the same, sorted by real */
};

/* Parse "VIP REAL\n" lines; bad lines are skipped.  Returns 0, or -1 (ENOMEM). */
int vmap_parse(struct vmap *map, const char *text, size_t len);
void vmap_free(struct vmap *map);

/* 0 when absent. */
uint32_t vmap_real_of(const struct vmap *map, uint32_t vip);
uint32_t vmap_vip_of(const struct vmap *map, uint32_t real);

#endif
