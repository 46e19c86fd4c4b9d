/* SPDX-License-Identifier: MIT */
/* MIL parser / type checker tests. */
#include <criterion/criterion.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "anes_fp16.h"
#include "mil.h"

#define BUILDINFO \
	"[buildInfo = dict<string, string>({{\"coremlc-component-MIL\", \"3510.2.1\"}, {\"coremlc-version\", \"3505.4.1\"}, " \
	"{\"coremltools-component-milinternal\", \"\"}, {\"coremltools-version\", \"9.0\"}})]\n"

static char errbuf[512];

static int parse(const char *text, const anes_weight *w, size_t nw, anes_mil_program **ret)
{
	errbuf[0] = 0;
	return anes_mil_parse(text, strlen(text), w, nw, ret, errbuf, sizeof errbuf);
}

/* a fp16 weight blob with one chunk at offset 64 holding n halfs */
static uint8_t *make_blob(size_t n, size_t *ret_len)
{
	size_t len = 128 + 2 * n;
	uint8_t *b = calloc(1, len);
	b[0] = 1;
	b[4] = 2;
	uint8_t *c = b + 64;
	c[0] = 0xEF; c[1] = 0xBE; c[2] = 0xAD; c[3] = 0xDE;
	c[4] = 1;
	uint32_t size = (uint32_t)(2 * n), off = 128;
	memcpy(c + 8, &size, 4);
	memcpy(c + 16, &off, 4);
	for (size_t i = 0; i < n; i++) {
		uint16_t h = anes_f32_to_f16((float)i * 0.25f);
		memcpy(b + 128 + 2 * i, &h, 2);
	}
	*ret_len = len;
	return b;
}

static const char *good =
	"program(1.3)\n"                                                                      /* 1 */
	BUILDINFO                                                                             /* 2 */
	"{\n"                                                                                 /* 3 */
	"    // a helper function first in the file\n"                                        /* 4 */
	"    func helper<ios18>(tensor<fp32, [3]> a, fp32 s) {\n"                             /* 5 */
	"        tensor<fp32, [3]> r = mul(x = a, y = s)[name = string(\"r\")];\n"            /* 6 */
	"    } -> (r);\n"                                                                     /* 7 */
	"    func main<ios18>(tensor<fp16, [1, 64, 1, 192]> x, tensor<int32, [2, 2]> ix) {\n" /* 8 */
	"        tensor<int32, [4]> b0 = const()[name = string(\"b0\"), val = tensor<int32, [4]>([0, 0, 0, 0])];\n"
	"        tensor<int32, [4]> s0 = const()[name = string(\"s0\"), val = tensor<int32, [4]>([1, 64, 1, 64])];\n"
	"        tensor<fp16, [1, 64, 1, 64]> act = slice_by_size(x = x, begin = b0, size = s0)[name = string(\"act\")];\n"
	"        bool tx = const()[name = string(\"tx\"), val = bool(false)];\n"
	"        tensor<fp16, [64, 64, 1, 1]> W = const()[name = string(\"W\"), val = tensor<fp16, [64, 64, 1, 1]>(BLOBFILE(path = string(\"@model_path/weights/w.bin\"), offset = uint64(64)))];\n"
	"        tensor<int32, [4]> sh = const()[name = string(\"sh\"), val = tensor<int32, [4]>([1, 1, 64, 64])];\n"
	"        tensor<fp16, [1, 1, 64, 64]> a = reshape(x = act, shape = sh)[name = string(\"a\")];\n"
	"        tensor<fp16, [1, 1, 64, 64]> w = reshape(x = W, shape = sh)[name = string(\"w\")];\n"
	"        tensor<fp16, [1, 1, 64, 64]> y = matmul(transpose_x = tx, transpose_y = false, x = a, y = w)[name = string(\"y\")];\n"
	"        fp16 h = const()[name = string(\"h\"), val = fp16(0x1p-3)];\n"
	"        fp32 f = const()[name = string(\"f\"), val = fp32(-1.5e-3)];\n"
	"        int32 i = const()[name = string(\"i\"), val = int32(-3)];\n"
	"        string to32 = const()[name = string(\"to32\"), val = string(\"fp32\")];\n"
	"        tensor<int8, [2, 2]> i8 = const()[name = string(\"i8\"), val = tensor<int8, [2, 2]>([[-128, 127], [0, 1]])];\n"
	"        tensor<uint8, [2]> u8 = const()[name = string(\"u8\"), val = tensor<uint8, [2]>([0, 255])];\n"
	"        tensor<int16, [1]> i16 = const()[name = string(\"i16\"), val = tensor<int16, [1]>([-32768])];\n"
	"        tensor<bool, [3]> bs = const()[name = string(\"bs\"), val = tensor<bool, [3]>([true, false, true])];\n"
	"        tensor<fp16, [1, 1, 64, 64]> yh = mul(x = y, y = h);\n"
	"        tensor<fp32, [1, 1, 64, 64]> y32 = cast(x = yh, dtype = to32)[name = string(\"y32\")];\n"
	"        int32 ax = const()[name = string(\"ax\"), val = int32(-1)];\n"
	"        tensor<fp16, [1, 64, 1, 192]> cc = concat(values = (act, act, act), axis = ax, interleave = false)[name = string(\"cc\")];\n"
	"        tensor<int32, [2]> sum = reduce_sum(x = ix, axes = tensor<int32, [1]>([0]), keep_dims = false);\n"
	"        tensor<fp32, [1, 1, 64, 64]> z = add(x = y32, y = f);\n"
	"    } -> (z, cc, sum);\n"
	"}\n";

