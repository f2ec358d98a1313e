/*
 * sequence_reader.c — an example dativo reader plugin in plain C11.
 *
 * It uses nothing but dativo_plugin.h and libc: the Arrow arrays are built by hand through the
 * Arrow C Data Interface, and the JSON it receives is parsed by the small scanner below.
 *
 * Reader "sequence" produces the ids start .. start+rows-1 in batches of batch_size rows:
 *
 *   id      int64       "l"        non-nullable
 *   name    utf8        "u"        "name-<id>", null when id % 7 == 0
 *   amount  float64     "g"        id * 1.5
 *   flag    bool        "b"        id % 2 == 0
 *   day     date32      "tdD"      19000 + id % 365
 *   ts      timestamp   "tsu:UTC"  1700000000000000 + id * 1000000
 *
 * Its incremental state is {"next_id": N}: a run resumed from it continues at id N.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dativo_plugin.h"

#if defined(_WIN32)
#define DATIVO_EXPORT __declspec(dllexport)
#else
#define DATIVO_EXPORT __attribute__((visibility("default")))
#endif

/* ------------------------------------------------------------------------------------------ */
/* Errors: one message per thread, valid until the next call on that thread.                  */
/* ------------------------------------------------------------------------------------------ */

static _Thread_local char g_last_error[1024];

static int fail(int code, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(g_last_error, sizeof g_last_error, fmt, ap);
  va_end(ap);
  return code;
}

static const char *plugin_last_error(void) { return g_last_error; }

static void plugin_free_string(char *s) { free(s); }

/* ------------------------------------------------------------------------------------------ */
/* A tiny JSON scanner: enough to walk an object, skip any value and read an integer.          */
/* ------------------------------------------------------------------------------------------ */

typedef struct {
  const char *s; /* NUL-terminated input */
  size_t pos;
} Json;

static void json_ws(Json *j) {
  while (j->s[j->pos] == ' ' || j->s[j->pos] == '\t' || j->s[j->pos] == '\n' ||
         j->s[j->pos] == '\r')
    j->pos++;
}

/* Parses a string at j->pos (which must be at '"'); copies it, unescaped (\uXXXX outside ASCII
 * is kept as '?': only keys are read this way), into out[cap]. Returns false on a syntax error. */
static bool json_string(Json *j, char *out, size_t cap) {
  size_t n = 0;
  if (j->s[j->pos] != '"') return false;
  j->pos++;
  for (;;) {
    char c = j->s[j->pos];
    if (c == '\0') return false;
    if ((unsigned char)c < 0x20) return false;
    j->pos++;
    if (c == '"') break;
    if (c == '\\') {
      char e = j->s[j->pos];
      if (e == '\0') return false;
      j->pos++;
      switch (e) {
        case '"': c = '"'; break;
        case '\\': c = '\\'; break;
        case '/': c = '/'; break;
        case 'b': c = '\b'; break;
        case 'f': c = '\f'; break;
        case 'n': c = '\n'; break;
        case 'r': c = '\r'; break;
        case 't': c = '\t'; break;
        case 'u': {
          unsigned v = 0;
          for (int k = 0; k < 4; k++) {
            char h = j->s[j->pos];
            unsigned d;
            if (h >= '0' && h <= '9') d = (unsigned)(h - '0');
            else if (h >= 'a' && h <= 'f') d = (unsigned)(h - 'a' + 10);
            else if (h >= 'A' && h <= 'F') d = (unsigned)(h - 'A' + 10);
            else return false;
            v = v * 16 + d;
            j->pos++;
          }
          c = (v > 0 && v < 0x80) ? (char)v : '?';
          break;
        }
        default: return false;
      }
    }
    if (out && n + 1 < cap) out[n++] = c;
  }
  if (out && cap > 0) out[n] = '\0';
  return true;
}

static bool json_skip_value(Json *j, int depth);

static bool json_skip_literal(Json *j, const char *lit) {
  size_t n = strlen(lit);
  if (strncmp(j->s + j->pos, lit, n) != 0) return false;
  j->pos += n;
  return true;
}

