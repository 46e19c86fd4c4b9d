/* SPDX-License-Identifier: MIT */
/*
 * libaneshare: compiling a compiled Core ML model folder (.mlmodelc).
 *
 * The folder's model.mil names its weights as BLOBFILE paths
 * "@model_path/REL".  Each REL is opened strictly inside the folder: one
 * openat(2) per path component with O_NOFOLLOW, starting from the folder's
 * own descriptor, so no component may be "..", empty, or a symbolic link
 * (a link is refused even when it would stay inside the folder), and an
 * absolute REL is refused.  Every distinct file is opened once and passed to
 * the daemon by descriptor (aneshare_program_compile_fds): no weight byte
 * crosses the socket.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "internal.h"

#ifndef O_DIRECTORY
#define O_DIRECTORY 0
#endif

#define MODEL_PREFIX "@model_path/"

/* Read the whole of a regular file (fd) of at most max bytes, NUL-terminated. */
static int read_text(int fd, size_t max, char **ret, size_t *ret_len)
{
	struct stat st;
	if (fstat(fd, &st) != 0)
		return -errno;
	if (!S_ISREG(st.st_mode))
		return -EINVAL;
	if (st.st_size < 0 || (uint64_t)st.st_size > max)
		return -EFBIG;
	size_t len = (size_t)st.st_size, got = 0;
	char *t = malloc(len + 1);
	if (!t)
		return -ENOMEM;
	while (got < len) {
		ssize_t n = pread(fd, t + got, len - got, (off_t)got);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			int rc = n < 0 ? -errno : -EIO;   /* shrank under us */
			free(t);
			return rc;
		}
		got += (size_t)n;
	}
	t[len] = '\0';
	*ret = t;
	*ret_len = len;
	return 0;
}

/* Open REL (the part after "@model_path/") under dirfd, one component at a
 * time, refusing "..", ".", empty components, absolute paths and symbolic
 * links.  On success *ret_fd is a read-only CLOEXEC fd of a regular file. */
static int open_inside(aneshare_conn *c, int dirfd, const char *dir, const char *rel, int *ret_fd)
{
	if (rel[0] == '/')
		return anesc_fail(c, -EPERM, "%s: weight path '%s%s' is absolute: it would leave the model folder",
		                  dir, MODEL_PREFIX, rel);
	int cur = dirfd;
	const char *p = rel;
	char comp[256];
	for (;;) {
		const char *slash = strchr(p, '/');
		size_t n = slash ? (size_t)(slash - p) : strlen(p);
		if (n == 0 || (n == 1 && p[0] == '.') || (n == 2 && p[0] == '.' && p[1] == '.')) {
			if (cur != dirfd)
				close(cur);
			return anesc_fail(c, -EPERM,
			                  "%s: weight path '%s%s' has an empty, '.' or '..' component: "
			                  "paths must stay inside the model folder", dir, MODEL_PREFIX, rel);
		}
		if (n >= sizeof comp) {
			if (cur != dirfd)
				close(cur);
			return anesc_fail(c, -ENAMETOOLONG, "%s: weight path '%s%s': a component is too long",
			                  dir, MODEL_PREFIX, rel);
		}
		memcpy(comp, p, n);
		comp[n] = '\0';
		int flags = O_RDONLY | O_CLOEXEC | O_NOFOLLOW | (slash ? O_DIRECTORY : 0);
		int fd = openat(cur, comp, flags);
		int err = errno;
		/* O_NOFOLLOW on a link fails with ELOOP (EMLINK on FreeBSD), with
		 * O_DIRECTORY on Linux with ENOTDIR: ask the folder what it is */
		struct stat lst;
		bool is_link = fd < 0 && fstatat(cur, comp, &lst, AT_SYMLINK_NOFOLLOW) == 0 && S_ISLNK(lst.st_mode);
		if (cur != dirfd)
			close(cur);
		if (fd < 0) {
			if (is_link)
				return anesc_fail(c, -EPERM,
				                  "%s: weight path '%s%s': '%s' is a symbolic link (refused: "
				                  "paths must stay inside the model folder)", dir, MODEL_PREFIX, rel, comp);
			return anesc_fail(c, -err, "%s: weight file '%s%s': %s", dir, MODEL_PREFIX, rel, strerror(err));
		}
		if (!slash) {
			struct stat st;
			if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
				close(fd);
				return anesc_fail(c, -EINVAL, "%s: weight path '%s%s' is not a regular file",
				                  dir, MODEL_PREFIX, rel);
			}
			*ret_fd = fd;
			return 0;
		}
		cur = fd;
		p = slash + 1;
	}
}