Test(mil, parses_good_program)
{
	size_t blen;
	uint8_t *blob = make_blob(64 * 64, &blen);
	anes_weight w = {"@model_path/weights/w.bin", blob, blen, false, false, -1};
	anes_mil_program *p = NULL;

	int rc = parse(good, &w, 1, &p);
	cr_assert_eq(rc, 0, "rc %d: %s", rc, errbuf);
	cr_assert_str_eq(p->version, "1.3");
	cr_assert_eq(p->n_functions, 2);
	/* main first even though it comes second in the file */
	cr_assert_str_eq(p->info[0].name, "main");
	cr_assert_str_eq(p->info[1].name, "helper");
	cr_assert_str_eq(p->functions[0].opset, "ios18");

	const anes_function_info *m = &p->info[0];
	cr_assert_eq(m->n_inputs, 2);
	cr_assert_str_eq(m->inputs[0].name, "x");
	cr_assert_eq(m->inputs[0].dtype, ANES_DT_FP16);
	cr_assert_eq(m->inputs[0].rank, 4);
	cr_assert_eq(m->inputs[0].shape[3], 192);
	cr_assert_eq(m->inputs[0].bytes, 64 * 192 * 2);
	cr_assert_eq(m->inputs[1].dtype, ANES_DT_INT32);
	cr_assert_eq(m->inputs[1].bytes, 16);
	cr_assert_eq(m->n_outputs, 3);
	cr_assert_str_eq(m->outputs[0].name, "z");
	cr_assert_eq(m->outputs[0].dtype, ANES_DT_FP32);
	cr_assert_eq(m->outputs[0].bytes, 64 * 64 * 4);
	cr_assert_str_eq(m->outputs[1].name, "cc");
	cr_assert_eq(m->outputs[1].shape[3], 192);
	cr_assert_eq(m->outputs[2].rank, 1);
	cr_assert_eq(m->outputs[2].shape[0], 2);

	const anes_function_info *h = &p->info[1];
	cr_assert_eq(h->n_inputs, 2);
	cr_assert_eq(h->inputs[1].rank, 0);
	cr_assert_eq(h->inputs[1].bytes, 4);
	cr_assert_eq(h->outputs[0].bytes, 12);

	/* literal values */
	const anes_mil_function *fn = &p->functions[0];
	bool found_h = false, found_w = false, found_i8 = false, found_f = false;
	for (uint32_t i = 0; i < fn->n_values; i++) {
		const anes_mil_value *v = &fn->values[i];
		if (strcmp(v->name, "h") == 0) {
			found_h = true;
			cr_assert_eq(v->kind, ANES_MIL_V_CONST);
			cr_assert_float_eq(anes_f16_to_f32(*(const uint16_t *)v->data), 0.125f, 0);
		} else if (strcmp(v->name, "f") == 0) {
			found_f = true;
			cr_assert_float_eq(*(const float *)v->data, -1.5e-3f, 0);
		} else if (strcmp(v->name, "W") == 0) {
			found_w = true;
			const uint16_t *d = v->data;
			cr_assert_eq(v->type.bytes, 64 * 64 * 2);
			cr_assert_float_eq(anes_f16_to_f32(d[5]), 1.25f, 0);
			cr_assert_float_eq(anes_f16_to_f32(d[4095]), 4095 * 0.25f, 1.0f);
		} else if (strcmp(v->name, "i8") == 0) {
			found_i8 = true;
			const int8_t *d = v->data;
			cr_assert_eq(d[0], -128);
			cr_assert_eq(d[1], 127);
			cr_assert_eq(d[3], 1);
		} else if (strcmp(v->name, "to32") == 0) {
			cr_assert_str_eq(anes_mil_const_string(v), "fp32");
		}
	}
	cr_assert(found_h && found_w && found_i8 && found_f);
	/* ops: const() is not an op; op names from the name attribute */
	cr_assert_eq(fn->n_ops, 9);
	cr_assert_str_eq(fn->ops[0].name, "act");
	cr_assert_str_eq(fn->ops[0].def->name, "slice_by_size");
	cr_assert_str_eq(fn->ops[4].name, "yh");
	anes_mil_program_free(p);
	free(blob);
}

Test(mil, minimal_and_no_opset)
{
	anes_mil_program *p = NULL;
	const char *t = "program(1.0)\n{\n func f(tensor<fp32, []> a) {\n } -> (a);\n}\n";
	cr_assert_eq(parse(t, NULL, 0, &p), 0, "%s", errbuf);
	cr_assert_eq(p->info[0].inputs[0].rank, 0);
	cr_assert_eq(p->info[0].outputs[0].bytes, 4);
	anes_mil_program_free(p);
	anes_mil_program_free(NULL);
}

Test(mil, dtype_names)
{
	cr_assert_str_eq(anes_dtype_name(ANES_DT_FP16), "fp16");
	cr_assert_str_eq(anes_dtype_name(ANES_DT_UINT8), "uint8");
	cr_assert_str_eq(anes_dtype_name(ANES_DT_BOOL), "bool");
	cr_assert_null(anes_dtype_name((anes_dtype)0));
	cr_assert_null(anes_dtype_name((anes_dtype)ANES_MIL_DT_STRING));
	cr_assert_eq(anes_dtype_size(ANES_DT_FP16), 2);
	cr_assert_eq(anes_dtype_size(ANES_DT_INT32), 4);
	cr_assert_eq(anes_dtype_size(ANES_DT_BOOL), 1);
	cr_assert_eq(anes_dtype_size((anes_dtype)99), 0);
}

Test(mil, example_file_parses)
{
	char path[1024];
	const char *f = __FILE__;
	const char *slash = strrchr(f, '/');
	int n = slash ? (int)(slash - f) : 1;
	snprintf(path, sizeof path, "%.*s/../examples/dynamic_matmul.mil", n, slash ? f : ".");
	FILE *fp = fopen(path, "rb");
	if (!fp) {
		cr_log_warn("cannot open %s, skipping", path);
		return;
	}
	static char buf[1 << 16];
	size_t len = fread(buf, 1, sizeof buf, fp);
	fclose(fp);
	anes_mil_program *p = NULL;
	int rc = anes_mil_parse(buf, len, NULL, 0, &p, errbuf, sizeof errbuf);
	cr_assert_eq(rc, 0, "%s", errbuf);
	cr_assert_eq(p->info[0].inputs[0].shape[3], 128);
	cr_assert_eq(p->info[0].outputs[0].shape[1], 64);
	anes_mil_program_free(p);
}

/* ---- errors ---- */

/* program with BODY at line 4 (function header on line 3) */
static int parse_body(const char *body, const anes_weight *w, size_t nw)
{
	static char text[8192];
	anes_mil_program *p = NULL;
	snprintf(text, sizeof text,
	         "program(1.3)\n{\n  func main<ios18>(tensor<fp16, [2, 3]> x, tensor<fp16, [3, 4]> m) {\n%s\n  } -> (x);\n}\n",
	         body);
	int rc = parse(text, w, nw, &p);
	if (rc == 0)
		anes_mil_program_free(p);
	return rc;
}