static bool json_skip_number(Json *j) {
  size_t start = j->pos;
  if (j->s[j->pos] == '-') j->pos++;
  if (j->s[j->pos] < '0' || j->s[j->pos] > '9') return false;
  while (j->s[j->pos] >= '0' && j->s[j->pos] <= '9') j->pos++;
  if (j->s[j->pos] == '.') {
    j->pos++;
    if (j->s[j->pos] < '0' || j->s[j->pos] > '9') return false;
    while (j->s[j->pos] >= '0' && j->s[j->pos] <= '9') j->pos++;
  }
  if (j->s[j->pos] == 'e' || j->s[j->pos] == 'E') {
    j->pos++;
    if (j->s[j->pos] == '+' || j->s[j->pos] == '-') j->pos++;
    if (j->s[j->pos] < '0' || j->s[j->pos] > '9') return false;
    while (j->s[j->pos] >= '0' && j->s[j->pos] <= '9') j->pos++;
  }
  return j->pos > start;
}

/* Skips one value (any JSON type) and the whitespace before it. */
static bool json_skip_value(Json *j, int depth) {
  if (depth > 64) return false;
  json_ws(j);
  char c = j->s[j->pos];
  if (c == '"') return json_string(j, NULL, 0);
  if (c == '{' || c == '[') {
    char close = c == '{' ? '}' : ']';
    j->pos++;
    json_ws(j);
    if (j->s[j->pos] == close) {
      j->pos++;
      return true;
    }
    for (;;) {
      if (c == '{') {
        json_ws(j);
        if (!json_string(j, NULL, 0)) return false;
        json_ws(j);
        if (j->s[j->pos] != ':') return false;
        j->pos++;
      }
      if (!json_skip_value(j, depth + 1)) return false;
      json_ws(j);
      if (j->s[j->pos] == ',') {
        j->pos++;
        continue;
      }
      if (j->s[j->pos] == close) {
        j->pos++;
        return true;
      }
      return false;
    }
  }
  if (c == 't') return json_skip_literal(j, "true");
  if (c == 'f') return json_skip_literal(j, "false");
  if (c == 'n') return json_skip_literal(j, "null");
  return json_skip_number(j);
}

typedef enum { INT_OK, INT_NOT_INTEGER, INT_OUT_OF_RANGE } IntResult;

/* Reads an integer value (no fraction, no exponent) at j->pos. */
static IntResult json_int(Json *j, int64_t *out) {
  json_ws(j);
  size_t start = j->pos;
  if (!json_skip_number(j)) {
    j->pos = start; /* not a number (a string, null, an object...): the caller reports the key */
    return INT_NOT_INTEGER;
  }
  for (size_t k = start; k < j->pos; k++)
    if (j->s[k] == '.' || j->s[k] == 'e' || j->s[k] == 'E') return INT_NOT_INTEGER;
  char buf[32];
  size_t len = j->pos - start;
  if (len >= sizeof buf) return INT_OUT_OF_RANGE;
  memcpy(buf, j->s + start, len);
  buf[len] = '\0';
  errno = 0;
  long long v = strtoll(buf, NULL, 10);
  if (errno == ERANGE) return INT_OUT_OF_RANGE;
  *out = (int64_t)v;
  return INT_OK;
}

/* Iterates over a top-level object: call json_object_begin, then json_object_next until it
 * returns 0 (end) or -1 (syntax error); on 1 the key is in `key` and j->pos is at the value,
 * which the caller must consume (json_int / json_skip_value). */
static bool json_object_begin(Json *j) {
  json_ws(j);
  if (j->s[j->pos] != '{') return false;
  j->pos++;
  return true;
}

static int json_object_next(Json *j, bool *first, char *key, size_t cap) {
  json_ws(j);
  if (j->s[j->pos] == '}') {
    j->pos++;
    return 0;
  }
  if (!*first) {
    if (j->s[j->pos] != ',') return -1;
    j->pos++;
    json_ws(j);
  }
  *first = false;
  if (!json_string(j, key, cap)) return -1;
  json_ws(j);
  if (j->s[j->pos] != ':') return -1;
  j->pos++;
  json_ws(j);
  return 1;
}

static bool json_at_end(Json *j) {
  json_ws(j);
  return j->s[j->pos] == '\0';
}

/* ------------------------------------------------------------------------------------------ */
/* The reader.                                                                                 */
/* ------------------------------------------------------------------------------------------ */

#define NCOLS 6

/* "name-" + at most 20 characters for an int64: the most a row adds to the utf8 data */
#define MAX_NAME_LEN 25
/* the utf8 offsets are int32: a batch may hold at most this many rows */
#define MAX_BATCH_ROWS ((int64_t)(INT32_MAX / (MAX_NAME_LEN + 1)))

