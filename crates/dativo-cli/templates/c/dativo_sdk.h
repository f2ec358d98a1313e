/*
 * dativo_sdk.h — helpers for dativo plugins in C (copied into projects by `dativo plugin new
 * --lang c`; header-only, C11, the C library only). Two parts:
 *
 *   JSON    dv_json_parse() reads a whole JSON text (the job's config, the context, a state)
 *           into a tree: objects, arrays, strings (escapes and \uXXXX decoded to UTF-8), numbers,
 *           booleans, null. dv_json_get(), dv_cfg_string(), dv_cfg_int(), dv_cfg_double(),
 *           dv_cfg_bool() and dv_cfg_check_keys() read a config with messages naming the key.
 *
 *   Arrow   DvColumn builds one column of a batch row by row — bool, int8/16/32/64,
 *           float32/64, utf8, binary, date32, timestamp[us] with or without a zone,
 *           decimal128(p, s) and lists of any of them — and dv_export_schema() /
 *           dv_export_batch() hand the columns to dativo through the Arrow C Data Interface
 *           (every struct and buffer malloc'ed, released by the callbacks below).
 *
 * Every function that can fail returns 0 (and, where it takes one, writes a message into
 * `err`) on failure, 1 on success. Nothing here is thread-safe across columns; one reader
 * instance is used by one thread at a time, which is what dativo guarantees.
 */
#ifndef DATIVO_SDK_H
#define DATIVO_SDK_H

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dativo_plugin.h"

/* Header-only: every function is static inline (unused ones cost nothing and do not warn). */
#define DV_API static inline

/* ================================================================ JSON */

typedef enum { DV_NULL, DV_BOOL, DV_NUMBER, DV_STRING, DV_ARRAY, DV_OBJECT } DvJsonType;

typedef struct DvJson {
  DvJsonType type;
  int boolean;        /* DV_BOOL */
  double number;      /* DV_NUMBER */
  int is_int;         /* DV_NUMBER: an integer that fits int64 (no fraction, no exponent) */
  int64_t integer;    /* DV_NUMBER with is_int */
  char *string;       /* DV_STRING: UTF-8, NUL-terminated (may contain \u0000 as "\0") */
  size_t length;      /* DV_STRING: bytes; DV_ARRAY/DV_OBJECT: members */
  char **keys;        /* DV_OBJECT: member names */
  struct DvJson *items; /* DV_ARRAY/DV_OBJECT: member values */
} DvJson;

typedef struct {
  const char *s, *p;
  char *err;
  size_t cap;
  int depth;
} DvParser;

DV_API int dv__perr(DvParser *ps, const char *what) {
  if (ps->err && ps->cap) snprintf(ps->err, ps->cap, "invalid JSON at byte %zu: %s", (size_t)(ps->p - ps->s), what);
  return 0;
}

DV_API void dv__ws(DvParser *ps) {
  while (*ps->p == ' ' || *ps->p == '\t' || *ps->p == '\n' || *ps->p == '\r') ps->p++;
}

DV_API void dv_json_clear(DvJson *v);

/* Appends the UTF-8 encoding of code point c to buf. */
DV_API size_t dv__utf8(char *buf, uint32_t c) {
  if (c < 0x80) return buf[0] = (char)c, 1;
  if (c < 0x800) return buf[0] = (char)(0xC0 | c >> 6), buf[1] = (char)(0x80 | (c & 0x3F)), 2;
  if (c < 0x10000)
    return buf[0] = (char)(0xE0 | c >> 12), buf[1] = (char)(0x80 | (c >> 6 & 0x3F)), buf[2] = (char)(0x80 | (c & 0x3F)), 3;
  buf[0] = (char)(0xF0 | c >> 18), buf[1] = (char)(0x80 | (c >> 12 & 0x3F));
  buf[2] = (char)(0x80 | (c >> 6 & 0x3F)), buf[3] = (char)(0x80 | (c & 0x3F));
  return 4;
}