static void expect_err(const char *body, int want_rc, int line, const char *substr)
{
	char want[32];
	int rc = parse_body(body, NULL, 0);
	cr_assert_eq(rc, want_rc, "body <%s>: rc %d (want %d): %s", body, rc, want_rc, errbuf);
	snprintf(want, sizeof want, "line %d: ", line);
	cr_assert(strncmp(errbuf, want, strlen(want)) == 0, "body <%s>: message '%s', want '%s...'", body, errbuf,
	          want);
	if (substr)
		cr_assert(strstr(errbuf, substr), "message '%s' lacks '%s'", errbuf, substr);
	cr_assert_null(strchr(errbuf, '\n'));
}

Test(mil, error_unknown_op)
{
	expect_err("    tensor<fp16, [2, 3]> y = frobnicate(x = x);", -ENOTSUP, 4, "frobnicate");
}

Test(mil, error_undefined_ref)
{
	expect_err("    tensor<fp16, [2, 3]> y = add(x = x, y = nope);", -EINVAL, 4, "nope");
}

Test(mil, error_redefinition)
{
	expect_err("    tensor<fp16, [2, 3]> y = add(x = x, y = x);\n    tensor<fp16, [2, 3]> y = add(x = x, y = x);",
	           -EINVAL, 5, "redefinition of 'y'");
	expect_err("    tensor<fp16, [2, 3]> x = identity(x = x);", -EINVAL, 4, "redefinition");
}

Test(mil, error_declared_type_mismatch)
{
	expect_err("    tensor<fp16, [2, 4]> y = add(x = x, y = x);", -EINVAL, 4, "op 'add' (y)");
	expect_err("    tensor<fp32, [2, 3]> y = add(x = x, y = x);", -EINVAL, 4, "does not match");
	expect_err("\n    tensor<fp16, [3, 2]> y = matmul(x = x, y = m);", -EINVAL, 5, "does not match");
	expect_err("    tensor<int32, [2]> c = const()[name = string(\"c\"), val = tensor<int32, [3]>([1, 2, 3])];",
	           -EINVAL, 4, "does not match");
	expect_err("    fp16 c = const()[val = fp32(1.0)];", -EINVAL, 4, "does not match");
}

Test(mil, error_matmul_inner)
{
	expect_err("    tensor<fp16, [2, 4]> y = matmul(x = m, y = x);", -EINVAL, 4,
	           "op 'matmul' (y): inner dimensions differ: x is [3,4], y is [2,3]");
	expect_err("    tensor<fp16, [2, 4]> y = matmul(x = x, y = m, transpose_x = true);", -EINVAL, 4,
	           "inner dimensions differ");
}

Test(mil, error_slice_bounds)
{
	expect_err("    tensor<fp16, [2, 3]> y = slice_by_size(x = x, begin = tensor<int32, [2]>([0, 1]), size = tensor<int32, [2]>([2, 3]));",
	           -EINVAL, 4, "out of bounds");
	expect_err("    tensor<fp16, [2, 3]> y = slice_by_size(x = x, begin = tensor<int32, [2]>([-1, 0]), size = tensor<int32, [2]>([2, 3]));",
	           -EINVAL, 4, "out of bounds");
	expect_err("    tensor<fp16, [2, 3]> y = slice_by_size(x = x, begin = tensor<int32, [1]>([0]), size = tensor<int32, [2]>([2, 3]));",
	           -EINVAL, 4, "begin and size");
	expect_err("    tensor<fp16, [2, 3]> y = slice_by_size(x = x, begin = m, size = tensor<int32, [2]>([2, 3]));",
	           -ENOTSUP, 4, "constant");
}

Test(mil, error_arity)
{
	expect_err("    tensor<fp16, [2, 3]> y = add(x = x);", -EINVAL, 4, "missing required argument 'y'");
	expect_err("    tensor<fp16, [2, 3]> y = add(x = x, y = x, z = x);", -EINVAL, 4, "unknown argument 'z'");
	expect_err("    tensor<fp16, [2, 3]> y = add(x = x, x = x);", -EINVAL, 4, "duplicate argument");
	expect_err("    tensor<fp16, [2, 3]> y = add(x = (x, x), y = x);", -EINVAL, 4, "tuple");
	expect_err("    tensor<fp16, [2, 6]> y = concat(values = x, axis = 1);", -EINVAL, 4, "tuple");
	expect_err("    (tensor<fp16, [2, 3]> y, tensor<fp16, [2, 3]> z) = add(x = x, y = x);", -EINVAL, 4, "outputs");
}

Test(mil, error_other_checks)
{
	expect_err("    tensor<fp16, [6]> y = reshape(x = x, shape = tensor<int32, [1]>([5]));", -EINVAL, 4, "reshape");
	expect_err("    tensor<fp16, [3, 2]> y = transpose(x = x, perm = tensor<int32, [2]>([0, 0]));", -EINVAL, 4,
	           "permutation");
	expect_err("    tensor<fp16, [2, 3]> y = add(x = x, y = m);", -EINVAL, 4, "broadcast");
	expect_err("    tensor<fp16, [2, 3]> y = cast(x = x, dtype = string(\"fp64\"));", -ENOTSUP, 4, "fp64");
	expect_err("    tensor<fp16, [2, 5]> y = concat(values = (x, m), axis = 1);", -EINVAL, 4, "values[1]");
	expect_err("    tensor<fp16, [2, 3]> y = concat(values = (x, x), axis = 2);", -EINVAL, 4, "out of range");
	expect_err("    tensor<fp16, [3]> y = reduce_sum(x = x, axes = tensor<int32, [2]>([0, -2]));", -EINVAL, 4,
	           "repeated");
	expect_err("    int8 c = const()[val = int8(200)];", -EINVAL, 4, "out of range");
	expect_err("    tensor<fp16, [3]> c = const()[val = tensor<fp16, [3]>([1.0, 2.0])];", -EINVAL, 4, "elements");
	expect_err("    tensor<fp16, [2]> c = const()[val = tensor<fp16, [2]>([1.0, 2.0, 3.0])];", -EINVAL, 4,
	           "more than");
	expect_err("    tensor<fp64, [2]> c = const()[val = tensor<fp64, [2]>([1.0, 2.0])];", -ENOTSUP, 4, "fp64");
	expect_err("    tensor<fp16, [2, 3]> y = add(x = x, y = x) $;", -EINVAL, 4, "unexpected character");
}

Test(mil, error_unterminated_string)
{
	expect_err("    string s = const()[val = string(\"abc)];", -EINVAL, 4, "unterminated string");
}

