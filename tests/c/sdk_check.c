/* Checks of dativo_sdk.h (the C plugin helpers) on their own, built with AddressSanitizer and
 * UndefinedBehaviorSanitizer by tests/e2e/test_everyday.py: JSON edge cases, config messages,
 * decimal parsing at the boundaries, and every export released without a leak. What the
 * columns hold is checked separately, by pyarrow reading a job's output. */
#include <assert.h>
#include <stdio.h>

#include "dativo_sdk.h"

static int failures = 0;
#define CHECK(cond)                                                   \
  do {                                                                \
    if (!(cond)) {                                                    \
      fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
      failures++;                                                     \
    }                                                                 \
  } while (0)

static void json_ok(void) {
  char err[200];
  DvJson v;
  const char *text = "{\"a\": \"x\\u00e9\\ud83d\\ude00\\n\\\"\", \"b\": [1, 2.5, -3e2, true, false, null, -9223372036854775808],"
                     " \"c\": {\"d\": {}, \"e\": []}, \"big\": 18446744073709551616}";
  CHECK(dv_json_parse(text, &v, err, sizeof err));
  const DvJson *a = dv_json_get(&v, "a");
  CHECK(a && a->type == DV_STRING && strcmp(a->string, "x\xc3\xa9\xf0\x9f\x98\x80\n\"") == 0);
  const DvJson *b = dv_json_get(&v, "b");
  CHECK(b && b->type == DV_ARRAY && b->length == 7);
  CHECK(b->items[0].is_int && b->items[0].integer == 1);
  CHECK(!b->items[1].is_int && b->items[1].number == 2.5);
  CHECK(!b->items[2].is_int && b->items[2].number == -300);
  CHECK(b->items[3].type == DV_BOOL && b->items[3].boolean && b->items[4].type == DV_BOOL && !b->items[4].boolean);
  CHECK(b->items[5].type == DV_NULL);
  CHECK(b->items[6].is_int && b->items[6].integer == INT64_MIN);
  const DvJson *big = dv_json_get(&v, "big");
  CHECK(big && big->type == DV_NUMBER && !big->is_int); /* beyond int64: a number, not an integer */
  CHECK(dv_json_get(dv_json_get(&v, "c"), "d")->type == DV_OBJECT);
  CHECK(dv_json_get(&v, "missing") == NULL && dv_json_get(a, "x") == NULL);
  dv_json_clear(&v);
  /* Many members: the arrays grow. */
  char many[20000] = "[";
  for (int i = 0; i < 2000; i++) snprintf(many + strlen(many), sizeof many - strlen(many), "%s%d", i ? "," : "", i);
  strcat(many, "]");
  CHECK(dv_json_parse(many, &v, err, sizeof err) && v.length == 2000 && v.items[1999].integer == 1999);
  dv_json_clear(&v);
  CHECK(dv_json_parse(NULL, &v, err, sizeof err) && v.type == DV_NULL);
  dv_json_clear(&v);
}

static void json_bad(void) {
  const char *bad[] = {"{\"a\":}", "[1,]", "\"\\ud800\"", "01", "{\"a\":1} x", "{\"a\" 1}", "\"abc", "tru",
                       "[1 2]", "{1: 2}", "\"\\x\"", "-", "1.", "1e", "\"a\nb\"", ""};
  char err[200];
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    DvJson v;
    err[0] = 0;
    int ok = dv_json_parse(bad[i], &v, err, sizeof err);
    if (ok) fprintf(stderr, "accepted invalid JSON: %s\n", bad[i]);
    CHECK(!ok && strstr(err, "invalid JSON at byte") != NULL);
    dv_json_clear(&v);
  }
  char deep[400] = "";
  for (int i = 0; i < 100; i++) strcat(deep, "[");
  DvJson v;
  CHECK(!dv_json_parse(deep, &v, err, sizeof err) && strstr(err, "deeper than 64") != NULL);
  dv_json_clear(&v);
}

static void config(void) {
  char err[300];
  DvJson cfg;
  CHECK(dv_json_parse("{\"rows\": 5, \"name\": \"x\", \"ratio\": 0.5, \"on\": true, \"none\": null}", &cfg, err, sizeof err));
  static const char *const keys[] = {"rows", "name", "ratio", "on", "none", NULL};
  static const char *const fewer[] = {"rows", "name", NULL};
  CHECK(dv_cfg_check_keys(&cfg, keys, err, sizeof err));
  CHECK(!dv_cfg_check_keys(&cfg, fewer, err, sizeof err) &&
        strcmp(err, "unknown config key `ratio` (expected one of: rows, name)") == 0);
  int64_t n;
  const char *s;
  double d;
  int b;
  CHECK(dv_cfg_int(&cfg, "rows", 1, 0, 10, &n, err, sizeof err) && n == 5);
  CHECK(!dv_cfg_int(&cfg, "rows", 1, 6, 10, &n, err, sizeof err) && strstr(err, "`rows` must be an integer from 6 to 10"));
  CHECK(dv_cfg_int(&cfg, "none", 7, 0, 10, &n, err, sizeof err) && n == 7);
  CHECK(dv_cfg_int(&cfg, "absent", 8, 0, 10, &n, err, sizeof err) && n == 8);
  CHECK(!dv_cfg_int(&cfg, "ratio", 1, 0, 10, &n, err, sizeof err));
  CHECK(dv_cfg_string(&cfg, "name", "d", &s, err, sizeof err) && strcmp(s, "x") == 0);
  CHECK(!dv_cfg_string(&cfg, "rows", "d", &s, err, sizeof err) && strstr(err, "`rows` must be a string"));
  CHECK(dv_cfg_double(&cfg, "ratio", 0, &d, err, sizeof err) && d == 0.5);
  CHECK(dv_cfg_bool(&cfg, "on", 0, &b, err, sizeof err) && b == 1);
  CHECK(!dv_cfg_bool(&cfg, "name", 0, &b, err, sizeof err));
  dv_json_clear(&cfg);
  CHECK(dv_json_parse("[1]", &cfg, err, sizeof err));
  CHECK(!dv_cfg_check_keys(&cfg, keys, err, sizeof err) && strstr(err, "must be a JSON object"));
  dv_json_clear(&cfg);
}

