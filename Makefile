# Everything a fresh Debian or Ubuntu machine needs, as root:
#   make demo    set up, then show three vhosts on one port talking to each other
#   make test    set up, then run the whole suite against the real kernel
#   make soak    kill random vaddr commands for MINUTES=10 minutes, then report
#   make setup   set up only; the CLI is then .venv/bin/vaddr
PY ?= /usr/bin/python3
VENV := .venv
APT_PACKAGES := python3-bpfcc python3-venv python3-pip bpftool iproute2 util-linux gcc libc6-dev iptables
# Third-party programs the tests run inside vhosts.
TEST_PACKAGES := curl socat iperf3 nginx etcd-server etcd-client busybox-static file rabbitmq-server serf prometheus-alertmanager redis-server redis-tools default-jre-headless postgresql dnsmasq-base bind9-dnsutils nats-server openssh-server openssh-client haproxy unbound mariadb-server galera-4 rsync net-tools lsof bind9 knot knot-dnsutils corosync slapd ldap-utils patroni glusterfs-server python3-zeroconf libtomcat9-java qemu-system-x86
STAMP := $(VENV)/.setup-done

.PHONY: setup demo test soak bench clean system-deps

setup: $(STAMP)

$(STAMP): pyproject.toml setup.py $(wildcard vaddr/*.py vaddr/*.c vaddr/backends/*.py bpf/*.c bpf/*.h preload/*.c preload/*.h)
	@$(MAKE) --no-print-directory system-deps
	$(PY) -m venv --system-site-packages $(VENV)
	@# Editable: the suite and the CLI run this checkout's code, and pip
	@# builds the C parts (launcher, shim, delay line) in place beside it.
	$(VENV)/bin/pip install -q -e '.[test]'
	@# pip's console script imports re (~4 ms per spawn); this one does not.
	@printf '#!%s\nimport sys\nfrom vaddr.entry import main\nsys.exit(main())\n' "$$(readlink -f $(VENV))/bin/python" > $(VENV)/bin/vaddr
	@touch $@

# bcc needs a kernel header tree; any version serves (the hooks use only UAPI
# types), so the distribution's meta package is asked for when the running
# kernel's own headers are not packaged.
# Daemons among the test packages (nginx, etcd) are installed without being
# started: policy-rc.d refuses service starts for the length of the install.
system-deps:
	@if ! dpkg -s $(APT_PACKAGES) $(TEST_PACKAGES) >/dev/null 2>&1; then \
		echo "installing system packages: $(APT_PACKAGES) $(TEST_PACKAGES)"; \
		export DEBIAN_FRONTEND=noninteractive; \
		if [ ! -e /usr/sbin/policy-rc.d ]; then printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; \
			chmod +x /usr/sbin/policy-rc.d; trap 'rm -f /usr/sbin/policy-rc.d' EXIT; fi; \
		apt-get update -qq && apt-get install -y -qq --no-install-recommends $(APT_PACKAGES) $(TEST_PACKAGES) >/dev/null; \
	fi
	@if [ ! -e /lib/modules/$$(uname -r)/build ] && ! ls -d /usr/src/linux-headers-* >/dev/null 2>&1; then \
		export DEBIAN_FRONTEND=noninteractive; \
		apt-get install -y -qq linux-headers-$$(uname -r) >/dev/null 2>&1 || \
		apt-get install -y -qq linux-headers-amd64 >/dev/null 2>&1 || \
		apt-get install -y -qq linux-headers-generic >/dev/null; \
	fi

demo: setup
	$(VENV)/bin/python -m vaddr.demo

test: setup
	$(VENV)/bin/python -m pytest -q tests

# The fault run for MINUTES minutes (default 10), then its counts.
MINUTES ?= 10
soak: setup
	VADDR_SOAK_MINUTES=$(MINUTES) $(VENV)/bin/python -m pytest -q -s -p no:cacheprovider tests/faults/soak.py

SCALE_HOSTS ?= 2000
bench: setup
	$(VENV)/bin/python bench/run.py
	$(VENV)/bin/python bench/links.py
	$(VENV)/bin/python bench/shim_ls.py
	$(VENV)/bin/python bench/labs.py
	$(VENV)/bin/python bench/scale.py $(SCALE_HOSTS)

clean:
	rm -rf $(VENV) build *.egg-info