static const char *const COL_NAMES[NCOLS] = {"id", "name", "amount", "flag", "day", "ts"};
static const char *const COL_FORMATS[NCOLS] = {"l", "u", "g", "b", "tdD", "tsu:UTC"};
static const int64_t COL_FLAGS[NCOLS] = {0, ARROW_FLAG_NULLABLE, ARROW_FLAG_NULLABLE,
                                         ARROW_FLAG_NULLABLE, ARROW_FLAG_NULLABLE,
                                         ARROW_FLAG_NULLABLE};

struct DativoReader {
  bool initialized;
  int64_t next_id;     /* the next id to return */
  int64_t end_id;      /* one past the last id */
  int64_t batch_size;
  bool have_state;     /* a state was given in the context */
  bool returned_batch; /* at least one batch was returned */
};

static DativoReader *reader_new(const char *name) {
  if (name == NULL || strcmp(name, "sequence") != 0) {
    fail(DATIVO_ERROR, "c_sequence: unknown reader `%s` (this plugin has: sequence)",
         name ? name : "(null)");
    return NULL;
  }
  DativoReader *r = calloc(1, sizeof *r);
  if (r == NULL) fail(DATIVO_ERROR, "c_sequence: out of memory");
  return r;
}

static int parse_config(const char *config_json, int64_t *rows, int64_t *batch_size,
                        int64_t *start) {
  Json j = {config_json ? config_json : "null", 0};
  /* no config at all (NULL or `null`) means all defaults */
  json_ws(&j);
  if (json_skip_literal(&j, "null") && json_at_end(&j)) return DATIVO_OK;
  j.pos = 0;
  if (!json_object_begin(&j))
    return fail(DATIVO_ERROR_CONFIG, "c_sequence: the config must be a JSON object");
  bool first = true;
  char key[128];
  for (;;) {
    int k = json_object_next(&j, &first, key, sizeof key);
    if (k == 0) break;
    if (k < 0) return fail(DATIVO_ERROR_CONFIG, "c_sequence: the config is not valid JSON");
    int64_t *dst;
    if (strcmp(key, "rows") == 0) dst = rows;
    else if (strcmp(key, "batch_size") == 0) dst = batch_size;
    else if (strcmp(key, "start") == 0) dst = start;
    else
      return fail(DATIVO_ERROR_CONFIG,
                  "c_sequence: unknown config key `%s` (expected rows, batch_size, start)", key);
    int64_t v = 0;
    IntResult ir = json_int(&j, &v);
    if (ir == INT_NOT_INTEGER)
      return fail(DATIVO_ERROR_CONFIG, "c_sequence: config key `%s` must be an integer", key);
    if (ir == INT_OUT_OF_RANGE)
      return fail(DATIVO_ERROR_CONFIG, "c_sequence: config key `%s` is out of range", key);
    if (v < 0)
      return fail(DATIVO_ERROR_CONFIG,
                  "c_sequence: config key `%s` must not be negative (got %" PRId64 ")", key, v);
    if (dst == batch_size && v == 0)
      return fail(DATIVO_ERROR_CONFIG, "c_sequence: config key `batch_size` must be at least 1");
    if (dst == batch_size && v > MAX_BATCH_ROWS)
      return fail(DATIVO_ERROR_CONFIG,
                  "c_sequence: config key `batch_size` must be at most %" PRId64, MAX_BATCH_ROWS);
    *dst = v;
  }
  if (!json_at_end(&j))
    return fail(DATIVO_ERROR_CONFIG, "c_sequence: unexpected text after the config object");
  if (*start > INT64_MAX - *rows)
    return fail(DATIVO_ERROR_CONFIG, "c_sequence: config keys `start` + `rows` overflow int64");
  return DATIVO_OK;
}