Test(mil, error_missing_arrow)
{
	anes_mil_program *p = NULL;
	const char *t = "program(1.3)\n{\n  func main(tensor<fp16, [2]> x) {\n  }\n}\n";
	cr_assert_eq(parse(t, NULL, 0, &p), -EINVAL);
	cr_assert(strncmp(errbuf, "line 5: ", 8) == 0, "%s", errbuf);
	cr_assert(strstr(errbuf, "->"), "%s", errbuf);
	const char *t2 = "program(1.3)\n{\n  func main(tensor<fp16, [2]> x) {\n  } -> (nope);\n}\n";
	cr_assert_eq(parse(t2, NULL, 0, &p), -EINVAL);
	cr_assert(strncmp(errbuf, "line 4: ", 8) == 0, "%s", errbuf);
	cr_assert(strstr(errbuf, "nope"), "%s", errbuf);
}

Test(mil, error_huge_dims_and_rank)
{
	expect_err("    tensor<fp16, [2147483647, 2147483647, 2147483647]> c = const()[val = fp16(1)];", -EINVAL, 4,
	           NULL);
	expect_err("    tensor<fp16, [99999999999999999999]> c = const()[val = fp16(1)];", -EINVAL, 4, "too large");
	expect_err("    tensor<fp16, [65536, 65536]> c = const()[val = fp16(1)];", -EINVAL, 4, NULL);
	expect_err("    tensor<fp16, [0]> c = const()[val = fp16(1)];", -EINVAL, 4, "positive");
	expect_err("    tensor<fp16, [1, 1, 1, 1, 1, 1, 1, 1, 1]> c = const()[val = fp16(1)];", -EINVAL, 4, "rank");
	/* a declared shape far larger than the literal: rejected without allocating */
	expect_err("    tensor<fp16, [8192, 8192]> c = const()[val = tensor<fp16, [8192, 8192]>([1])];", -EINVAL, 4,
	           NULL);
}

Test(mil, error_program_too_large)
{
	/* each input is 2 GiB (the default per-tensor limit); 17 of them exceed the 32 GiB of values */
	anes_mil_program *p = NULL;
	char t[2048];
	size_t o = (size_t)snprintf(t, sizeof t, "program(1.3)\n{\n func main(");
	for (int i = 0; i < 17; i++)
		o += (size_t)snprintf(t + o, sizeof t - o, "%stensor<fp32, [536870912]> a%d\n", i ? ", " : "", i);
	snprintf(t + o, sizeof t - o, ") {\n } -> (a0);\n}\n");
	cr_assert_eq(parse(t, NULL, 0, &p), -EINVAL);
	cr_assert(strncmp(errbuf, "line 19: ", 9) == 0, "%s", errbuf);
	cr_assert(strstr(errbuf, "more than 34359738368 bytes of values"), "%s", errbuf);
}

static void blob_err(uint8_t *blob, size_t len, const char *offset, const char *substr)
{
	char body[512];
	anes_weight w = {"@model_path/weights/w.bin", blob, len, false, false, -1};
	snprintf(body, sizeof body,
	         "    tensor<fp16, [4, 4]> W = const()[name = string(\"W\"), val = tensor<fp16, [4, 4]>(BLOBFILE(path = "
	         "string(\"@model_path/weights/w.bin\"), offset = uint64(%s)))];",
	         offset);
	int rc = parse_body(body, &w, 1);
	cr_assert_eq(rc, -EINVAL, "rc %d %s", rc, errbuf);
	cr_assert(strncmp(errbuf, "line 4: ", 8) == 0, "%s", errbuf);
	cr_assert(strstr(errbuf, substr), "'%s' lacks '%s'", errbuf, substr);
}

Test(mil, blob_errors)
{
	size_t len;
	uint8_t *b = make_blob(16, &len);
	char body[512];
	anes_weight w = {"@model_path/weights/w.bin", b, len, false, false, -1};

	snprintf(body, sizeof body,
	         "    tensor<fp16, [4, 4]> W = const()[val = tensor<fp16, [4, 4]>(BLOBFILE(path = "
	         "string(\"@model_path/weights/w.bin\"), offset = uint64(64)))];");
	cr_assert_eq(parse_body(body, &w, 1), 0, "%s", errbuf);

	blob_err(b, len, "65", "magic");
	blob_err(b, len, "1000", "outside");
	blob_err(b, len, "18446744073709551615", "outside");
	blob_err(b, 100, "64", "outside");                 /* truncated chunk header */
	blob_err(b, len - 1, "64", "outside");             /* truncated data */
	blob_err(b, 10, "0", "too short");
	b[64] = 0xEE;
	blob_err(b, len, "64", "magic");
	b[64] = 0xEF;
	b[72] = 30;                                        /* wrong size */
	blob_err(b, len, "64", "holds 30 bytes");
	b[72] = 32;
	b[80] = 0xF0;                                      /* data offset out of range */
	blob_err(b, len, "64", "outside");
	b[80] = 128;
	b[68] = 2;                                         /* fp32 data type for a fp16 tensor */
	blob_err(b, len, "64", "data type");
	b[68] = 1;
	b[69] = 1;                                         /* the data type is a u32: 0x101 */
	blob_err(b, len, "64", "data type 257");
	b[69] = 0;
	cr_assert_eq(parse_body(body, &w, 1), 0, "%s", errbuf);

	/* the storage header: version 2 at byte 4 (Core ML's storage reader
	 * refuses any other); the count at byte 0 is not checked, as there */
	b[4] = 0;
	blob_err(b, len, "64", "file format version 0");
	b[4] = 1;                                          /* Espresso's blob_v1 */
	blob_err(b, len, "64", "expects version 2");
	b[4] = 2;
	b[7] = 1;                                          /* 0x01000002 */
	blob_err(b, len, "64", "version 16777218");
	b[7] = 0;
	b[0] = 0;
	cr_assert_eq(parse_body(body, &w, 1), 0, "%s", errbuf);
	b[0] = 1;
	/* a metadata record overlapping the header */
	memcpy(b, b + 64, 4);
	blob_err(b, len, "0", "inside the 64-byte storage header");
	memset(b, 0, 4);
	b[0] = 1;
	cr_assert_eq(parse_body(body, &w, 1), 0, "%s", errbuf);

	/* int32 data is type 14 in the format (int16 6): 8 int32 values = the 32 bytes */
	b[68] = 14;
	snprintf(body, sizeof body,
	         "    tensor<int32, [8]> W = const()[val = tensor<int32, [8]>(BLOBFILE(path = "
	         "string(\"@model_path/weights/w.bin\"), offset = uint64(64)))];");
	cr_assert_eq(parse_body(body, &w, 1), 0, "%s", errbuf);
	b[68] = 4;
	cr_assert_eq(parse_body(body, &w, 1), -EINVAL);
	cr_assert(strstr(errbuf, "has data type 4, expected 14 for int32"), "%s", errbuf);
	b[68] = 6;
	snprintf(body, sizeof body,
	         "    tensor<int16, [16]> W = const()[val = tensor<int16, [16]>(BLOBFILE(path = "
	         "string(\"@model_path/weights/w.bin\"), offset = uint64(64)))];");
	cr_assert_eq(parse_body(body, &w, 1), 0, "%s", errbuf);
	b[68] = 1;

	/* unknown path */
	anes_weight other = {"@model_path/weights/other.bin", b, len, false, false, -1};
	cr_assert_eq(parse_body(body, &other, 1), -EINVAL);
	cr_assert(strstr(errbuf, "unknown weight blob '@model_path/weights/w.bin'"), "%s", errbuf);
	cr_assert(strncmp(errbuf, "line 4: ", 8) == 0, "%s", errbuf);
	free(b);
}