DV_API int dv__hex4(DvParser *ps, uint32_t *out) {
  uint32_t v = 0;
  for (int i = 0; i < 4; i++) {
    char c = *ps->p++;
    v <<= 4;
    if (c >= '0' && c <= '9') v |= (uint32_t)(c - '0');
    else if (c >= 'a' && c <= 'f') v |= (uint32_t)(c - 'a' + 10);
    else if (c >= 'A' && c <= 'F') v |= (uint32_t)(c - 'A' + 10);
    else return dv__perr(ps, "bad \\u escape");
  }
  *out = v;
  return 1;
}

/* A string at ps->p (on its opening quote) into a malloc'ed buffer. */
DV_API int dv__string(DvParser *ps, char **out, size_t *len) {
  size_t cap = 16, n = 0;
  char *buf = malloc(cap);
  ps->p++;
  if (!buf) return dv__perr(ps, "out of memory");
  for (;;) {
    unsigned char c = (unsigned char)*ps->p;
    if (n + 5 > cap) {
      char *b = realloc(buf, cap *= 2);
      if (!b) return free(buf), dv__perr(ps, "out of memory");
      buf = b;
    }
    if (c == '"') {
      ps->p++;
      break;
    }
    if (c == '\0') return free(buf), dv__perr(ps, "unterminated string");
    if (c < 0x20) return free(buf), dv__perr(ps, "control character in a string");
    if (c != '\\') {
      buf[n++] = (char)c, ps->p++;
      continue;
    }
    ps->p++;
    switch (*ps->p++) {
      case '"': buf[n++] = '"'; break;
      case '\\': buf[n++] = '\\'; break;
      case '/': buf[n++] = '/'; break;
      case 'b': buf[n++] = '\b'; break;
      case 'f': buf[n++] = '\f'; break;
      case 'n': buf[n++] = '\n'; break;
      case 'r': buf[n++] = '\r'; break;
      case 't': buf[n++] = '\t'; break;
      case 'u': {
        uint32_t c1, c2;
        if (!dv__hex4(ps, &c1)) return free(buf), 0;
        if (c1 >= 0xD800 && c1 <= 0xDBFF) { /* a surrogate pair */
          if (ps->p[0] != '\\' || ps->p[1] != 'u') return free(buf), dv__perr(ps, "lone surrogate");
          ps->p += 2;
          if (!dv__hex4(ps, &c2)) return free(buf), 0;
          if (c2 < 0xDC00 || c2 > 0xDFFF) return free(buf), dv__perr(ps, "bad surrogate pair");
          c1 = 0x10000 + ((c1 - 0xD800) << 10) + (c2 - 0xDC00);
        } else if (c1 >= 0xDC00 && c1 <= 0xDFFF) {
          return free(buf), dv__perr(ps, "lone surrogate");
        }
        n += dv__utf8(buf + n, c1);
        break;
      }
      default:
        return free(buf), dv__perr(ps, "bad escape");
    }
  }
  buf[n] = '\0';
  *out = buf;
  *len = n;
  return 1;
}

DV_API int dv__value(DvParser *ps, DvJson *v);

DV_API int dv__push(DvParser *ps, DvJson *v, char *key) {
  if (v->length == 0 || (v->length >= 4 && (v->length & (v->length - 1)) == 0)) { /* capacity 4, 8, 16, … */
    size_t cap = v->length ? v->length * 2 : 4;
    DvJson *items = realloc(v->items, cap * sizeof *items);
    if (!items) return free(key), dv__perr(ps, "out of memory");
    v->items = items;
    if (v->type == DV_OBJECT) {
      char **keys = realloc(v->keys, cap * sizeof *keys);
      if (!keys) return free(key), dv__perr(ps, "out of memory");
      v->keys = keys;
    }
  }
  memset(&v->items[v->length], 0, sizeof v->items[0]);
  if (v->type == DV_OBJECT) v->keys[v->length] = key;
  v->length++;
  return dv__value(ps, &v->items[v->length - 1]);
}

