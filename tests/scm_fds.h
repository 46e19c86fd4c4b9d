/* SPDX-License-Identifier: MIT */
/*
 * Attaching fds to a sendmsg (SCM_RIGHTS), for the tests that write to a
 * socket past anes_io: tests/daemon_harness.c, tests/test_io.c and
 * tests/fuzz/fuzz_io.c.  Header-only: those link different libraries.
 */
#ifndef ANES_TEST_SCM_FDS_H
#define ANES_TEST_SCM_FDS_H

#include <string.h>
#include <sys/socket.h>

/* A control buffer for up to N fds, aligned for a cmsghdr. */
#define SCM_FDS_BUF(N)                                  \
	union {                                         \
		struct cmsghdr h;                       \
		char buf[CMSG_SPACE(sizeof(int) * (N))]; \
	}

/* Make msg carry fds[0..nfds) (nothing when nfds is 0) in ctl, a buffer of
 * ctl_size bytes from SCM_FDS_BUF that holds at least nfds fds. */
static inline void scm_fds_attach(struct msghdr *msg, void *ctl, size_t ctl_size, const int *fds,
                                  unsigned nfds)
{
	if (!nfds)
		return;
	memset(ctl, 0, ctl_size);
	msg->msg_control = ctl;
	msg->msg_controllen = CMSG_SPACE(sizeof(int) * nfds);
	struct cmsghdr *c = CMSG_FIRSTHDR(msg);
	c->cmsg_level = SOL_SOCKET;
	c->cmsg_type = SCM_RIGHTS;
	c->cmsg_len = CMSG_LEN(sizeof(int) * nfds);
	memcpy(CMSG_DATA(c), fds, sizeof(int) * nfds);
}

#endif
