/* Unit tests of the shim's pure helpers (preload/translate.c) beyond the
 * basic map tests in tests/preload/test_translate.c: map edge cases (later
 * lines win, blanks, CRLF, non-local real addresses refused), socket-address
 * inspection, and the environment given to exec'd children.
 * Run by `make -C preload test`. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "translate.h"

static int failures;

#define CHECK(cond, what)                                  \
	do {                                               \
		if (!(cond)) {                             \
			printf("FAIL %s\n", what);         \
			failures++;                        \
		} else {                                   \
			printf("PASS %s\n", what);         \
		}                                          \
	} while (0)

static uint32_t ip(const char *s)
{
	struct in_addr a;
	inet_pton(AF_INET, s, &a);
	return a.s_addr;
}

static int parse(struct vmap *map, const char *text)
{
	return vmap_parse(map, text, strlen(text));
}

static void map_cases(void)
{
	struct vmap map;

	parse(&map, "198.18.0.2 127.118.0.2\n198.18.0.2 127.118.0.9\n");
	CHECK(map.n == 1 && vmap_real_of(&map, ip("198.18.0.2")) == ip("127.118.0.9"), "map: a later line re-maps a vip");
	CHECK(vmap_vip_of(&map, ip("127.118.0.2")) == 0, "map: the replaced real address is nobody's");
	vmap_free(&map);

	parse(&map, "198.18.0.2 127.118.0.2\n198.18.0.3 127.118.0.2\n");
	CHECK(map.n == 1 && vmap_vip_of(&map, ip("127.118.0.2")) == ip("198.18.0.3") &&
		      vmap_real_of(&map, ip("198.18.0.2")) == 0,
	      "map: a real address given to a later vip leaves the earlier one");
	vmap_free(&map);

	parse(&map, "  198.18.0.2\t127.118.0.2 \r\n198.18.0.3   127.118.0.3\r\n");
	CHECK(map.n == 2 && vmap_real_of(&map, ip("198.18.0.3")) == ip("127.118.0.3"), "map: blanks and CRLF");
	vmap_free(&map);

	parse(&map, "198.18.0.2 192.0.2.1\n198.18.0.3 127.118.0.3 extra\n0.0.0.0 127.118.0.4\n"
		    "198.18.0.5 127.118.0.5\n198.18.0.6\n 198.18.0.7 127.118.0.700\n");
	CHECK(map.n == 1 && vmap_real_of(&map, ip("198.18.0.5")) == ip("127.118.0.5"),
	      "map: non-loopback real, extra words, wildcard vip, bad lines skipped");
	CHECK(vmap_real_of(&map, ip("198.18.0.2")) == 0, "map: a vip mapped off the machine is not a vip");
	vmap_free(&map);

	{
		/* IPv6 vIPs ride real IPv4 addresses of their own. */
		struct in6_addr v6, mapped4;
		const struct vmap_entry *e;

		parse(&map, "fd76:6164::2 127.118.0.8\n198.18.0.2 127.118.0.2\n::ffff:198.18.0.9 127.118.0.9\n"
			    ":: 127.118.0.10\n::1 127.118.0.11\n");
		inet_pton(AF_INET6, "fd76:6164::2", &v6);
		CHECK(map.n == 2 && vmap_real_of6(&map, &v6) == ip("127.118.0.8"), "map: an IPv6 vip has its real address");
		e = vmap_entry_of_real(&map, ip("127.118.0.8"));
		CHECK(e && memcmp(&e->vip, &v6, sizeof(v6)) == 0, "map: and is found from it");
		CHECK(vmap_vip_of(&map, ip("127.118.0.8")) == 0, "map: an IPv6 vip's real is no IPv4 vip's");
		inet_pton(AF_INET6, "::ffff:198.18.0.2", &mapped4);
		CHECK(vmap_real_of6(&map, &mapped4) == ip("127.118.0.2"), "map: an IPv4 vip is its v4-mapped form");
		CHECK(vmap_real_of(&map, ip("198.18.0.9")) == 0, "map: v4-mapped, :: and ::1 are nobody's vip");
		vmap_free(&map);
	}

	{
		/* Many entries, shuffled: every one found both ways. */
		char *text = malloc(3000 * 40), *p = text;
		int i, ok = 1;
		for (i = 0; i < 3000; i++) {
			int k = (i * 7919) % 3000;
			p += sprintf(p, "198.18.%d.%d 127.118.%d.%d\n", k / 250, k % 250 + 1, k / 250, k % 250 + 1);
		}
		parse(&map, text);
		for (i = 0; i < 3000 && ok; i++) {
			char v[32], r[32];
			sprintf(v, "198.18.%d.%d", i / 250, i % 250 + 1);
			sprintf(r, "127.118.%d.%d", i / 250, i % 250 + 1);
			ok = vmap_real_of(&map, ip(v)) == ip(r) && vmap_vip_of(&map, ip(r)) == ip(v);
		}
		CHECK(map.n == 3000 && ok, "map: 3000 entries found both ways");
		vmap_free(&map);
		free(text);
	}
}