DV_API int dv__value(DvParser *ps, DvJson *v) {
  memset(v, 0, sizeof *v);
  dv__ws(ps);
  if (++ps->depth > 64) return dv__perr(ps, "nested deeper than 64 levels");
  const char *p = ps->p;
  int ok = 1;
  if (*p == '{' || *p == '[') {
    int obj = *p == '{';
    v->type = obj ? DV_OBJECT : DV_ARRAY;
    ps->p++;
    dv__ws(ps);
    if (*ps->p == (obj ? '}' : ']')) {
      ps->p++;
    } else {
      for (;;) {
        char *key = NULL;
        if (obj) {
          size_t klen;
          dv__ws(ps);
          if (*ps->p != '"') return dv__perr(ps, "expected a member name");
          if (!dv__string(ps, &key, &klen)) return 0;
          dv__ws(ps);
          if (*ps->p != ':') return free(key), dv__perr(ps, "expected ':'");
          ps->p++;
        }
        if (!dv__push(ps, v, key)) return 0;
        dv__ws(ps);
        if (*ps->p == ',') {
          ps->p++;
          continue;
        }
        if (*ps->p == (obj ? '}' : ']')) {
          ps->p++;
          break;
        }
        return dv__perr(ps, obj ? "expected ',' or '}'" : "expected ',' or ']'");
      }
    }
  } else if (*p == '"') {
    v->type = DV_STRING;
    ok = dv__string(ps, &v->string, &v->length);
  } else if (strncmp(p, "true", 4) == 0 || strncmp(p, "false", 5) == 0) {
    v->type = DV_BOOL;
    v->boolean = *p == 't';
    ps->p += v->boolean ? 4 : 5;
  } else if (strncmp(p, "null", 4) == 0) {
    v->type = DV_NULL;
    ps->p += 4;
  } else if (*p == '-' || (*p >= '0' && *p <= '9')) {
    const char *q = p + (*p == '-');
    int integral = 1;
    if (*q == '0' && q[1] >= '0' && q[1] <= '9') return dv__perr(ps, "leading zero");
    while (*q >= '0' && *q <= '9') q++;
    if (q == p + (*p == '-')) return dv__perr(ps, "expected a digit");
    if (*q == '.') {
      integral = 0;
      if (!(*++q >= '0' && *q <= '9')) return dv__perr(ps, "expected a digit after '.'");
      while (*q >= '0' && *q <= '9') q++;
    }
    if (*q == 'e' || *q == 'E') {
      integral = 0;
      q++;
      if (*q == '+' || *q == '-') q++;
      if (!(*q >= '0' && *q <= '9')) return dv__perr(ps, "expected an exponent");
      while (*q >= '0' && *q <= '9') q++;
    }
    v->type = DV_NUMBER;
    v->number = strtod(p, NULL);
    if (integral) {
      errno = 0;
      long long i = strtoll(p, NULL, 10);
      if (errno == 0) v->is_int = 1, v->integer = i;
    }
    ps->p = q;
  } else {
    return dv__perr(ps, *p ? "unexpected character" : "unexpected end");
  }
  ps->depth--;
  return ok;
}

/* Parse `text` (NULL: "null") into *out; 0 with a message in err on invalid JSON. Free with
 * dv_json_clear(out) in either case. */
DV_API int dv_json_parse(const char *text, DvJson *out, char *err, size_t cap) {
  DvParser ps = {text ? text : "null", text ? text : "null", err, cap, 0};
  memset(out, 0, sizeof *out);
  if (!dv__value(&ps, out)) return 0;
  dv__ws(&ps);
  if (*ps.p != '\0') return dv__perr(&ps, "text after the value");
  return 1;
}

DV_API void dv_json_clear(DvJson *v) {
  if (v == NULL) return;
  if (v->type == DV_ARRAY || v->type == DV_OBJECT) {
    for (size_t i = 0; i < v->length; i++) {
      dv_json_clear(&v->items[i]);
      if (v->keys) free(v->keys[i]);
    }
  }
  free(v->items);
  free(v->keys);
  free(v->string);
  memset(v, 0, sizeof *v);
}

/* The member `key` of an object, or NULL (also when v is not an object). */
DV_API const DvJson *dv_json_get(const DvJson *v, const char *key) {
  if (v == NULL || v->type != DV_OBJECT) return NULL;
  for (size_t i = 0; i < v->length; i++)
    if (strcmp(v->keys[i], key) == 0) return &v->items[i];
  return NULL;
}

DV_API int dv__cfgerr(char *err, size_t cap, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  if (err && cap) vsnprintf(err, cap, fmt, ap);
  va_end(ap);
  return 0;
}