/* every prefix and many random mutations of a good program: never crash */
Test(mil, truncations_and_mutations)
{
	size_t blen;
	uint8_t *blob = make_blob(64 * 64, &blen);
	anes_weight w = {"@model_path/weights/w.bin", blob, blen, false, false, -1};
	size_t n = strlen(good);
	char *buf = malloc(n + 1);
	anes_mil_program *p;

	for (size_t i = 0; i < n; i++) {
		memcpy(buf, good, i);
		p = NULL;
		int rc = anes_mil_parse(buf, i, &w, 1, &p, errbuf, sizeof errbuf);
		/* a prefix can only be valid if it is the full program minus trailing space */
		if (rc == 0) {
			anes_mil_program_free(p);
			cr_assert(i >= n - 2, "prefix %zu parsed", i);
		} else {
			cr_assert(rc == -EINVAL || rc == -ENOTSUP, "rc %d", rc);
			cr_assert(strncmp(errbuf, "line ", 5) == 0, "%s", errbuf);
		}
	}
	uint64_t s = 12345;
	static const char junk[] = "()[]{}<>,=;-\"0123456789e.x_abz \n/";
	for (int it = 0; it < 3000; it++) {
		memcpy(buf, good, n);
		int nm = 1 + (int)(it % 4);
		for (int k = 0; k < nm; k++) {
			s ^= s << 13; s ^= s >> 7; s ^= s << 17;
			size_t pos = (size_t)(s % n);
			buf[pos] = junk[(s >> 32) % (sizeof junk - 1)];
		}
		p = NULL;
		int rc = anes_mil_parse(buf, n, &w, 1, &p, errbuf, sizeof errbuf);
		if (rc == 0)
			anes_mil_program_free(p);
		else
			cr_assert(rc == -EINVAL || rc == -ENOTSUP, "rc %d: %s", rc, errbuf);
	}
	free(buf);
	free(blob);
}

Test(mil, deep_nesting_and_garbage)
{
	anes_mil_program *p = NULL;
	char body[256];
	memset(body, 0, sizeof body);
	strcpy(body, "    tensor<fp16, [1]> c = const()[val = tensor<fp16, [1]>(");
	for (int i = 0; i < 40; i++)
		strcat(body, "[");
	strcat(body, "1");
	expect_err(body, -EINVAL, 4, NULL);
	cr_assert_eq(anes_mil_parse("\0\0\0", 3, NULL, 0, &p, errbuf, sizeof errbuf), -EINVAL);
	cr_assert_eq(anes_mil_parse("", 0, NULL, 0, &p, errbuf, sizeof errbuf), -EINVAL);
	cr_assert_eq(anes_mil_parse(NULL, 0, NULL, 0, &p, NULL, 0), -EINVAL);
	/* errbuf of size 1 */
	char tiny[1];
	cr_assert_eq(anes_mil_parse("program", 7, NULL, 0, &p, tiny, 1), -EINVAL);
	cr_assert_eq(tiny[0], 0);
}

/* ---- several outputs, new ops' shape inference ---- */

Test(mil, multiple_outputs_both_syntaxes)
{
	const char *text =
		"program(1.3)\n{\n  func main<ios18>(tensor<fp16, [2, 6]> x) {\n"
		"    tensor<fp16, [2, 2]> a, tensor<fp16, [2, 4]> b = split(x = x, split_sizes = tensor<int32, [2]>([2, 4]), axis = int32(1));\n"
		"    (tensor<fp16, [1, 6]> c, tensor<fp16, [1, 6]> d) = split(x = x, num_splits = int32(2), axis = int32(0));\n"
		"  } -> (a, b, c, d);\n}\n";
	anes_mil_program *p = NULL;
	cr_assert_eq(parse(text, NULL, 0, &p), 0, "%s", errbuf);
	const anes_mil_function *f = &p->functions[0];
	cr_assert_eq(f->n_ops, 2);
	cr_assert_eq(f->ops[0].n_outputs, 2);
	cr_assert_eq(f->ops[1].n_outputs, 2);
	cr_assert_eq(p->info[0].n_outputs, 4);
	cr_assert_eq(p->info[0].outputs[1].shape[1], 4);
	cr_assert_str_eq(p->info[0].outputs[3].name, "d");
	anes_mil_program_free(p);
	/* a declared shape that does not match the split */
	expect_err("    tensor<fp16, [3, 1]> a, tensor<fp16, [3, 3]> b = split(x = m, num_splits = int32(2), axis = int32(1));",
	           -EINVAL, 4, "declared type");
	expect_err("    tensor<fp16, [3, 2]> a, tensor<fp16, [3, 2]> a = split(x = m, num_splits = int32(2), axis = int32(1));",
	           -EINVAL, 4, "redefinition");
}