/* Finds "state" in the context; if it is an object with an integer next_id, sets *next_id. */
static int parse_context(const char *context_json, bool *have_state, int64_t *next_id) {
  *have_state = false;
  if (context_json == NULL) return DATIVO_OK;
  Json j = {context_json, 0};
  if (!json_object_begin(&j)) return fail(DATIVO_ERROR, "c_sequence: the context must be a JSON object");
  bool first = true;
  char key[128];
  for (;;) {
    int k = json_object_next(&j, &first, key, sizeof key);
    if (k == 0) break;
    if (k < 0) return fail(DATIVO_ERROR, "c_sequence: the context is not valid JSON");
    if (strcmp(key, "state") != 0) {
      if (!json_skip_value(&j, 0)) return fail(DATIVO_ERROR, "c_sequence: the context is not valid JSON");
      continue;
    }
    if (json_skip_literal(&j, "null")) continue;
    if (j.s[j.pos] != '{')
      return fail(DATIVO_ERROR, "c_sequence: the state must be an object like {\"next_id\": 42}");
    Json s = j;
    if (!json_skip_value(&j, 0)) return fail(DATIVO_ERROR, "c_sequence: the context is not valid JSON");
    json_object_begin(&s);
    bool sfirst = true, found = false;
    for (;;) {
      int sk = json_object_next(&s, &sfirst, key, sizeof key);
      if (sk == 0) break;
      if (sk < 0) return fail(DATIVO_ERROR, "c_sequence: the state is not valid JSON");
      if (strcmp(key, "next_id") == 0) {
        if (json_int(&s, next_id) != INT_OK)
          return fail(DATIVO_ERROR, "c_sequence: state key `next_id` must be an integer");
        found = true;
      } else if (!json_skip_value(&s, 0)) {
        return fail(DATIVO_ERROR, "c_sequence: the state is not valid JSON");
      }
    }
    if (!found) return fail(DATIVO_ERROR, "c_sequence: the state has no `next_id`");
    *have_state = true;
  }
  if (!json_at_end(&j)) return fail(DATIVO_ERROR, "c_sequence: unexpected text after the context object");
  return DATIVO_OK;
}

static int reader_initialize(DativoReader *r, const char *config_json, const char *context_json) {
  if (r == NULL) return fail(DATIVO_ERROR, "c_sequence: null reader");
  int64_t rows = 1000, batch_size = 1024, start = 1;
  int rc = parse_config(config_json, &rows, &batch_size, &start);
  if (rc != DATIVO_OK) return rc;
  bool have_state = false;
  int64_t next_id = start;
  rc = parse_context(context_json, &have_state, &next_id);
  if (rc != DATIVO_OK) return rc;
  r->end_id = start + rows;
  r->next_id = next_id;
  r->batch_size = batch_size;
  r->have_state = have_state;
  r->returned_batch = false;
  r->initialized = true;
  return DATIVO_OK;
}

/* ---- schema ---- */

typedef struct {
  struct ArrowSchema children[NCOLS];
  struct ArrowSchema *child_ptrs[NCOLS];
} SchemaPrivate;

/* format/name strings are static (the library is never unloaded): nothing to free. */
static void release_child_schema(struct ArrowSchema *s) { s->release = NULL; }

static void release_schema(struct ArrowSchema *s) {
  if (s == NULL || s->release == NULL) return;
  SchemaPrivate *p = s->private_data;
  for (int i = 0; i < NCOLS; i++)
    if (p->children[i].release != NULL) p->children[i].release(&p->children[i]);
  free(p);
  s->release = NULL;
}

static int fill_schema(struct ArrowSchema *out) {
  SchemaPrivate *p = calloc(1, sizeof *p);
  if (p == NULL) return fail(DATIVO_ERROR, "c_sequence: out of memory");
  for (int i = 0; i < NCOLS; i++) {
    struct ArrowSchema *c = &p->children[i];
    c->format = COL_FORMATS[i];
    c->name = COL_NAMES[i];
    c->metadata = NULL;
    c->flags = COL_FLAGS[i];
    c->n_children = 0;
    c->children = NULL;
    c->dictionary = NULL;
    c->release = release_child_schema;
    c->private_data = NULL;
    p->child_ptrs[i] = c;
  }
  out->format = "+s";
  out->name = "";
  out->metadata = NULL;
  out->flags = 0;
  out->n_children = NCOLS;
  out->children = p->child_ptrs;
  out->dictionary = NULL;
  out->release = release_schema;
  out->private_data = p;
  return DATIVO_OK;
}

static int reader_get_schema(DativoReader *r, struct ArrowSchema *out) {
  if (r == NULL || out == NULL) return fail(DATIVO_ERROR, "c_sequence: null argument");
  if (!r->initialized) return fail(DATIVO_ERROR, "c_sequence: get_schema before initialize");
  return fill_schema(out);
}

/* ---- arrays ---- */

/* Each column owns its buffers (so a consumer may move a child out of the batch). */
typedef struct {
  const void *buffers[3];
  void *owned[3];
} ColumnPrivate;

typedef struct {
  struct ArrowArray children[NCOLS];
  struct ArrowArray *child_ptrs[NCOLS];
  const void *buffers[1];
} BatchPrivate;