/* A config must be an object (or null) whose keys are all in `allowed` (NULL-terminated). */
DV_API int dv_cfg_check_keys(const DvJson *cfg, const char *const *allowed, char *err, size_t cap) {
  if (cfg->type == DV_NULL) return 1;
  if (cfg->type != DV_OBJECT) return dv__cfgerr(err, cap, "the config must be a JSON object");
  for (size_t i = 0; i < cfg->length; i++) {
    const char *const *a = allowed;
    while (*a && strcmp(*a, cfg->keys[i]) != 0) a++;
    if (*a == NULL) {
      char known[256] = "";
      for (a = allowed; *a; a++) {
        strncat(known, *a, sizeof known - strlen(known) - 1);
        if (a[1]) strncat(known, ", ", sizeof known - strlen(known) - 1);
      }
      return dv__cfgerr(err, cap, "unknown config key `%s` (expected one of: %s)", cfg->keys[i], known);
    }
  }
  return 1;
}

/* *out = the string at `key` (a pointer into cfg, valid while cfg is), or `dflt` when the key
 * is absent or null; 0 when it is not a string. */
DV_API int dv_cfg_string(const DvJson *cfg, const char *key, const char *dflt, const char **out, char *err, size_t cap) {
  const DvJson *v = dv_json_get(cfg, key);
  if (v == NULL || v->type == DV_NULL) return *out = dflt, 1;
  if (v->type != DV_STRING) return dv__cfgerr(err, cap, "config key `%s` must be a string", key);
  return *out = v->string, 1;
}

/* *out = the integer at `key` in [min, max], or `dflt`; 0 with a message naming the key. */
DV_API int dv_cfg_int(const DvJson *cfg, const char *key, int64_t dflt, int64_t min, int64_t max, int64_t *out,
                      char *err, size_t cap) {
  const DvJson *v = dv_json_get(cfg, key);
  if (v == NULL || v->type == DV_NULL) return *out = dflt, 1;
  if (v->type != DV_NUMBER || !v->is_int || v->integer < min || v->integer > max)
    return dv__cfgerr(err, cap, "config key `%s` must be an integer from %lld to %lld", key, (long long)min,
                      (long long)max);
  return *out = v->integer, 1;
}

/* *out = the number at `key`, or `dflt`. */
DV_API int dv_cfg_double(const DvJson *cfg, const char *key, double dflt, double *out, char *err, size_t cap) {
  const DvJson *v = dv_json_get(cfg, key);
  if (v == NULL || v->type == DV_NULL) return *out = dflt, 1;
  if (v->type != DV_NUMBER) return dv__cfgerr(err, cap, "config key `%s` must be a number", key);
  return *out = v->number, 1;
}

/* *out = the boolean at `key`, or `dflt`. */
DV_API int dv_cfg_bool(const DvJson *cfg, const char *key, int dflt, int *out, char *err, size_t cap) {
  const DvJson *v = dv_json_get(cfg, key);
  if (v == NULL || v->type == DV_NULL) return *out = dflt, 1;
  if (v->type != DV_BOOL) return dv__cfgerr(err, cap, "config key `%s` must be true or false", key);
  return *out = v->boolean, 1;
}

/* ================================================================ Arrow columns */

/* Arrow C Data Interface format strings. Timestamps and decimals take parameters:
 * "tsu:UTC", "tsu:Europe/Berlin" (an instant, microseconds), "tsu:" (wall-clock, no zone);
 * "d:12,2" (decimal128, precision 12, scale 2). A list is "+l" with an item column. */
#define DV_BOOL_FMT "b"
#define DV_INT8 "c"
#define DV_INT16 "s"
#define DV_INT32 "i"
#define DV_INT64 "l"
#define DV_FLOAT32 "f"
#define DV_FLOAT64 "g"
#define DV_UTF8 "u"
#define DV_BINARY "z"
#define DV_DATE32 "tdD"
#define DV_LIST "+l"

typedef struct {
  uint8_t *p;
  size_t len, cap;
} DvBuf;

