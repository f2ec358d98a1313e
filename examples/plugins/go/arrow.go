package main

// The C side of the plugin: the function table, the per-thread last error, and the Arrow C Data
// Interface structs with their release callbacks. Everything dativo receives lives in C memory
// (malloc / posix_memalign), never in Go memory, so the cgo pointer rules hold and the release
// callbacks below run without entering Go at all.
//
// This file has no //export functions, so its preamble may define C functions (main.go's may not).

/*
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "dativo_plugin.h"

// The plugin's definition of the opaque handle: an id into the Go-side instance table. dativo only
// ever sees this C allocation, never a Go pointer.
struct DativoReader { uint64_t id; };

// ---- last error, one per calling OS thread ----
// A Go function exported to C runs on the C caller's thread, so a C thread-specific value set
// from Go is exactly "the last error on this thread". It stays until that thread fails again,
// and is freed when the thread exits.
static pthread_key_t fw_error_key;
static pthread_once_t fw_error_once = PTHREAD_ONCE_INIT;
static void fw_error_key_init(void) { pthread_key_create(&fw_error_key, free); }

static void fw_set_error(char *owned) {
  pthread_once(&fw_error_once, fw_error_key_init);
  free(pthread_getspecific(fw_error_key));
  pthread_setspecific(fw_error_key, owned);
}
static const char *fw_last_error(void) {
  pthread_once(&fw_error_once, fw_error_key_init);
  const char *e = pthread_getspecific(fw_error_key);
  return e ? e : "";
}
static void fw_free_string(char *s) { free(s); }

// ---- the Go exports (main.go), as cgo declares them (char*, not const char*) ----
extern DativoReader *fixedwidth_reader_new(char *name);
extern int fixedwidth_reader_initialize(DativoReader *r, char *config_json, char *context_json);
extern int fixedwidth_reader_get_schema(DativoReader *r, struct ArrowSchema *out);
extern int fixedwidth_reader_read_batch(DativoReader *r, struct ArrowArray *out, struct ArrowSchema *out_schema);
extern int fixedwidth_reader_get_incremental_state(DativoReader *r, char **out_json);
extern int fixedwidth_reader_close(DativoReader *r);
extern void fixedwidth_reader_free(DativoReader *r);

// Thin wrappers with the exact signatures of dativo_plugin.h.
static DativoReader *w_reader_new(const char *name) { return fixedwidth_reader_new((char *)name); }
static int w_reader_initialize(DativoReader *r, const char *c, const char *x) {
  return fixedwidth_reader_initialize(r, (char *)c, (char *)x);
}
static int w_reader_get_schema(DativoReader *r, struct ArrowSchema *out) {
  return fixedwidth_reader_get_schema(r, out);
}
static int w_reader_read_batch(DativoReader *r, struct ArrowArray *out, struct ArrowSchema *s) {
  return fixedwidth_reader_read_batch(r, out, s);
}
static int w_reader_get_incremental_state(DativoReader *r, char **out_json) {
  return fixedwidth_reader_get_incremental_state(r, out_json);
}
static int w_reader_close(DativoReader *r) { return fixedwidth_reader_close(r); }
static void w_reader_free(DativoReader *r) { fixedwidth_reader_free(r); }

static void fw_fill_table(DativoPlugin *out, const char *manifest) {
  memset(out, 0, sizeof *out); // writer_* stay NULL: this plugin has no writers
  out->abi_version = DATIVO_PLUGIN_ABI_VERSION;
  out->struct_size = (uint32_t)sizeof(DativoPlugin);
  out->manifest_json = manifest;
  out->last_error = fw_last_error;
  out->free_string = fw_free_string;
  out->reader_new = w_reader_new;
  out->reader_initialize = w_reader_initialize;
  out->reader_get_schema = w_reader_get_schema;
  out->reader_read_batch = w_reader_read_batch;
  out->reader_get_incremental_state = w_reader_get_incremental_state;
  out->reader_close = w_reader_close;
  out->reader_free = w_reader_free;
}

static DativoReader *fw_handle_new(uint64_t id) {
  DativoReader *h = malloc(sizeof *h);
  if (h) h->id = id;
  return h;
}
static uint64_t fw_handle_id(DativoReader *h) { return h->id; }
static void fw_handle_free(DativoReader *h) { free(h); }

// ---- Arrow C Data Interface ----

// Buffers are 64-byte aligned (the Arrow recommendation; decimal128 needs at least 16) and never
// NULL, even when empty.
static void *fw_buffer(size_t n) {
  void *p = NULL;
  if (posix_memalign(&p, 64, n ? n : 1) != 0) return NULL;
  memset(p, 0, n ? n : 1);
  return p;
}

// Frees the buffers, then the children (releasing any a consumer has not moved away), then the
// arrays of pointers. The struct itself belongs to whoever allocated it: dativo for the top level,
// the parent's release for children.
static void fw_release_array(struct ArrowArray *a) {
  if (a == NULL || a->release == NULL) return;
  for (int64_t i = 0; i < a->n_children; i++) {
    struct ArrowArray *c = a->children[i];
    if (c == NULL) continue;
    if (c->release) c->release(c);
    free(c);
  }
  free(a->children);
  for (int64_t i = 0; i < a->n_buffers; i++) free((void *)a->buffers[i]);
  free((void *)a->buffers);
  a->release = NULL;
}

// Zeroes `a` and gives it pointer arrays for n_buffers buffers and n_children (zeroed) children,
// and the release callback, so a half-built array can always be released. 0 on out of memory.
static int fw_array_init(struct ArrowArray *a, int64_t length, int64_t null_count,
                         int64_t n_buffers, int64_t n_children) {
  memset(a, 0, sizeof *a);
  a->length = length;
  a->null_count = null_count;
  a->release = fw_release_array;
  a->buffers = calloc(n_buffers ? n_buffers : 1, sizeof(void *));
  if (a->buffers == NULL) return 0;
  a->n_buffers = n_buffers;
  if (n_children > 0) {
    a->children = calloc(n_children, sizeof(struct ArrowArray *));
    if (a->children == NULL) return 0;
    a->n_children = n_children;
    for (int64_t i = 0; i < n_children; i++) {
      a->children[i] = calloc(1, sizeof(struct ArrowArray));
      if (a->children[i] == NULL) return 0;
    }
  }
  return 1;
}
static struct ArrowArray *fw_array_child(struct ArrowArray *a, int64_t i) { return a->children[i]; }
static void fw_array_set_buffer(struct ArrowArray *a, int64_t i, void *buf) { a->buffers[i] = buf; }

static void fw_release_schema(struct ArrowSchema *s) {
  if (s == NULL || s->release == NULL) return;
  for (int64_t i = 0; i < s->n_children; i++) {
    struct ArrowSchema *c = s->children[i];
    if (c == NULL) continue;
    if (c->release) c->release(c);
    free(c);
  }
  free(s->children);
  free((void *)s->format);
  free((void *)s->name);
  s->release = NULL;
}

// Like fw_array_init; takes ownership of the malloc'ed `format` and `name`.
static int fw_schema_init(struct ArrowSchema *s, char *format, char *name, int64_t flags,
                          int64_t n_children) {
  memset(s, 0, sizeof *s);
  s->format = format;
  s->name = name;
  s->flags = flags;
  s->release = fw_release_schema;
  if (format == NULL || name == NULL) return 0;
  if (n_children > 0) {
    s->children = calloc(n_children, sizeof(struct ArrowSchema *));
    if (s->children == NULL) return 0;
    s->n_children = n_children;
    for (int64_t i = 0; i < n_children; i++) {
      s->children[i] = calloc(1, sizeof(struct ArrowSchema));
      if (s->children[i] == NULL) return 0;
    }
  }
  return 1;
}
static struct ArrowSchema *fw_schema_child(struct ArrowSchema *s, int64_t i) { return s->children[i]; }
*/
import "C"