static __int128 decimal_at(DvColumn *c, int64_t row) {
  __int128 v;
  memcpy(&v, c->values.p + row * 16, 16);
  return v;
}

static void decimals(void) {
  DvColumn c;
  CHECK(dv_column_init(&c, "d", "d:12,2", 1));
  CHECK(dv_append_decimal(&c, "0") && decimal_at(&c, 0) == 0);
  CHECK(dv_append_decimal(&c, "-0.01") && decimal_at(&c, 1) == -1);
  CHECK(dv_append_decimal(&c, "12.3") && decimal_at(&c, 2) == 1230);
  CHECK(dv_append_decimal(&c, "+9999999999.99") && decimal_at(&c, 3) == (__int128)999999999999);
  CHECK(dv_append_decimal(&c, "0000000000000012.5") && decimal_at(&c, 4) == 1250); /* leading zeros are not digits */
  const char *bad[] = {"1.234", "", ".", "-", "1.2.3", "1e5", "99999999999.00", "abc", "1 "};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    if (dv_append_decimal(&c, bad[i])) fprintf(stderr, "accepted decimal %s\n", bad[i]);
    CHECK(c.rows == 5);
  }
  CHECK(!dv_append_int64(&c, 1) && !dv_append_string(&c, "x")); /* wrong type: refused */
  dv_column_free(&c);
  CHECK(dv_column_init(&c, "w", "d:38,0", 0));
  CHECK(dv_append_decimal(&c, "99999999999999999999999999999999999999"));
  CHECK(dv_append_decimal(&c, "-99999999999999999999999999999999999999"));
  CHECK(!dv_append_decimal(&c, "100000000000000000000000000000000000000"));
  __int128 max = 0;
  for (int i = 0; i < 38; i++) max = max * 10 + 9;
  CHECK(decimal_at(&c, 0) == max && decimal_at(&c, 1) == -max);
  dv_column_free(&c);
  CHECK(!dv_column_init(&c, "x", "d:39,0", 0) && !dv_column_init(&c, "x", "d:5,6", 0) && !dv_column_init(&c, "x", "w:1", 0));
  /* "d:12,2,256" would be a decimal256 (32-byte values): only the whole decimal128 format. */
  CHECK(!dv_column_init(&c, "x", "d:12,2,256", 0) && !dv_column_init(&c, "x", "d:12,2x", 0));
  CHECK(dv_column_init(&c, "u", "d:5,2", 0));
  CHECK(dv_append_decimal_unscaled(&c, 99999) && dv_append_decimal_unscaled(&c, -99999));
  CHECK(!dv_append_decimal_unscaled(&c, 100000) && !dv_append_decimal_unscaled(&c, -100000));
  CHECK(!dv_append_decimal_unscaled(&c, 5000000001) && c.rows == 2);
  dv_column_free(&c);
}

static void export_release(void) {
  DvColumn cols[3], *item = calloc(1, sizeof *item);
  CHECK(dv_column_init(&cols[0], "id", DV_INT64, 0) && dv_column_init(&cols[1], "flag", DV_BOOL_FMT, 1));
  CHECK(dv_column_init(item, "item", DV_UTF8, 1) && dv_list_init(&cols[2], "tags", 1, item));
  for (int batch = 0; batch < 3; batch++) {
    for (int i = 0; i < 1000; i++) {
      CHECK(dv_append_int64(&cols[0], i));
      CHECK(i % 3 ? dv_append_bool(&cols[1], i % 2) : dv_append_null(&cols[1]));
      for (int j = 0; j < i % 3; j++) CHECK(dv_append_string(cols[2].item, "tag"));
      CHECK(i % 5 ? dv_list_end(&cols[2]) : dv_append_null(&cols[2]));
    }
    struct ArrowSchema s;
    struct ArrowArray a;
    CHECK(dv_export_schema(cols, 3, &s) == DATIVO_OK && dv_export_batch(cols, 3, &a) == DATIVO_OK);
    CHECK(a.length == 1000 && a.children[1]->null_count == 334 && a.children[2]->null_count == 200);
    CHECK(strcmp(s.children[2]->format, "+l") == 0 && strcmp(s.children[2]->children[0]->name, "item") == 0);
    const int32_t *off = a.children[2]->buffers[1];
    CHECK(off[0] == 0 && off[1000] == (int32_t)cols[2].item->rows);
    s.release(&s);
    a.release(&a);
    for (int i = 0; i < 3; i++) dv_column_reset(&cols[i]);
  }
  CHECK(dv_append_int64(&cols[0], 1));
  struct ArrowArray a;
  CHECK(dv_export_batch(cols, 3, &a) == DATIVO_ERROR && a.release == NULL); /* ragged: refused */
  for (int i = 0; i < 3; i++) dv_column_free(&cols[i]);
  CHECK(dv_days_from_civil(1970, 1, 1) == 0 && dv_days_from_civil(2000, 3, 1) == 11017 &&
        dv_days_from_civil(1969, 12, 31) == -1);
}

int main(void) {
  json_ok();
  json_bad();
  config();
  decimals();
  export_release();
  if (failures) {
    fprintf(stderr, "%d checks failed\n", failures);
    return 1;
  }
  puts("all checks passed");
  return 0;
}