static void release_column(struct ArrowArray *a) {
  if (a == NULL || a->release == NULL) return;
  ColumnPrivate *p = a->private_data;
  if (p != NULL) {
    for (int i = 0; i < 3; i++) free(p->owned[i]);
    free(p);
  }
  a->release = NULL;
}

static void release_batch(struct ArrowArray *a) {
  if (a == NULL || a->release == NULL) return;
  BatchPrivate *p = a->private_data;
  for (int i = 0; i < NCOLS; i++)
    if (p->children[i].release != NULL) p->children[i].release(&p->children[i]);
  free(p);
  a->release = NULL;
}

/* Sets up column i with n_buffers buffers, taking ownership of bufs[0..n_buffers). */
static void init_column(struct ArrowArray *c, ColumnPrivate *p, int64_t length,
                        int64_t null_count, int n_buffers) {
  c->length = length;
  c->null_count = null_count;
  c->offset = 0;
  c->n_buffers = n_buffers;
  c->n_children = 0;
  c->buffers = p->buffers;
  c->children = NULL;
  c->dictionary = NULL;
  c->release = release_column;
  c->private_data = p;
  for (int i = 0; i < n_buffers; i++) p->buffers[i] = p->owned[i];
}

static int build_batch(int64_t first_id, int64_t n, struct ArrowArray *out) {
  if (n > MAX_BATCH_ROWS)
    return fail(DATIVO_ERROR, "c_sequence: a batch of %" PRId64 " rows is too large (max %" PRId64
                ": the utf8 offsets are int32)", n, MAX_BATCH_ROWS);
  BatchPrivate *bp = calloc(1, sizeof *bp);
  ColumnPrivate *cp[NCOLS] = {0};
  if (bp == NULL) return fail(DATIVO_ERROR, "c_sequence: out of memory");
  for (int i = 0; i < NCOLS; i++) {
    cp[i] = calloc(1, sizeof *cp[i]);
    if (cp[i] == NULL) goto oom;
  }
  size_t un = (size_t)n;
  size_t bitmap_bytes = (un + 7) / 8;

  /* id: int64, no validity buffer */
  int64_t *ids = malloc(un * sizeof *ids);
  cp[0]->owned[1] = ids;
  /* name: validity + int32 offsets + data */
  uint8_t *name_valid = calloc(bitmap_bytes ? bitmap_bytes : 1, 1);
  int32_t *offsets = malloc((un + 1) * sizeof *offsets);
  size_t data_cap = un * MAX_NAME_LEN + 1;
  char *data = malloc(data_cap);
  cp[1]->owned[0] = name_valid;
  cp[1]->owned[1] = offsets;
  cp[1]->owned[2] = data;
  /* amount, flag, day, ts */
  double *amounts = malloc(un * sizeof *amounts);
  uint8_t *flags = calloc(bitmap_bytes ? bitmap_bytes : 1, 1);
  int32_t *days = malloc(un * sizeof *days);
  int64_t *tss = malloc(un * sizeof *tss);
  cp[2]->owned[1] = amounts;
  cp[3]->owned[1] = flags;
  cp[4]->owned[1] = days;
  cp[5]->owned[1] = tss;
  if (!ids || !name_valid || !offsets || !data || !amounts || !flags || !days || !tss) goto oom;

  int64_t name_nulls = 0;
  size_t pos = 0;
  offsets[0] = 0;
  for (int64_t k = 0; k < n; k++) {
    int64_t id = first_id + k;
    ids[k] = id;
    if (id % 7 == 0) {
      name_nulls++;
    } else {
      name_valid[k / 8] |= (uint8_t)(1u << (k % 8));
      int w = snprintf(data + pos, data_cap - pos, "name-%" PRId64, id);
      pos += (size_t)w;
    }
    offsets[k + 1] = (int32_t)pos;
    amounts[k] = (double)id * 1.5;
    if (id % 2 == 0) flags[k / 8] |= (uint8_t)(1u << (k % 8));
    days[k] = (int32_t)(19000 + id % 365);
    /* wrapping arithmetic: no undefined behaviour for absurdly large ids */
    tss[k] = (int64_t)(UINT64_C(1700000000000000) + (uint64_t)id * UINT64_C(1000000));
  }

  init_column(&bp->children[0], cp[0], n, 0, 2);
  cp[0]->buffers[0] = NULL;
  init_column(&bp->children[1], cp[1], n, name_nulls, 3);
  for (int i = 2; i < NCOLS; i++) {
    init_column(&bp->children[i], cp[i], n, 0, 2);
    cp[i]->buffers[0] = NULL;
  }
  for (int i = 0; i < NCOLS; i++) bp->child_ptrs[i] = &bp->children[i];
  bp->buffers[0] = NULL;

  out->length = n;
  out->null_count = 0;
  out->offset = 0;
  out->n_buffers = 1;
  out->n_children = NCOLS;
  out->buffers = bp->buffers;
  out->children = bp->child_ptrs;
  out->dictionary = NULL;
  out->release = release_batch;
  out->private_data = bp;
  return DATIVO_OK;

oom:
  for (int i = 0; i < NCOLS; i++) {
    if (cp[i] == NULL) continue;
    for (int k = 0; k < 3; k++) free(cp[i]->owned[k]);
    free(cp[i]);
  }
  free(bp);
  return fail(DATIVO_ERROR, "c_sequence: out of memory");
}