Test(mil, new_op_inference)
{
	/* conv output shapes, slice_by_index, gather, pad, attention */
	cr_assert_eq(parse_body("    tensor<fp16, [1, 3, 5, 5]> i = const()[name = string(\"i\"), val = tensor<fp16, [1, 3, 5, 5]>(BLOBFILE(path = string(\"nope\"), offset = uint64(0)))];", NULL, 0), -EINVAL);
	expect_err("    tensor<fp16, [2, 3]> y = conv(x = x, weight = x);", -EINVAL, 4, "x must be [N, C, W]");
	expect_err("    tensor<fp16, [1, 3]> y = slice_by_index(x = x, begin = tensor<int32, [2]>([0, 0]), end = tensor<int32, [2]>([1, 3]), stride = tensor<int32, [2]>([0, 1]));",
	           -EINVAL, 4, "stride on axis 0 must be non-zero");
	cr_assert_eq(parse_body("    tensor<fp16, [3]> y = slice_by_index(x = x, begin = tensor<int32, [2]>([-1, 0]), end = tensor<int32, [2]>([0, 3]), "
	                        "squeeze_mask = tensor<bool, [2]>([true, false]));\n", NULL, 0), 0, "%s", errbuf);
	cr_assert_eq(parse_body("    tensor<fp16, [2, 2, 2, 3]> y = gather(x = m, indices = tensor<int32, [2, 2]>([0, 1, 2, -3]), axis = int32(1));", NULL, 0), -EINVAL);
	cr_assert_eq(parse_body("    tensor<fp16, [3, 2, 2]> y = gather(x = m, indices = tensor<int32, [2, 2]>([0, 1, 2, -3]), axis = int32(1));", NULL, 0), 0, "%s", errbuf);
	cr_assert_eq(parse_body("    tensor<fp16, [4, 7]> y = pad(x = x, pad = tensor<int32, [4]>([1, 1, 2, 2]), mode = string(\"replicate\"));", NULL, 0), 0, "%s", errbuf);
	cr_assert_eq(parse_body("    tensor<fp16, [1, 3, 4]> q = expand_dims(x = m, axes = tensor<int32, [1]>([0]));\n"
	                        "    tensor<fp16, [1, 2, 3]> k = expand_dims(x = x, axes = tensor<int32, [1]>([0]));\n"
	                        "    tensor<fp16, [1, 2, 3]> y = scaled_dot_product_attention(query = k, key = k, value = k);", NULL, 0), 0, "%s", errbuf);
}

/* ---- older text forms (issue 17 item 1) ---- */

static const anes_mil_op *find_op(const anes_mil_function *f, const char *name)
{
	for (uint32_t i = 0; i < f->n_ops; i++)
		if (strcmp(f->ops[i].name, name) == 0)
			return &f->ops[i];
	return NULL;
}

static const anes_mil_value *find_value(const anes_mil_function *f, const char *name)
{
	for (uint32_t i = 0; i < f->n_values; i++)
		if (strcmp(f->values[i].name, name) == 0)
			return &f->values[i];
	return NULL;
}

Test(mil, program_1_and_every_opset_name)
{
	static const char *const opsets[] = {"CoreML5", "CoreML6", "CoreML7", "CoreML8", "CoreML9",
	                                     "ios15", "ios16", "ios17", "ios18"};
	for (size_t i = 0; i < sizeof opsets / sizeof opsets[0]; i++) {
		for (int v = 0; v < 3; v++) {
			char text[256];
			anes_mil_program *p = NULL;
			snprintf(text, sizeof text,
			         "program(%s)\n{\n    func main<%s>(tensor<fp16, [2]> x) {\n"
			         "            tensor<fp16, [2]> y = relu(x = x)[name = tensor<string, []>(\"y\")];\n"
			         "        } -> (y);\n}\n",
			         v == 0 ? "1" : v == 1 ? "1.0" : "1.3", opsets[i]);
			cr_assert_eq(parse(text, NULL, 0, &p), 0, "%s: %s", text, errbuf);
			cr_assert_str_eq(p->functions[0].opset, opsets[i]);
			cr_assert_str_eq(p->version, v == 0 ? "1" : v == 1 ? "1.0" : "1.3");
			anes_mil_program_free(p);
		}
	}
	anes_mil_program *p = NULL;
	const char *bad[][2] = {
		{"program(2)\n{ func main<ios18>(tensor<fp16, [2]> x) { } -> (x); }", "unsupported program version 2"},
		{"program(1.)\n{ func main<ios18>(tensor<fp16, [2]> x) { } -> (x); }", "unsupported program version"},
		{"program(1)\n{ func main<ios99>(tensor<fp16, [2]> x) { } -> (x); }", "unsupported opset 'ios99'"},
	};
	for (size_t i = 0; i < 3; i++) {
		cr_assert_neq(parse(bad[i][0], NULL, 0, &p), 0, "%s", bad[i][0]);
		cr_assert(strstr(errbuf, bad[i][1]), "%s: got '%s'", bad[i][0], errbuf);
	}
}

/* The exact snippet of each form, one program (tests/test_cpu.c runs it) */
Test(mil, older_text_forms)
{
	const char *text =
		"program(1)\n"
		"[buildInfo = dict<tensor<string, []>, tensor<string, []>>({{\"coremlc-component-MIL\", \"3304.5.2\"}, "
		"{\"coremlc-version\", \"3304.6.2\"}, {\"coremltools-version\", \"7.2\"}})]\n"
		"{\n"
		"    func main<CoreML8>(tensor<fp16, [1, 4]> x) [FlexibleShapeInformation = tuple<tuple<tensor<string, []>, "
		"dict<tensor<string, []>, tensor<int32, [?]>>>>((\"DefaultShapes\", {{\"x\", [1, 4]}}))] {\n"
		"            tensor<int32, [1]> ax = const()[name = tensor<string, []>(\"ax\"), val = tensor<int32, [1]>(-1)];\n"
		"            tensor<fp16, [16]> w = const()[name = tensor<string, []>(\"w\"), val = tensor<fp16, [16]>(BLOBFILE("
		"path = tensor<string, []>(\"@model_path/weights/weight.bin\"), offset = tensor<uint64, []>(64)))];\n"
		"            tensor<fp16, [4, 4]> q = constexpr_affine_dequantize()[axis = tensor<int32, []>(0), "
		"name = tensor<string, []>(\"q\"), quantized_data = tensor<int8, [4, 4]>([[1, 2, 3, 4], [-1, -2, -3, -4], "
		"[0, 1, 0, 1], [8, 0, -8, 0]]), scale = tensor<fp16, []>(0x1p-1), zero_point = tensor<int8, []>(0)];\n"
		"            tensor<string, []> s = const()[name = tensor<string, []>(\"s\"), val = tensor<string, []>(\"a\\\"b\\\\c\\x41\\n\")];\n"
		"            tensor<fp16, [1]> one = const()[name = string(\"one\"), val = tensor<fp16, [1]>(0x1.8p+1)];\n"
		"            tensor<fp16, [1, 4]> y = linear(weight = q, x = x)[name = string(\"y\")];\n"
		"        } -> (y);\n"
		"}\n";
	size_t blen;
	uint8_t *blob = make_blob(16, &blen);
	anes_weight wt = {"@model_path/weights/weight.bin", blob, blen, false, false, -1};
	anes_mil_program *p = NULL;
	cr_assert_eq(parse(text, &wt, 1, &p), 0, "%s", errbuf);
	const anes_mil_function *f = &p->functions[0];
	cr_assert_str_eq(p->version, "1");
	cr_assert_str_eq(f->opset, "CoreML8");
	const anes_mil_value *ax = find_value(f, "ax");
	cr_assert_eq(ax->type.rank, 1);
	cr_assert_eq(*(const int32_t *)ax->data, -1);
	const anes_mil_value *w = find_value(f, "w");
	cr_assert_eq(memcmp(w->data, blob + 128, 32), 0);
	cr_assert_str_eq(anes_mil_const_string(find_value(f, "s")), "a\"b\\cA\n");
	uint16_t h;
	memcpy(&h, find_value(f, "one")->data, 2);
	cr_assert_eq(anes_f16_to_f32_soft(h), 3.0f);
	/* the bracket's inputs became the constexpr op's arguments */
	const anes_mil_op *q = find_op(f, "q");
	cr_assert_not_null(q);
	cr_assert_str_eq(q->def->name, "constexpr_affine_dequantize");
	cr_assert_eq(q->n_args, 4);
	cr_assert_not_null(anes_mil_op_arg(q, "quantized_data"));
	cr_assert_not_null(anes_mil_op_arg(q, "scale"));
	cr_assert_not_null(anes_mil_op_arg(q, "zero_point"));
	cr_assert_not_null(anes_mil_op_arg(q, "axis"));
	anes_mil_program_free(p);
	free(blob);
}

