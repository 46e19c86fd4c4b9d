/* SPDX-License-Identifier: MIT */
/*
 * Resident memory of a compiled program against the size of its weights, on
 * the CPU backend, in one process (no daemon): a chain of linear layers whose
 * fp16 weights come from one MIL blob file of about MIB MiB.
 *
 *   ninja -C build bench/bench_weights && build/bench/bench_weights [MIB] [--map FILE]
 *
 * The blob is built in memory and copied by the compile (or, with --map,
 * written to FILE, mapped read-only and used in place, anes_weight.kept, as
 * aneshared uses a sealed weight memfd or its copy of a weight file).  Printed:
 * the blob's bytes, and the resident set added by compiling the program and
 * running it once, as a multiple of the blob (the blob's own pages are
 * counted before compiling, so 0.0x means the program keeps no copy).
 * Resident sizes come from /proc/self/statm (Linux; elsewhere "n/a").
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "anes_fp16.h"
#include "backend.h"

static long long resident_bytes(void)
{
#ifdef __linux__
	FILE *f = fopen("/proc/self/statm", "r");
	long long size = 0, res = -1;
	if (f) {
		if (fscanf(f, "%lld %lld", &size, &res) != 2)
			res = -1;
		fclose(f);
	}
	return res < 0 ? -1 : res * sysconf(_SC_PAGESIZE);
#else
	return -1;
#endif
}

static void put32(uint8_t *p, uint32_t v)
{
	for (int i = 0; i < 4; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

static void put64(uint8_t *p, uint64_t v)
{
	for (int i = 0; i < 8; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

int main(int argc, char **argv)
{
	long mib = 256;
	const char *map_path = NULL;
	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--map") == 0 && i + 1 < argc)
			map_path = argv[++i];
		else
			mib = strtol(argv[i], NULL, 10);
	}
	const uint64_t D = 2048;                        /* layers of [D, D] fp16: 8 MiB each */
	uint64_t layers = (uint64_t)mib * (1u << 20) / (D * D * 2);
	if (layers < 1)
		layers = 1;
	uint64_t rec = 64 + D * D * 2, len = 64 + layers * rec;

	uint8_t *blob = malloc(len);
	if (!blob)
		return 1;
	memset(blob, 0, 64);
	put32(blob, (uint32_t)layers);
	put32(blob + 4, 2);
	for (uint64_t l = 0; l < layers; l++) {
		uint8_t *m = blob + 64 + l * rec;
		memset(m, 0, 64);
		put32(m, 0xDEADBEEFu);
		put32(m + 4, 1);
		put64(m + 8, D * D * 2);
		put64(m + 16, (uint64_t)(m + 64 - blob));
		uint16_t *w = (uint16_t *)(void *)(m + 64);
		for (uint64_t i = 0; i < D * D; i++)
			w[i] = anes_f32_to_f16_soft((float)((int)((i * 2654435761u + l) % 2001) - 1000) / 64000.0f);
	}
	const uint8_t *weights = blob;
	if (map_path) {
		int fd = open(map_path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
		if (fd < 0 || write(fd, blob, len) != (ssize_t)len) {
			perror(map_path);
			return 1;
		}
		free(blob);
		void *p = mmap(NULL, len, PROT_READ, MAP_SHARED, fd, 0);
		close(fd);
		if (p == MAP_FAILED)
			return 1;
		weights = p;
		for (uint64_t i = 0; i < len; i += 4096)   /* fault it in, as a first read would */
			(void)*(volatile const uint8_t *)(weights + i);
	}

	size_t cap = 4096 + layers * 400;
	char *text = malloc(cap);
	size_t o = (size_t)snprintf(text, cap, "program(1.3)\n{\n    func main<ios18>(tensor<fp16, [1, %llu]> x) {\n",
	                            (unsigned long long)D);
	for (uint64_t l = 0; l < layers; l++) {
		char src[32];
		if (l)
			snprintf(src, sizeof src, "h%llu", (unsigned long long)(l - 1));
		else
			snprintf(src, sizeof src, "x");
		o += (size_t)snprintf(text + o, cap - o,
		                      "        tensor<fp16, [%llu, %llu]> w%llu = const()[name = string(\"w%llu\"), val = "
		                      "tensor<fp16, [%llu, %llu]>(BLOBFILE(path = string(\"@model_path/weights/weight.bin\"), "
		                      "offset = uint64(%llu)))];\n"
		                      "        tensor<fp16, [1, %llu]> h%llu = linear(x = %s, weight = w%llu)[name = string(\"h%llu\")];\n",
		                      (unsigned long long)D, (unsigned long long)D, (unsigned long long)l, (unsigned long long)l,
		                      (unsigned long long)D, (unsigned long long)D, (unsigned long long)(64 + l * rec),
		                      (unsigned long long)D, (unsigned long long)l, src, (unsigned long long)l,
		                      (unsigned long long)l);
	}
	snprintf(text + o, cap - o, "    } -> (h%llu);\n}\n", (unsigned long long)(layers - 1));

	anes_backend *B;
	if (anes_cpu_backend_new(1, &B))
		return 1;
	long long r0 = resident_bytes();
	/* mapped: kept for the program, as the daemon does with a weight file */
	anes_weight wt = {"@model_path/weights/weight.bin", weights, len, map_path != NULL, false, -1};
	anes_bprogram *p = NULL;
	char err[512];
	int rc = B->ops->compile(B, text, strlen(text), &wt, 1, &p, err, sizeof err);
	if (rc) {
		fprintf(stderr, "compile: %s\n", err);
		return 1;
	}
	uint16_t *x = calloc(D, 2), *y = calloc(D, 2);
	for (uint64_t i = 0; i < D; i++)
		x[i] = anes_f32_to_f16_soft(0.01f * (float)(i % 7));
	const void *in[1] = {x};
	void *out[1] = {y};
	rc = B->ops->run(B, p, 0, in, out, err, sizeof err);
	if (rc) {
		fprintf(stderr, "run: %s\n", err);
		return 1;
	}
	long long r1 = resident_bytes();
	printf("| weights (%s) | layers | blob MiB | program resident MiB | program / blob |\n|---|---|---|---|---|\n",
	       map_path ? "mapped file" : "in memory");
	if (r0 < 0 || r1 < 0)
		printf("| fp16 linear [%llu, %llu] | %llu | %.1f | n/a | n/a |\n", (unsigned long long)D,
		       (unsigned long long)D, (unsigned long long)layers, (double)len / 1048576.0);
	else
		printf("| fp16 linear [%llu, %llu] | %llu | %.1f | %.1f | %.2fx |\n", (unsigned long long)D,
		       (unsigned long long)D, (unsigned long long)layers, (double)len / 1048576.0,
		       (double)(r1 - r0) / 1048576.0, (double)(r1 - r0) / (double)len);
	B->ops->program_free(B, p);
	B->ops->destroy(B);
	free(text);
	free(x);
	free(y);
	return 0;
}
