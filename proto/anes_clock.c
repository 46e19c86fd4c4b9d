/* SPDX-License-Identifier: MIT */
/* The injectable clock (anes_clock.h). */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "anes_clock.h"
#include "anes_config.h"
#include "anes_proto.h"

uint64_t anes_clock_monotonic_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

uint64_t (*anes_clock_ns)(void) = anes_clock_monotonic_ns;

uint64_t anes_test_clock_read(anes_test_clock *k)
{
	uint64_t step = atomic_load_explicit(&k->step_ns, memory_order_relaxed);
	return atomic_fetch_add_explicit(&k->now_ns, step, memory_order_relaxed);
}

#if ANES_TEST_HOOKS
static anes_test_clock *env_clock;

static uint64_t env_clock_ns(void)
{
	return anes_test_clock_read(env_clock);
}
#endif

int anes_clock_from_env(void)
{
#if !ANES_TEST_HOOKS
	return 0;   /* built without -Dtest_hooks=true: no test hooks */
#else
	const char *path = getenv("ANESHARE_TEST_CLOCK");
	if (!path || !*path)
		return 0;
	struct stat st;
	int fd = anes_open_stat(path, O_RDWR, &st);
	if (fd < 0)
		return fd;
	if (st.st_size < (off_t)sizeof(anes_test_clock)) {
		close(fd);
		return -EINVAL;
	}
	void *p = mmap(NULL, sizeof(anes_test_clock), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	int e = p == MAP_FAILED ? -errno : 0;
	close(fd);
	if (e < 0)
		return e;
	env_clock = p;
	anes_clock_ns = env_clock_ns;
	return 1;
#endif
}