DV_API int dv__reserve(DvBuf *b, size_t more) {
  if (b->len + more <= b->cap) return 1;
  size_t cap = b->cap ? b->cap : 64;
  while (cap < b->len + more) cap *= 2;
  uint8_t *p = realloc(b->p, cap);
  if (!p) return 0;
  b->p = p, b->cap = cap;
  return 1;
}

DV_API int dv__put(DvBuf *b, const void *src, size_t n) {
  if (!dv__reserve(b, n)) return 0;
  if (n) memcpy(b->p + b->len, src, n);
  b->len += n;
  return 1;
}

/* One column being built. Fill `name`, `format` and `nullable` (and `item` for a list) with
 * dv_column_init / dv_list_init, append rows, export, then dv_column_reset for the next batch. */
typedef struct DvColumn {
  const char *name;   /* static or owned by the reader: not freed */
  char format[64];
  int nullable;
  int64_t rows, null_count;
  int width;          /* bytes of a fixed-width value; 0 for bool, utf8, binary, list */
  int precision, scale; /* decimal */
  DvBuf validity;     /* one bit per row, set = valid */
  DvBuf values;       /* fixed-width values, or bool bits, or utf8/binary bytes */
  DvBuf offsets;      /* utf8, binary, list: int32, rows + 1 */
  struct DvColumn *item; /* list: the values */
} DvColumn;

/* A column of `format` (one of the DV_* formats, "tsu:…" or "d:P,S"). 0 on a format it does not
 * build. */
DV_API int dv_column_init(DvColumn *c, const char *name, const char *format, int nullable) {
  memset(c, 0, sizeof *c);
  c->name = name;
  c->nullable = nullable;
  if (strlen(format) >= sizeof c->format) return 0;
  strcpy(c->format, format);
  if (!strcmp(format, DV_INT8)) c->width = 1;
  else if (!strcmp(format, DV_INT16)) c->width = 2;
  else if (!strcmp(format, DV_INT32) || !strcmp(format, DV_FLOAT32) || !strcmp(format, DV_DATE32)) c->width = 4;
  else if (!strcmp(format, DV_INT64) || !strcmp(format, DV_FLOAT64) || !strncmp(format, "tsu:", 4)) c->width = 8;
  else if (!strncmp(format, "d:", 2)) {
    int end = 0; /* the whole format, nothing after the scale (",256" would be decimal256) */
    if (sscanf(format, "d:%d,%d%n", &c->precision, &c->scale, &end) != 2 || format[end] != '\0' ||
        c->precision < 1 || c->precision > 38 || c->scale < 0 || c->scale > c->precision)
      return 0;
    c->width = 16;
  } else if (strcmp(format, DV_BOOL_FMT) && strcmp(format, DV_UTF8) && strcmp(format, DV_BINARY)) {
    return 0;
  }
  int32_t zero = 0;
  return dv__put(&c->offsets, &zero, sizeof zero);
}

/* A list column whose values are `item` (malloc'ed, initialised with dv_column_init; renamed
 * "item"). The list owns it from here: dv_column_free frees it. */
DV_API int dv_list_init(DvColumn *c, const char *name, int nullable, DvColumn *item) {
  memset(c, 0, sizeof *c);
  c->name = name;
  c->nullable = nullable;
  strcpy(c->format, DV_LIST);
  c->item = item;
  item->name = "item";
  int32_t zero = 0;
  return dv__put(&c->offsets, &zero, sizeof zero);
}

DV_API int dv__valid(DvColumn *c, int valid) {
  size_t byte = (size_t)(c->rows / 8);
  if (byte >= c->validity.len) {
    uint8_t z = 0;
    if (!dv__put(&c->validity, &z, 1)) return 0;
  }
  if (valid) c->validity.p[byte] |= (uint8_t)(1u << (c->rows % 8));
  else c->null_count++;
  c->rows++;
  return 1;
}

DV_API int dv__fixed(DvColumn *c, const void *v, int width) {
  if (c->width != width) return 0; /* the wrong append for this column's type */
  return dv__put(&c->values, v, (size_t)width) && dv__valid(c, 1);
}