import (
	"encoding/binary"
	"errors"
	"fmt"
	"unsafe"
)

var errNoMemory = errors.New("out of memory")

// manifestC is the static manifest string; it lives for the life of the process.
var manifestC = C.CString(manifest)

func releaseSchema(s *C.struct_ArrowSchema) { C.fw_release_schema(s) }

func fillPluginTable(out *C.DativoPlugin) { C.fw_fill_table(out, manifestC) }

// setLastError records msg as the calling thread's last error.
func setLastError(msg string) { C.fw_set_error(C.CString(msg)) }

func newHandle(id uint64) *C.DativoReader { return C.fw_handle_new(C.uint64_t(id)) }
func handleID(h *C.DativoReader) uint64   { return uint64(C.fw_handle_id(h)) }
func freeHandle(h *C.DativoReader)        { C.fw_handle_free(h) }

// cBytes allocates n bytes of zeroed, aligned C memory and returns it with a Go view of it.
func cBytes(n int) (unsafe.Pointer, []byte) {
	p := C.fw_buffer(C.size_t(n))
	if p == nil {
		return nil, nil
	}
	return p, unsafe.Slice((*byte)(p), n)
}

// arrowFormat is the Arrow C Data Interface format string of a field.
func arrowFormat(f *field) string {
	switch f.typ {
	case typeInt64:
		return "l"
	case typeString:
		return "u"
	default:
		return fmt.Sprintf("d:18,%d", f.scale)
	}
}

