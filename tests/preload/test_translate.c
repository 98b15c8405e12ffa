/* Unit tests of the shim's address map (preload/translate.c); run by
 * `make -C preload test` and by tests/test_preload.py. */
#include <arpa/inet.h>
#include <stdio.h>
#include <string.h>

#include "translate.h"

static int failures;

#define CHECK(cond, what) do { if (!(cond)) { printf("FAIL %s\n", what); failures++; } else printf("ok   %s\n", what); } while (0)

static uint32_t ip(const char *s)
{
	struct in_addr a;
	inet_pton(AF_INET, s, &a);
	return a.s_addr;
}

int main(void)
{
	const char *text = "198.18.0.2 127.118.0.2\ngarbage line\n10.0.0.9 127.118.0.9\n\n198.18.0.3 127.118.0.3";
	struct vmap map;

	CHECK(vmap_parse(&map, text, strlen(text)) == 0, "parse");
	CHECK(map.n == 3, "bad lines skipped, last line without newline kept");
	CHECK(vmap_real_of(&map, ip("198.18.0.2")) == ip("127.118.0.2"), "vip -> real");
	CHECK(vmap_real_of(&map, ip("10.0.0.9")) == ip("127.118.0.9"), "unsorted input found");
	CHECK(vmap_vip_of(&map, ip("127.118.0.3")) == ip("198.18.0.3"), "real -> vip");
	CHECK(vmap_real_of(&map, ip("198.18.0.4")) == 0, "unknown vip");
	CHECK(vmap_vip_of(&map, ip("127.0.0.1")) == 0, "127.0.0.1 is nobody's vip");
	vmap_free(&map);
	CHECK(vmap_parse(&map, "", 0) == 0 && map.n == 0 && vmap_real_of(&map, ip("1.2.3.4")) == 0, "empty map");
	vmap_free(&map);
	printf("translate: %d failed\n", failures);
	return failures != 0;
}
