/* SPDX-License-Identifier: MIT */
#include "test_util.h"

#include <dirent.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#ifdef __linux__
#include <signal.h>
#include <sys/prctl.h>
#endif
#ifdef __APPLE__
#include <libproc.h>
#endif

int64_t tu_now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void tu_die_with_parent(void)
{
#ifdef __linux__
	prctl(PR_SET_PDEATHSIG, SIGKILL);
#endif
}

void tu_pause_ms(int ms)
{
	struct timespec ts = { ms / 1000, (long)(ms % 1000) * 1000000L };
	nanosleep(&ts, NULL);
}

char *tu_read_file(const char *path)
{
	FILE *f = fopen(path, "re");
	if (!f)
		return NULL;
	char *buf = NULL;
	size_t len = 0;
	FILE *m = open_memstream(&buf, &len);
	if (!m)
		abort();
	char chunk[4096];
	size_t n;
	while ((n = fread(chunk, 1, sizeof chunk, f)) > 0)
		fwrite(chunk, 1, n, m);
	fclose(f);
	if (fclose(m) != 0 || !buf)
		abort();
	return buf;
}

int tu_dir_entries(const char *path)
{
	DIR *d = opendir(path);
	if (!d)
		return -1;
	int n = 0;
	struct dirent *e;
	while ((e = readdir(d)))
		if (e->d_name[0] != '.')
			n++;
	closedir(d);
	return n;
}

int tu_fd_count(pid_t pid)
{
#if defined(__APPLE__)
	int bytes = proc_pidinfo(pid, PROC_PIDLISTFDS, 0, NULL, 0);   /* an upper bound */
	if (bytes <= 0)
		return -1;
	struct proc_fdinfo *fi = malloc((size_t)bytes);
	if (!fi)
		abort();
	bytes = proc_pidinfo(pid, PROC_PIDLISTFDS, 0, fi, bytes);
	free(fi);
	return bytes < 0 ? -1 : bytes / (int)PROC_PIDLISTFD_SIZE;
#else
	char path[64];
	snprintf(path, sizeof path, "/proc/%ld/fd", (long)pid);
	int n = tu_dir_entries(path);
	return n > 0 && pid == getpid() ? n - 1 : n;   /* the directory's own fd */
#endif
}

long tu_proc_status_kb(pid_t pid, const char *key)
{
	char path[64], line[256];
	snprintf(path, sizeof path, "/proc/%ld/status", (long)pid);
	FILE *f = fopen(path, "re");
	if (!f)
		return -1;
	long kb = -1;
	size_t kl = strlen(key);
	while (fgets(line, sizeof line, f))
		if (!strncmp(line, key, kl) && line[kl] == ':') {
			kb = strtol(line + kl + 1, NULL, 10);
			break;
		}
	fclose(f);
	return kb;
}

/* ---- matmul ------------------------------------------------------------------- */

bool h_mm_from_program(const aneshare_program *p, h_mm *ret)
{
	if (aneshare_program_input_count(p, 0) != 1 || aneshare_program_output_count(p, 0) != 1)
		return false;
	const aneshare_tensor_info *ti = aneshare_program_input(p, 0, 0);
	const aneshare_tensor_info *to = aneshare_program_output(p, 0, 0);
	if (ti->dtype != ANESHARE_FP16 || to->dtype != ANESHARE_FP16 || ti->rank != 4 ||
	    to->rank != 4 || ti->shape[0] != 1 || ti->shape[2] != 1 || to->shape[0] != 1 ||
	    to->shape[2] != 1 || ti->shape[3] != to->shape[3] + to->shape[1])
		return false;
	ret->ic = (size_t)ti->shape[1];
	ret->oc = (size_t)to->shape[1];
	ret->seq = (size_t)to->shape[3];
	ret->in_bytes = (size_t)ti->bytes;
	ret->out_bytes = (size_t)to->bytes;
	return true;
}

void h_mm_fill(const h_mm *mm, uint16_t *x, uint64_t seed)
{
	size_t n = mm->ic * (mm->seq + mm->oc);
	uint64_t s = seed * 0x9e3779b97f4a7c15ull + 1;
	for (size_t i = 0; i < n; i++) {
		s ^= s << 13;
		s ^= s >> 7;
		s ^= s << 17;
		float f = (float)((double)(s >> 11) / (double)(1ull << 53) * 2.0 - 1.0);
		aneshare_f32_to_f16(&x[i], &f, 1);
	}
}

double tu_mm_error(const h_mm *mm, const uint16_t *x, const uint16_t *y, float *xf, float *yf)
{
	size_t w = mm->seq + mm->oc;
	aneshare_f16_to_f32(xf, x, mm->ic * w);
	aneshare_f16_to_f32(yf, y, mm->oc * mm->seq);
	double max_ref = 0, max_err = 0;
	for (size_t o = 0; o < mm->oc; o++)
		for (size_t s = 0; s < mm->seq; s++) {
			double acc = 0;
			for (size_t i = 0; i < mm->ic; i++)
				acc += (double)xf[i * w + s] * (double)xf[i * w + mm->seq + o];
			double e = fabs((double)yf[o * mm->seq + s] - acc);
			if (!(e <= max_err))
				max_err = isnan(e) ? INFINITY : e;
			max_ref = fmax(max_ref, fabs(acc));
		}
	return max_ref > 0 ? max_err / max_ref : max_err;
}