Test(mil, older_text_form_errors)
{
	/* an input given in the parentheses and the bracket */
	expect_err("tensor<fp16, [2]> y = relu(x = x)[name = string(\"y\"), x = x];", -EINVAL, 4, "given twice");
	expect_err("tensor<string, [2]> s = const()[name = string(\"s\"), val = tensor<string, [2]>(\"a\")];",
	           -ENOTSUP, 4, "string tensors of rank 1");
	expect_err("string s = const()[name = string(\"s\"), val = string(\"a\\x00b\")];", -EINVAL, 4, "NUL");
	expect_err("tensor<int32, [2]> a = const()[name = string(\"a\"), val = tensor<int32, [2]>(-1)];", -EINVAL, 4,
	           "expected ','");
}

/* ---- structural limits (docs/mil.md, Limits) ---- */

/* a chain of n relus after one input: n + 1 statements */
static char *relu_chain(uint32_t n)
{
	size_t cap = 128 + (size_t)n * 64;
	char *t = malloc(cap);
	size_t o = (size_t)snprintf(t, cap, "program(1.3)\n{\n func main<ios18>(tensor<fp16, [4]> v0) {\n");
	for (uint32_t i = 1; i <= n; i++)
		o += (size_t)snprintf(t + o, cap - o, "  tensor<fp16, [4]> v%u = relu(x = v%u);\n", i, i - 1);
	snprintf(t + o, cap - o, " } -> (v%u);\n}\n", n);
	return t;
}

Test(mil, default_limits_take_a_long_chain)
{
	/* 65,536 statements used to be the limit: a chain of 32,768 ops was refused */
	char *t = relu_chain(200000);
	anes_mil_program *p = NULL;
	cr_assert_eq(parse(t, NULL, 0, &p), 0, "%s", errbuf);
	cr_assert_eq(p->functions[0].n_ops, 200000);
	anes_mil_program_free(p);
	free(t);
	const anes_mil_limits *l = anes_mil_get_limits();
	cr_assert_eq(l->max_stmts, 1u << 20);
	cr_assert_eq(l->max_text, 64u << 20);
	cr_assert_eq(l->max_tensor_bytes, (uint64_t)2 << 30);
	cr_assert_eq(l->max_value_bytes, (uint64_t)32 << 30);
	/* one 128k x 4096 fp16 embedding (1 GiB) fits */
	cr_assert_eq(parse_body("tensor<fp16, [131072, 4096]> e = const()[val = fp16(0)];", NULL, 0), -EINVAL);
	cr_assert(strstr(errbuf, "val must be") || strstr(errbuf, "does not match"), "%s", errbuf);
}

Test(mil, each_limit_is_settable_and_enforced)
{
	anes_mil_limits l;
	anes_mil_limits_default(&l);
	l.max_text = 1 << 20;
	l.max_stmts = 1000;
	l.max_tensor_bytes = 1 << 20;
	l.max_value_bytes = 3 << 20;
	l.max_functions = 2;
	l.max_io = 3;
	cr_assert_eq(anes_mil_set_limits(&l), 0);
	char buf[ANES_MIL_LIMITS_STR];
	anes_mil_limits_format(&l, buf, sizeof buf);
	cr_assert_str_eq(buf, "1048576,1000,1048576,3145728,2,3");
	anes_mil_limits back;
	cr_assert_eq(anes_mil_limits_scan(buf, &back), 0);
	cr_assert_eq(memcmp(&back, &l, sizeof l), 0);
	cr_assert_eq(anes_mil_limits_scan("1,2,3,4,5", &back), -EINVAL);
	cr_assert_eq(anes_mil_limits_scan("1,2,3,4,5,6,", &back), -EINVAL);
	cr_assert_eq(anes_mil_limits_scan("1,2,-3,4,5,6", &back), -EINVAL);

	anes_mil_program *p = NULL;
	char *t = relu_chain(998);   /* 999 statements */
	cr_assert_eq(parse(t, NULL, 0, &p), 0, "%s", errbuf);
	anes_mil_program_free(p);
	free(t);
	t = relu_chain(1000);
	cr_assert_eq(parse(t, NULL, 0, &p), -EINVAL);
	cr_assert(strstr(errbuf, "more than 1000 statements"), "%s", errbuf);
	free(t);
	t = relu_chain(30000);      /* > 1 MiB of text */
	cr_assert_eq(parse(t, NULL, 0, &p), -EINVAL);
	cr_assert(strstr(errbuf, "longer than 1048576 bytes"), "%s", errbuf);
	free(t);
	cr_assert_eq(parse("program(1.3)\n{ func main(tensor<fp16, [524289]> a) { } -> (a); }", NULL, 0, &p), -EINVAL);
	cr_assert(strstr(errbuf, "larger than 1048576 bytes"), "%s", errbuf);
	cr_assert_eq(parse("program(1.3)\n{ func main(tensor<fp16, [524288]> a, tensor<fp16, [524288]> b,\n"
	                   " tensor<fp16, [524288]> c) { tensor<fp16, [524288]> d = relu(x = a); } -> (d); }",
	                   NULL, 0, &p), -EINVAL);
	cr_assert(strncmp(errbuf, "line 3: ", 8) == 0 && strstr(errbuf, "more than 3145728 bytes of values"), "%s",
	          errbuf);
	cr_assert_eq(parse("program(1.3)\n{ func main(tensor<fp16, [1]> a, tensor<fp16, [1]> b, tensor<fp16, [1]> c,"
	                   " tensor<fp16, [1]> d) { } -> (a); }", NULL, 0, &p), -EINVAL);
	cr_assert(strstr(errbuf, "more than 3 inputs"), "%s", errbuf);
	cr_assert_eq(parse("program(1.3)\n{ func a(tensor<fp16, [1]> x) { } -> (x);\n func b(tensor<fp16, [1]> x) { } -> (x);\n"
	                   " func c(tensor<fp16, [1]> x) { } -> (x); }", NULL, 0, &p), -EINVAL);
	cr_assert(strstr(errbuf, "line 4: more than 2 functions"), "%s", errbuf);

	/* out of range: refused, nothing changed */
	anes_mil_limits bad = l;
	bad.max_io = ANES_MAX_IO + 1;
	cr_assert_eq(anes_mil_set_limits(&bad), -EINVAL);
	bad = l;
	bad.max_stmts = 0;
	cr_assert_eq(anes_mil_set_limits(&bad), -EINVAL);
	cr_assert_eq(anes_mil_get_limits()->max_io, 3);
}