static void sockaddr_cases(void)
{
	struct sockaddr_in sin = {.sin_family = AF_INET};
	struct sockaddr_in6 sin6 = {.sin6_family = AF_INET6};
	uint32_t *v4;

	sin.sin_addr.s_addr = ip("198.18.0.2");
	v4 = sockaddr_v4((struct sockaddr *)&sin, sizeof(sin));
	CHECK(v4 && *v4 == ip("198.18.0.2"), "sockaddr: AF_INET address found");
	CHECK(!sockaddr_v4((struct sockaddr *)&sin, sizeof(sin) - 1), "sockaddr: short AF_INET refused");
	CHECK(!sockaddr_v4(NULL, 16), "sockaddr: NULL refused");

	inet_pton(AF_INET6, "::ffff:198.18.0.3", &sin6.sin6_addr);
	v4 = sockaddr_v4((struct sockaddr *)&sin6, sizeof(sin6));
	CHECK(v4 && *v4 == ip("198.18.0.3"), "sockaddr: v4-mapped IPv6 address found");
	CHECK(!sockaddr_v4((struct sockaddr *)&sin6, 16), "sockaddr: v4-mapped cut short refused");
	inet_pton(AF_INET6, "2001:db8::1", &sin6.sin6_addr);
	CHECK(!sockaddr_v4((struct sockaddr *)&sin6, sizeof(sin6)), "sockaddr: real IPv6 passes untouched");

	sin.sin_addr.s_addr = htonl(INADDR_ANY);
	CHECK(sockaddr_is_wildcard((struct sockaddr *)&sin, sizeof(sin)), "sockaddr: 0.0.0.0 is the wildcard");
	sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	CHECK(!sockaddr_is_wildcard((struct sockaddr *)&sin, sizeof(sin)), "sockaddr: 127.0.0.1 is not");
	sin6.sin6_addr = in6addr_any;
	CHECK(sockaddr_is_wildcard((struct sockaddr *)&sin6, sizeof(sin6)), "sockaddr: :: is the wildcard");
}

static void low_port_cases(void)
{
	struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons(22)};
	struct sockaddr_in6 sin6 = {.sin6_family = AF_INET6, .sin6_port = htons(53)};
	unsigned int p, seen_twice = 0;
	static unsigned char hit[65536];

	CHECK(low_port_swap(htons(22)) == htons(LOW_PORT_BASE + 22), "low port: 22 is carried high");
	CHECK(low_port_swap(htons(LOW_PORT_BASE + 22)) == htons(22), "low port: and shown as 22 again");
	CHECK(low_port_swap(htons(1023)) == htons(65535), "low port: 1023 is the last carried");
	CHECK(low_port_swap(0) == 0, "low port: 0 (any port) is left alone");
	CHECK(low_port_swap(htons(1024)) == htons(1024), "low port: 1024 needs no privilege");
	CHECK(low_port_swap(htons(8080)) == htons(8080), "low port: 8080 untouched");
	CHECK(low_port_swap(htons(LOW_PORT_BASE)) == htons(LOW_PORT_BASE), "low port: the base itself untouched");
	for (p = 0; p < 65536; p++) {
		uint16_t q = ntohs(low_port_swap(htons(p)));
		seen_twice += hit[q]++ != 0;
		if (ntohs(low_port_swap(htons(q))) != p)
			seen_twice++;
	}
	CHECK(!seen_twice, "low port: the swap is one to one and its own inverse");
	CHECK(sockaddr_port((struct sockaddr *)&sin, sizeof(sin)) == &sin.sin_port, "port: AF_INET's found");
	CHECK(sockaddr_port((struct sockaddr *)&sin6, sizeof(sin6)) == &sin6.sin6_port, "port: AF_INET6's found");
	CHECK(!sockaddr_port((struct sockaddr *)&sin6, sizeof(sin6) - 1), "port: short AF_INET6 refused");
}