static int reader_read_batch(DativoReader *r, struct ArrowArray *out,
                             struct ArrowSchema *out_schema) {
  if (r == NULL || out == NULL) return fail(DATIVO_ERROR, "c_sequence: null argument");
  if (!r->initialized) return fail(DATIVO_ERROR, "c_sequence: read_batch before initialize");
  out->release = NULL;
  if (out_schema != NULL) out_schema->release = NULL;
  if (r->next_id >= r->end_id) return DATIVO_OK; /* end of stream */
  int64_t remaining = r->end_id - r->next_id;
  int64_t n = remaining < r->batch_size ? remaining : r->batch_size;
  int rc = build_batch(r->next_id, n, out);
  if (rc != DATIVO_OK) return rc;
  if (out_schema != NULL) {
    rc = fill_schema(out_schema);
    if (rc != DATIVO_OK) {
      out->release(out);
      return rc;
    }
  }
  r->next_id += n;
  r->returned_batch = true;
  return DATIVO_OK;
}

static int reader_get_incremental_state(DativoReader *r, char **out_json) {
  if (r == NULL || out_json == NULL) return fail(DATIVO_ERROR, "c_sequence: null argument");
  *out_json = NULL;
  if (!r->initialized) return fail(DATIVO_ERROR, "c_sequence: get_incremental_state before initialize");
  if (!r->returned_batch && !r->have_state) return DATIVO_OK; /* no state yet */
  char *s = malloc(48);
  if (s == NULL) return fail(DATIVO_ERROR, "c_sequence: out of memory");
  snprintf(s, 48, "{\"next_id\": %" PRId64 "}", r->next_id);
  *out_json = s;
  return DATIVO_OK;
}

static int reader_close(DativoReader *r) {
  (void)r; /* nothing to release: no connections, no files */
  return DATIVO_OK;
}

static void reader_free(DativoReader *r) { free(r); }

/* ------------------------------------------------------------------------------------------ */
/* The plugin table.                                                                           */
/* ------------------------------------------------------------------------------------------ */

static const char MANIFEST[] =
    "{\"name\": \"c_sequence\", \"version\": \"0.1.0\","
    " \"description\": \"Example C plugin: a synthetic sequence of rows\","
    " \"readers\": [{\"name\": \"sequence\", \"description\":"
    " \"ids start..start+rows-1 with name, amount, flag, day and ts columns\"}],"
    " \"writers\": []}";

DATIVO_EXPORT int dativo_plugin_init(uint32_t host_abi_version, DativoPlugin *out) {
  if (out == NULL) return fail(DATIVO_ERROR, "c_sequence: null plugin table");
  if (host_abi_version < 1)
    return fail(DATIVO_ERROR, "c_sequence: host ABI version %u is not supported", host_abi_version);
  memset(out, 0, sizeof *out);
  out->abi_version = DATIVO_PLUGIN_ABI_VERSION;
  out->struct_size = (uint32_t)sizeof *out;
  out->manifest_json = MANIFEST;
  out->last_error = plugin_last_error;
  out->free_string = plugin_free_string;
  out->reader_new = reader_new;
  out->reader_initialize = reader_initialize;
  out->reader_get_schema = reader_get_schema;
  out->reader_read_batch = reader_read_batch;
  out->reader_get_incremental_state = reader_get_incremental_state;
  out->reader_close = reader_close;
  out->reader_free = reader_free;
  /* no writers: the writer function pointers stay NULL */
  return DATIVO_OK;
}