DV_API int dv_append_int8(DvColumn *c, int8_t v) { return strcmp(c->format, DV_INT8) ? 0 : dv__fixed(c, &v, 1); }
DV_API int dv_append_int16(DvColumn *c, int16_t v) { return strcmp(c->format, DV_INT16) ? 0 : dv__fixed(c, &v, 2); }
DV_API int dv_append_int32(DvColumn *c, int32_t v) { return strcmp(c->format, DV_INT32) ? 0 : dv__fixed(c, &v, 4); }
DV_API int dv_append_int64(DvColumn *c, int64_t v) { return strcmp(c->format, DV_INT64) ? 0 : dv__fixed(c, &v, 8); }
DV_API int dv_append_float32(DvColumn *c, float v) { return strcmp(c->format, DV_FLOAT32) ? 0 : dv__fixed(c, &v, 4); }
DV_API int dv_append_float64(DvColumn *c, double v) { return strcmp(c->format, DV_FLOAT64) ? 0 : dv__fixed(c, &v, 8); }
/* Days since 1970-01-01. */
DV_API int dv_append_date32(DvColumn *c, int32_t days) { return strcmp(c->format, DV_DATE32) ? 0 : dv__fixed(c, &days, 4); }
/* Microseconds since 1970-01-01 00:00 UTC (an instant), or of wall-clock time for "tsu:". */
DV_API int dv_append_timestamp_us(DvColumn *c, int64_t us) { return strncmp(c->format, "tsu:", 4) ? 0 : dv__fixed(c, &us, 8); }

/* Days since 1970-01-01 of a calendar date (proleptic Gregorian), for dv_append_date32. */
DV_API int32_t dv_days_from_civil(int64_t y, unsigned m, unsigned d) {
  y -= m <= 2;
  int64_t era = (y >= 0 ? y : y - 399) / 400;
  unsigned yoe = (unsigned)(y - era * 400);
  unsigned doy = (153 * (m + (m > 2 ? (unsigned)-3 : 9)) + 2) / 5 + d - 1;
  unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
  return (int32_t)(era * 146097 + (int64_t)doe - 719468);
}

DV_API int dv_append_bool(DvColumn *c, int v) {
  if (strcmp(c->format, DV_BOOL_FMT)) return 0;
  size_t byte = (size_t)(c->rows / 8);
  if (byte >= c->values.len) {
    uint8_t z = 0;
    if (!dv__put(&c->values, &z, 1)) return 0;
  }
  if (v) c->values.p[byte] |= (uint8_t)(1u << (c->rows % 8));
  return dv__valid(c, 1);
}

DV_API int dv__bytes(DvColumn *c, const void *p, size_t n) {
  if (c->values.len + n > INT32_MAX) return 0; /* int32 offsets: at most 2 GiB per batch */
  if (!dv__put(&c->values, p, n)) return 0;
  int32_t end = (int32_t)c->values.len;
  return dv__put(&c->offsets, &end, sizeof end) && dv__valid(c, 1);
}

/* UTF-8 text (not checked here: dativo checks every batch it receives). */
DV_API int dv_append_string(DvColumn *c, const char *s) {
  return strcmp(c->format, DV_UTF8) ? 0 : dv__bytes(c, s, strlen(s));
}
DV_API int dv_append_string_n(DvColumn *c, const char *s, size_t n) {
  return strcmp(c->format, DV_UTF8) ? 0 : dv__bytes(c, s, n);
}
DV_API int dv_append_binary(DvColumn *c, const void *p, size_t n) {
  return strcmp(c->format, DV_BINARY) ? 0 : dv__bytes(c, p, n);
}

/* A decimal as text ("-1234.56"): 0 when it is not a number, has more fractional digits than
 * the scale or more digits than the precision. */
