/* SPDX-License-Identifier: MIT */
/* Fds created with FD_CLOEXEC on every platform, and the test hooks' environment
 * (anes_proto.h, "OS helpers"). */
#include "anes_config.h"
#include "anes_proto.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* Where the system cannot set the flag atomically: set it now, or close fd. */
#ifndef __linux__
static int set_cloexec(int fd)
{
	if (fcntl(fd, F_SETFD, FD_CLOEXEC) < 0) {
		int r = -errno;
		close(fd);
		return r;
	}
	return fd;
}
#endif

int anes_socket_cloexec(int domain, int type)
{
#ifdef SOCK_CLOEXEC
	int fd = socket(domain, type | SOCK_CLOEXEC, 0);
	return fd < 0 ? -errno : fd;
#else
	int fd = socket(domain, type, 0);
	return fd < 0 ? -errno : set_cloexec(fd);
#endif
}

int anes_open_stat(const char *path, int flags, struct stat *ret_st)
{
	int fd = open(path, flags | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	struct stat st;
	if (fstat(fd, &st) < 0) {
		int e = -errno;
		close(fd);
		return e;
	}
	*ret_st = st;
	return fd;
}

int anes_socketpair_cloexec(int domain, int type, int ret_sv[2])
{
	int sv[2];
#ifdef SOCK_CLOEXEC
	if (socketpair(domain, type | SOCK_CLOEXEC, 0, sv) < 0)
		return -errno;
#else
	if (socketpair(domain, type, 0, sv) < 0)
		return -errno;
	int r = set_cloexec(sv[0]);
	if (r < 0) {
		close(sv[1]);
		return r;
	}
	r = set_cloexec(sv[1]);
	if (r < 0) {
		close(sv[0]);
		return r;
	}
#endif
	ret_sv[0] = sv[0];
	ret_sv[1] = sv[1];
	return 0;
}

int anes_pipe_cloexec(int ret_fds[2])
{
	int p[2];
#ifdef __linux__
	if (pipe2(p, O_CLOEXEC) < 0)
		return -errno;
#else
	if (pipe(p) < 0)
		return -errno;
	int r = set_cloexec(p[0]);
	if (r < 0) {
		close(p[1]);
		return r;
	}
	r = set_cloexec(p[1]);
	if (r < 0) {
		close(p[0]);
		return r;
	}
#endif
	ret_fds[0] = p[0];
	ret_fds[1] = p[1];
	return 0;
}

int anes_accept_cloexec(int lfd)
{
	int fd;
	do {
#ifdef __linux__
		fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
#else
		fd = accept(lfd, NULL, NULL);
#endif
	} while (fd < 0 && errno == EINTR);
	if (fd < 0)
		return -errno;
#ifdef __linux__
	return fd;
#else
	return set_cloexec(fd);
#endif
}

ssize_t anes_recvmsg_cloexec(int fd, struct msghdr *msg, int flags)
{
#ifdef MSG_CMSG_CLOEXEC
	ssize_t n = recvmsg(fd, msg, flags | MSG_CMSG_CLOEXEC);
	return n < 0 ? -errno : n;
#else
	ssize_t n = recvmsg(fd, msg, flags);
	if (n < 0)
		return -errno;
	for (struct cmsghdr *c = CMSG_FIRSTHDR(msg); c; c = CMSG_NXTHDR(msg, c)) {
		if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
			continue;
		size_t k = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
		for (size_t i = 0; i < k; i++) {
			int f;
			memcpy(&f, CMSG_DATA(c) + i * sizeof(int), sizeof f);
			/* Cannot fail on an fd just received; the caller owns it either way. */
			(void)fcntl(f, F_SETFD, FD_CLOEXEC);
		}
	}
	return n;
#endif
}

const char *anes_test_hook_env(const char *name)
{
#if !ANES_TEST_HOOKS
	(void)name;
	return NULL;   /* built without -Dtest_hooks=true: no test hooks */
#else
	const char *v = getenv(name);
	return v && *v ? v : NULL;
#endif
}