static const char *find(char **env, const char *name)
{
	size_t n = strlen(name);
	for (; env && *env; env++)
		if (strncmp(*env, name, n) == 0 && (*env)[n] == '=')
			return *env + n + 1;
	return NULL;
}

static size_t count(char **env)
{
	size_t n = 0;
	while (env && env[n])
		n++;
	return n;
}

static void env_cases(void)
{
	char *keep[] = {"LD_PRELOAD=/x/libvaddr_preload.so", "VADDR_MAP=/run/m", "VADDR_VIP=198.18.0.2"};
	char *clean[] = {"PATH=/bin", NULL};
	char *partial[] = {"VADDR_VIP=198.18.0.9", "LD_PRELOAD=/other.so:/x/libvaddr_preload.so", NULL};
	char *other[] = {"LD_PRELOAD=/other.so", "HOME=/", NULL};
	char *empty_preload[] = {"LD_PRELOAD=", NULL};
	char **env;

	env = env_for_child(clean, keep, 3, "/x/libvaddr_preload.so");
	CHECK(env && count(env) == 4 && strcmp(find(env, "PATH"), "/bin") == 0 &&
		      strcmp(find(env, "VADDR_VIP"), "198.18.0.2") == 0 && strcmp(find(env, "VADDR_MAP"), "/run/m") == 0 &&
		      strcmp(find(env, "LD_PRELOAD"), "/x/libvaddr_preload.so") == 0,
	      "env: a clean environment gets all three back");
	free(env);

	env = env_for_child(NULL, keep, 3, "/x/libvaddr_preload.so");
	CHECK(env && count(env) == 3, "env: a NULL envp counts as empty");
	free(env);

	env = env_for_child(partial, keep, 3, "/x/libvaddr_preload.so");
	CHECK(env && count(env) == 3 && strcmp(find(env, "VADDR_VIP"), "198.18.0.9") == 0 &&
		      strcmp(find(env, "LD_PRELOAD"), "/other.so:/x/libvaddr_preload.so") == 0,
	      "env: variables the program set are left as they are");
	free(env);

	env = env_for_child(other, keep, 3, "/x/libvaddr_preload.so");
	CHECK(env && count(env) == 4 && strcmp(find(env, "LD_PRELOAD"), "/x/libvaddr_preload.so /other.so") == 0,
	      "env: an LD_PRELOAD without the shim gets it in front");
	free(env);

	env = env_for_child(empty_preload, keep, 3, "/x/libvaddr_preload.so");
	CHECK(env && strcmp(find(env, "LD_PRELOAD"), "/x/libvaddr_preload.so") == 0, "env: an empty LD_PRELOAD");
	free(env);

	CHECK(preload_list_has("a.so  /x/libvaddr_preload.so:b.so", "/x/libvaddr_preload.so") &&
		      !preload_list_has("/x/libvaddr_preload.so.1", "/x/libvaddr_preload.so"),
	      "env: LD_PRELOAD words split at blanks and colons");
}

/* Executables `make setup` installs: busybox-static, etcd (Go), dash. */
static void exec_kind_cases(void)
{
	char script[] = "/tmp/vaddr-test-script-XXXXXX";
	int fd = mkstemp(script);

	CHECK(exec_kind("/bin/sh") == EXEC_SERVABLE, "exec kind: a dynamic executable is servable");
	CHECK(exec_kind("/bin/busybox") == EXEC_STATIC, "exec kind: busybox-static is static");
	CHECK(exec_kind("/usr/bin/etcd") == EXEC_GO, "exec kind: etcd is a Go program");
	CHECK(exec_kind("/nonexistent") == EXEC_SERVABLE, "exec kind: a missing file is left to exec to refuse");
	if (fd >= 0) {
		const char *text = "#!  /bin/busybox sh\necho hi\n";
		CHECK(write(fd, text, strlen(text)) == (ssize_t)strlen(text), "exec kind: script written");
		close(fd);
		CHECK(exec_kind(script) == EXEC_STATIC, "exec kind: a script is judged by its interpreter");
		unlink(script);
	}
}

int main(void)
{
	map_cases();
	sockaddr_cases();
	low_port_cases();
	env_cases();
	exec_kind_cases();
	printf("pure: %d failed\n", failures);
	return failures != 0;
}