DV_API int dv_append_decimal(DvColumn *c, const char *text) {
  if (c->width != 16) return 0;
  const char *p = text;
  int neg = 0, frac = -1, digits = 0, seen = 0;
  uint64_t lo = 0, hi = 0; /* the unscaled magnitude, 128 bits */
  if (*p == '-' || *p == '+') neg = *p++ == '-';
  for (; *p; p++) {
    if (*p == '.' && frac < 0) {
      frac = 0;
      continue;
    }
    if (*p < '0' || *p > '9') return 0;
    seen++;
    if (frac >= 0 && ++frac > c->scale) return 0;
    if (digits || *p != '0') digits++;
    if (digits > c->precision) return 0;
    /* (hi, lo) = (hi, lo) * 10 + digit */
    unsigned __int128 v = ((unsigned __int128)hi << 64 | lo) * 10 + (unsigned)(*p - '0');
    hi = (uint64_t)(v >> 64), lo = (uint64_t)v;
  }
  if (!seen) return 0;
  for (int i = frac < 0 ? 0 : frac; i < c->scale; i++) {
    if (digits && ++digits > c->precision) return 0;
    unsigned __int128 v = ((unsigned __int128)hi << 64 | lo) * 10;
    hi = (uint64_t)(v >> 64), lo = (uint64_t)v;
  }
  __int128 s = (__int128)((unsigned __int128)hi << 64 | lo);
  if (neg) s = -s;
  return dv__fixed(c, &s, 16); /* little-endian two's complement, as Arrow stores it */
}

/* unscaled × 10^-scale: 12345 with scale 2 is 123.45. 0 when it has more digits than the
 * precision. */
DV_API int dv_append_decimal_unscaled(DvColumn *c, int64_t unscaled) {
  if (c->width != 16) return 0;
  __int128 s = unscaled, limit = 1;
  for (int i = 0; i < c->precision; i++) limit *= 10;
  if (s >= limit || -s >= limit) return 0;
  return dv__fixed(c, &s, 16);
}

/* A list row ends: it holds the values appended to c->item since the previous row. */
DV_API int dv_list_end(DvColumn *c) {
  if (c->item == NULL || c->item->rows > INT32_MAX) return 0;
  int32_t end = (int32_t)c->item->rows;
  return dv__put(&c->offsets, &end, sizeof end) && dv__valid(c, 1);
}

/* A null of the column's type (for a non-nullable column dativo refuses the batch). */
DV_API int dv_append_null(DvColumn *c) {
  if (c->width) {
    uint8_t zero[16] = {0};
    if (!dv__put(&c->values, zero, (size_t)c->width)) return 0;
  } else if (!strcmp(c->format, DV_BOOL_FMT)) {
    if ((size_t)(c->rows / 8) >= c->values.len) {
      uint8_t z = 0;
      if (!dv__put(&c->values, &z, 1)) return 0;
    }
  } else {
    int32_t end = (int32_t)(c->item ? c->item->rows : (int64_t)c->values.len);
    if (!dv__put(&c->offsets, &end, sizeof end)) return 0;
  }
  return dv__valid(c, 0);
}

/* Empty the column for the next batch (its buffers are kept for reuse). */
DV_API void dv_column_reset(DvColumn *c) {
  c->rows = c->null_count = 0;
  c->validity.len = c->values.len = 0;
  c->offsets.len = 0;
  int32_t zero = 0;
  dv__put(&c->offsets, &zero, sizeof zero); /* within capacity: cannot fail */
  if (c->item) dv_column_reset(c->item);
}

DV_API void dv_column_free(DvColumn *c) {
  free(c->validity.p), free(c->values.p), free(c->offsets.p);
  if (c->item) dv_column_free(c->item), free(c->item);
  memset(c, 0, sizeof *c);
}

/* ---- export: release callbacks free exactly what the export malloc'ed ---- */

DV_API void dv__release_schema(struct ArrowSchema *s) {
  for (int64_t i = 0; i < s->n_children; i++) {
    if (s->children[i] && s->children[i]->release) s->children[i]->release(s->children[i]);
    free(s->children[i]);
  }
  free(s->children);
  free((void *)s->format);
  free((void *)s->name);
  s->release = NULL;
}

DV_API void dv__release_array(struct ArrowArray *a) {
  for (int64_t i = 0; i < a->n_children; i++) {
    if (a->children[i] && a->children[i]->release) a->children[i]->release(a->children[i]);
    free(a->children[i]);
  }
  for (int64_t i = 0; i < a->n_buffers; i++) free((void *)a->buffers[i]);
  free(a->children);
  free((void *)a->buffers);
  a->release = NULL;
}

DV_API char *dv__strdup(const char *s) {
  size_t n = strlen(s) + 1;
  char *d = malloc(n);
  return d ? memcpy(d, s, n) : NULL;
}