Test(mil, flexible_shape_errors)
{
	anes_mil_program *p = NULL;
	/* '?' without FlexibleShapeInformation */
	cr_assert_eq(parse("program(1.0)\n{\n func main<ios17>(tensor<fp16, [1, ?]> x) {\n } -> (x);\n}\n", NULL, 0, &p),
	             -ENOTSUP);
	cr_assert(strstr(errbuf, "line 3: function 'main' has inputs with '?' dimensions"), "%s", errbuf);
	/* the defaults name another input, or give another rank or a conflicting dimension */
	static const char *const bad[][2] = {
		{"{{\"y\", [1, 4]}}", "gives it no shape"},
		{"{{\"x\", [1, 4, 1]}}", "3 dimensions, it has 2"},
		{"{{\"x\", [2, 4]}}", "dimension 0 = 2, it is 1"},
		{"{{\"x\", [1, 0]}}", "bad dimension '0'"},
	};
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		char t[512];
		snprintf(t, sizeof t,
		         "program(1.0)\n{\n func main<ios17>(tensor<fp16, [1, ?]> x) [FlexibleShapeInformation = "
		         "tuple<tuple<tensor<string, []>, dict<tensor<string, []>, tensor<int32, [?]>>>>("
		         "(\"DefaultShapes\", %s))] {\n } -> (x);\n}\n", bad[i][0]);
		cr_assert_neq(parse(t, NULL, 0, &p), 0, "%s", t);
		cr_assert(strstr(errbuf, bad[i][1]), "%s: %s", bad[i][0], errbuf);
	}
	/* '?' is not a dimension of a constant, nor of a literal */
	expect_err("tensor<fp16, [?]> c = const()[val = tensor<fp16, [1]>([1])];", -EINVAL, 4, "'?' dimension");
	expect_err("tensor<fp16, [2]> c = const()[val = tensor<fp16, [?]>([1])];", -EINVAL, 4, "only in function inputs");
	/* a declared '?' output dimension takes the inferred one; a known one must agree */
	expect_err("tensor<fp16, [3, ?]> y = relu(x = x);", -EINVAL, 4, "does not match");
	cr_assert_eq(parse_body("tensor<fp16, [2, ?]> y = relu(x = x);", NULL, 0), 0, "%s", errbuf);
}

Test(mil, state_inputs_and_ops)
{
	const char *ok =
		"program(1.3)\n{\n func main<ios18>(tensor<fp16, [2]> x, state<tensor<fp16, [2]>> s) {\n"
		"  tensor<fp16, [2]> a = read_state(input = s);\n"
		"  write_state(data = x, input = s)[name = string(\"w\")];\n"
		"  tensor<fp16, [2]> b = coreml_update_state(state = s, value = a);\n"
		" } -> (b);\n}\n";
	anes_mil_program *p = NULL;
	cr_assert_eq(parse(ok, NULL, 0, &p), 0, "%s", errbuf);
	const anes_mil_function *f = &p->functions[0];
	cr_assert_eq(f->n_inputs, 1);
	cr_assert_eq(f->n_states, 1);
	cr_assert(f->values[f->states[0]].is_state);
	cr_assert_str_eq(p->info[0].states[0].name, "s");
	cr_assert_eq(f->n_ops, 3);
	cr_assert_eq(f->ops[1].n_outputs, 0);
	cr_assert_str_eq(f->ops[1].name, "w");
	anes_mil_program_free(p);

	static const char *const bad[][2] = {
		{"tensor<fp16, [2]> a = relu(x = s);", "only read_state, write_state and coreml_update_state"},
		{"tensor<fp16, [2]> a = read_state(input = x);", "must be a state input"},
		{"write_state(data = tensor<fp16, [3]>([1, 2, 3]), input = s);", "the state 's' holds"},
		{"tensor<fp16, [2]> a = write_state(data = x, input = s);", "write_state has no outputs"},
		{"relu(x = x);", "has 1 outputs, 0 declared"},
	};
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		char t[512];
		snprintf(t, sizeof t,
		         "program(1.3)\n{\n func main<ios18>(tensor<fp16, [2]> x, state<tensor<fp16, [2]>> s) {\n %s\n"
		         " } -> (x);\n}\n", bad[i][0]);
		cr_assert_eq(parse(t, NULL, 0, &p), -EINVAL, "%s: %s", bad[i][0], errbuf);
		cr_assert(strstr(errbuf, "line 4: ") && strstr(errbuf, bad[i][1]), "%s: %s", bad[i][0], errbuf);
	}
	cr_assert_eq(parse("program(1.3)\n{\n func main<ios18>(state<tensor<fp16, [2]>> s) {\n } -> (s);\n}\n", NULL,
	                   0, &p), -EINVAL);
	cr_assert(strstr(errbuf, "is a state"), "%s", errbuf);
}