ANESHARE_API int aneshare_program_compile_model(aneshare_conn *c, const char *dir,
                                                aneshare_program **ret, bool *ret_cached)
{
	if (!c || !ret)
		return -EINVAL;
	if (!dir)
		return anesc_fail(c, -EINVAL, "no model folder");
	int dfd = open(dir, O_RDONLY | O_CLOEXEC | O_DIRECTORY);
	if (dfd < 0)
		return anesc_fail(c, -errno, "%s: %s", dir, strerror(errno));
	struct stat st;
	if (fstat(dfd, &st) != 0 || !S_ISDIR(st.st_mode)) {
		close(dfd);
		return anesc_fail(c, -ENOTDIR, "%s: not a folder", dir);
	}
	int mfd = openat(dfd, "model.mil", O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	if (mfd < 0) {
		int err = errno;
		close(dfd);
		if (err == ENOENT)
			return anesc_fail(c, -ENOENT, "%s: no model.mil in the folder (an .mlpackage must first be "
			                  "compiled: xcrun coremlcompiler compile X.mlpackage OUTDIR)", dir);
		return anesc_fail(c, -err, "%s/model.mil: %s", dir, strerror(err));
	}
	char *text = NULL;
	size_t len = 0;
	int rc = read_text(mfd, ANESHARE_MODEL_MIL_MAX, &text, &len);
	close(mfd);
	if (rc < 0) {
		close(dfd);
		if (rc == -EFBIG)
			return anesc_fail(c, rc, "%s/model.mil: larger than %u bytes", dir, (unsigned)ANESHARE_MODEL_MIL_MAX);
		return anesc_fail(c, rc, "%s/model.mil: %s", dir, strerror(-rc));
	}
	if (strlen(text) != len) {
		free(text);
		close(dfd);
		return anesc_fail(c, -EINVAL, "%s/model.mil: contains a NUL byte", dir);
	}

	/* every "@model_path/..." string, each distinct path once */
	aneshare_weight_fd files[ANES_MAX_FDS_PER_FRAME];
	char *paths[ANES_MAX_FDS_PER_FRAME];
	size_t n = 0;
	const char *q = text;
	rc = 0;
	while ((q = strstr(q, "\"" MODEL_PREFIX)) != NULL) {
		const char *s = q + 1, *e = strchr(s, '"');
		if (!e) {
			rc = anesc_fail(c, -EINVAL, "%s/model.mil: unterminated string after '%.40s'", dir, s);
			break;
		}
		size_t plen = (size_t)(e - s);
		q = e + 1;
		if (plen > ANESHARE_MODEL_PATH_MAX) {
			rc = anesc_fail(c, -ENAMETOOLONG, "%s/model.mil: a weight path longer than %d bytes", dir,
			                ANESHARE_MODEL_PATH_MAX);
			break;
		}
		bool seen = false;
		for (size_t i = 0; i < n && !seen; i++)
			seen = strlen(paths[i]) == plen && memcmp(paths[i], s, plen) == 0;
		if (seen)
			continue;
		if (n == ANES_MAX_FDS_PER_FRAME) {
			rc = anesc_fail(c, -E2BIG, "%s/model.mil: more than %d weight files", dir, ANES_MAX_FDS_PER_FRAME);
			break;
		}
		char *path = malloc(plen + 1);
		if (!path) {
			rc = anesc_fail(c, -ENOMEM, "out of memory");
			break;
		}
		memcpy(path, s, plen);
		path[plen] = '\0';
		int fd = -1;
		rc = open_inside(c, dfd, dir, path + strlen(MODEL_PREFIX), &fd);
		if (rc < 0) {
			free(path);
			break;
		}
		paths[n] = path;
		files[n].path = path;
		files[n].fd = fd;
		n++;
	}
	close(dfd);
	if (rc == 0)
		rc = aneshare_program_compile_fds(c, text, files, n, ret, ret_cached);
	for (size_t i = 0; i < n; i++) {
		close(files[i].fd);
		free(paths[i]);
	}
	free(text);
	return rc;
}