DV_API int dv__schema(struct ArrowSchema *s, const char *format, const char *name, int nullable, int64_t n_children) {
  *s = (struct ArrowSchema){.flags = nullable ? ARROW_FLAG_NULLABLE : 0, .release = dv__release_schema};
  s->format = dv__strdup(format);
  s->name = dv__strdup(name ? name : "");
  if (!s->format || !s->name) return 0;
  if (n_children > 0 && (s->children = calloc((size_t)n_children, sizeof *s->children)) == NULL) return 0;
  for (; s->n_children < n_children; s->n_children++)
    if ((s->children[s->n_children] = calloc(1, sizeof **s->children)) == NULL) return 0;
  return 1;
}

DV_API int dv__column_schema(struct ArrowSchema *s, const DvColumn *c) {
  if (!dv__schema(s, c->format, c->name, c->nullable, c->item ? 1 : 0)) return 0;
  return c->item == NULL || dv__column_schema(s->children[0], c->item);
}

/* The batch schema: a struct ("+s") of the columns. Returns a DATIVO_* code. */
DV_API int dv_export_schema(const DvColumn *cols, int64_t n, struct ArrowSchema *out) {
  out->release = NULL;
  if (dv__schema(out, "+s", "", 0, n)) {
    int64_t i = 0;
    while (i < n && dv__column_schema(out->children[i], &cols[i])) i++;
    if (i == n) return DATIVO_OK;
  }
  if (out->release) out->release(out);
  return DATIVO_ERROR;
}

/* A malloc'ed copy of a buffer (at least 1 byte: Arrow wants non-NULL buffers here). */
DV_API void *dv__copy(const DvBuf *b) {
  void *p = malloc(b->len ? b->len : 1);
  if (p && b->len) memcpy(p, b->p, b->len);
  return p;
}

DV_API int dv__array(struct ArrowArray *a, int64_t length, int64_t null_count, int64_t n_buffers, int64_t n_children) {
  *a = (struct ArrowArray){.length = length, .null_count = null_count, .release = dv__release_array};
  if ((a->buffers = calloc((size_t)n_buffers, sizeof *a->buffers)) == NULL) return 0;
  a->n_buffers = n_buffers;
  if (n_children > 0 && (a->children = calloc((size_t)n_children, sizeof *a->children)) == NULL) return 0;
  for (; a->n_children < n_children; a->n_children++)
    if ((a->children[a->n_children] = calloc(1, sizeof **a->children)) == NULL) return 0;
  return 1;
}

DV_API int dv__column_array(struct ArrowArray *a, const DvColumn *c) {
  int var = !strcmp(c->format, DV_UTF8) || !strcmp(c->format, DV_BINARY);
  int list = c->item != NULL;
  if (!dv__array(a, c->rows, c->null_count, var ? 3 : 2, list ? 1 : 0)) return 0;
  if (c->null_count > 0 && (a->buffers[0] = dv__copy(&c->validity)) == NULL) return 0;
  if (var || list) {
    if ((a->buffers[1] = dv__copy(&c->offsets)) == NULL) return 0;
    if (var) return (a->buffers[2] = dv__copy(&c->values)) != NULL;
    return dv__column_array(a->children[0], c->item);
  }
  return (a->buffers[1] = dv__copy(&c->values)) != NULL;
}

/* The batch: a struct array ("+s", no nulls of its own) of the columns, which must all have
 * the same number of rows. The columns stay as they are (dv_column_reset them for the next
 * batch). Returns a DATIVO_* code; on failure `out` is released. */
DV_API int dv_export_batch(const DvColumn *cols, int64_t n, struct ArrowArray *out) {
  int64_t rows = n > 0 ? cols[0].rows : 0;
  out->release = NULL;
  for (int64_t i = 0; i < n; i++)
    if (cols[i].rows != rows) return DATIVO_ERROR;
  if (dv__array(out, rows, 0, 1, n)) {
    int64_t i = 0;
    while (i < n && dv__column_array(out->children[i], &cols[i])) i++;
    if (i == n) return DATIVO_OK;
  }
  if (out->release) out->release(out);
  return DATIVO_ERROR;
}

#endif /* DATIVO_SDK_H */