// exportSchema fills out with the struct schema ("+s") of the fields; all columns are nullable.
func exportSchema(fields []field, out *C.struct_ArrowSchema) error {
	if C.fw_schema_init(out, C.CString("+s"), C.CString(""), 0, C.int64_t(len(fields))) == 0 {
		C.fw_release_schema(out)
		return errNoMemory
	}
	for i := range fields {
		child := C.fw_schema_child(out, C.int64_t(i))
		ok := C.fw_schema_init(child, C.CString(arrowFormat(&fields[i])), C.CString(fields[i].name),
			C.ARROW_FLAG_NULLABLE, 0)
		if ok == 0 {
			C.fw_release_schema(out)
			return errNoMemory
		}
	}
	return nil
}

// exportBatch fills out with a struct array ("+s", no top-level nulls) of the columns, n rows.
func exportBatch(fields []field, cols []*column, n int, out *C.struct_ArrowArray) error {
	if C.fw_array_init(out, C.int64_t(n), 0, 1, C.int64_t(len(cols))) == 0 {
		C.fw_release_array(out)
		return errNoMemory
	}
	for i, col := range cols {
		if err := exportColumn(&fields[i], col, n, C.fw_array_child(out, C.int64_t(i))); err != nil {
			C.fw_release_array(out)
			return err
		}
	}
	return nil
}

func exportColumn(f *field, col *column, n int, a *C.struct_ArrowArray) error {
	nBuffers := 2
	if f.typ == typeString {
		nBuffers = 3
	}
	if C.fw_array_init(a, C.int64_t(n), C.int64_t(col.nulls), C.int64_t(nBuffers), 0) == 0 {
		return errNoMemory
	}
	// Validity bitmap (LSB first); absent when there are no nulls.
	if col.nulls > 0 {
		p, bits := cBytes((n + 7) / 8)
		if p == nil {
			return errNoMemory
		}
		for i, null := range col.null {
			if !null {
				bits[i/8] |= 1 << (uint(i) % 8)
			}
		}
		C.fw_array_set_buffer(a, 0, p)
	}
	switch f.typ {
	case typeInt64:
		p, b := cBytes(8 * n)
		if p == nil {
			return errNoMemory
		}
		for i, v := range col.ints {
			binary.LittleEndian.PutUint64(b[8*i:], uint64(v))
		}
		C.fw_array_set_buffer(a, 1, p)
	case typeDecimal:
		p, b := cBytes(16 * n)
		if p == nil {
			return errNoMemory
		}
		for i, v := range col.ints {
			// decimal128: a 16-byte little-endian two's complement integer; sign-extend the int64.
			hi := uint64(0)
			if v < 0 {
				hi = ^uint64(0)
			}
			binary.LittleEndian.PutUint64(b[16*i:], uint64(v))
			binary.LittleEndian.PutUint64(b[16*i+8:], hi)
		}
		C.fw_array_set_buffer(a, 1, p)
	case typeString:
		p, b := cBytes(4 * (n + 1))
		if p == nil {
			return errNoMemory
		}
		for i, o := range col.offsets {
			binary.LittleEndian.PutUint32(b[4*i:], uint32(o))
		}
		C.fw_array_set_buffer(a, 1, p)
		p, b = cBytes(len(col.data))
		if p == nil {
			return errNoMemory
		}
		copy(b, col.data)
		C.fw_array_set_buffer(a, 2, p)
	}
	return nil
}
