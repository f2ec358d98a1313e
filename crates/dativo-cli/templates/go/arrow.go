package main

// The C side of the plugin: the function table, the per-thread last error, and the Arrow C Data
// Interface structs with their release callbacks. Everything dativo receives lives in C memory
// (malloc), never in Go memory, so the cgo pointer rules hold and a release callback runs
// without entering Go. You rarely need to change this file: main.go holds the reader.
//
// (This file defines C functions, so it has no //export functions: cgo allows only one of the two.)

/*
#cgo CFLAGS: -I${SRCDIR}
#include <pthread.h>
#include <stdlib.h>
#include "dativo_plugin.h"

struct DativoReader { uintptr_t handle; }; // a runtime/cgo.Handle of the Go reader

// ---- the last error, one per calling thread (a Go export runs on its C caller's thread) ----
static pthread_key_t error_key;
static pthread_once_t error_once = PTHREAD_ONCE_INIT;
static void error_key_init(void) { pthread_key_create(&error_key, free); }
static void set_last_error(char *owned) {
  pthread_once(&error_once, error_key_init);
  free(pthread_getspecific(error_key));
  pthread_setspecific(error_key, owned);
}
static const char *last_error(void) {
  pthread_once(&error_once, error_key_init);
  const char *e = pthread_getspecific(error_key);
  return e ? e : "";
}
static void free_string(char *s) { free(s); }

// ---- the table: the Go exports of main.go (cgo declares their strings char *, not const) ----
extern DativoReader *{{name}}_reader_new(char *name);
extern int {{name}}_reader_initialize(DativoReader *r, char *config_json, char *context_json);
extern int {{name}}_reader_get_schema(DativoReader *r, struct ArrowSchema *out);
extern int {{name}}_reader_read_batch(DativoReader *r, struct ArrowArray *out, struct ArrowSchema *out_schema);
extern int {{name}}_reader_get_incremental_state(DativoReader *r, char **out_json);
extern int {{name}}_reader_close(DativoReader *r);
extern void {{name}}_reader_free(DativoReader *r);

static DativoReader *reader_new(const char *name) { return {{name}}_reader_new((char *)name); }
static int reader_initialize(DativoReader *r, const char *config_json, const char *context_json) {
  return {{name}}_reader_initialize(r, (char *)config_json, (char *)context_json);
}

static void fill_table(DativoPlugin *out, const char *manifest) {
  *out = (DativoPlugin){0}; // the writer functions stay NULL: this plugin has no writer
  out->abi_version = DATIVO_PLUGIN_ABI_VERSION;
  out->struct_size = (uint32_t)sizeof(DativoPlugin);
  out->manifest_json = manifest;
  out->last_error = last_error;
  out->free_string = free_string;
  out->reader_new = reader_new;
  out->reader_initialize = reader_initialize;
  out->reader_get_schema = {{name}}_reader_get_schema;
  out->reader_read_batch = {{name}}_reader_read_batch;
  out->reader_get_incremental_state = {{name}}_reader_get_incremental_state;
  out->reader_close = {{name}}_reader_close;
  out->reader_free = {{name}}_reader_free;
}

static DativoReader *handle_new(uintptr_t handle) {
  DativoReader *r = malloc(sizeof *r);
  if (r) r->handle = handle;
  return r;
}
static uintptr_t handle_of(DativoReader *r) { return r->handle; }

// ---- Arrow: every struct, child, buffer and string below is malloc'ed ----

// Frees the children dativo did not move away, then the buffers.
static void release_array(struct ArrowArray *a) {
  for (int64_t i = 0; i < a->n_children; i++) {
    if (a->children[i] && a->children[i]->release) a->children[i]->release(a->children[i]);
    free(a->children[i]);
  }
  for (int64_t i = 0; i < a->n_buffers; i++) free((void *)a->buffers[i]);
  free(a->children);
  free((void *)a->buffers);
  a->release = NULL;
}

// An array of `length` rows with NULL buffers and zeroed children (release always works); 0 on
// out of memory.
static int array_init(struct ArrowArray *a, int64_t length, int64_t null_count, int64_t n_buffers, int64_t n_children) {
  *a = (struct ArrowArray){.length = length, .null_count = null_count, .release = release_array};
  if ((a->buffers = calloc(n_buffers, sizeof(void *))) == NULL) return 0;
  a->n_buffers = n_buffers;
  if (n_children > 0 && (a->children = calloc(n_children, sizeof(void *))) == NULL) return 0;
  for (; a->n_children < n_children; a->n_children++)
    if ((a->children[a->n_children] = calloc(1, sizeof(struct ArrowArray))) == NULL) return 0;
  return 1;
}
static struct ArrowArray *array_child(struct ArrowArray *a, int64_t i) { return a->children[i]; }
static void *array_buffer(struct ArrowArray *a, int64_t i, size_t size) {
  return (void *)(a->buffers[i] = calloc(size ? size : 1, 1));
}

static void release_schema(struct ArrowSchema *s) {
  for (int64_t i = 0; i < s->n_children; i++) {
    if (s->children[i] && s->children[i]->release) s->children[i]->release(s->children[i]);
    free(s->children[i]);
  }
  free(s->children);
  free((void *)s->format);
  free((void *)s->name);
  s->release = NULL;
}

// Like array_init; takes the malloc'ed format and name.
static int schema_init(struct ArrowSchema *s, char *format, char *name, int64_t flags, int64_t n_children) {
  *s = (struct ArrowSchema){.format = format, .name = name, .flags = flags, .release = release_schema};
  if (n_children > 0 && (s->children = calloc(n_children, sizeof(void *))) == NULL) return 0;
  for (; s->n_children < n_children; s->n_children++)
    if ((s->children[s->n_children] = calloc(1, sizeof(struct ArrowSchema))) == NULL) return 0;
  return 1;
}
static struct ArrowSchema *schema_child(struct ArrowSchema *s, int64_t i) { return s->children[i]; }
*/
import "C"

import (
	"errors"
	"runtime/cgo"
	"unsafe"
)

var errNoMemory = errors.New("{{name}}: out of memory")

var manifestC = C.CString(manifest) // lives for the whole process, like the library

func fillPluginTable(out *C.DativoPlugin) { C.fill_table(out, manifestC) }

// setLastError records msg as the last error of the calling thread.
func setLastError(msg string) { C.set_last_error(C.CString(msg)) }

// newHandle is what dativo holds for r: a C allocation (never a Go pointer) with a cgo.Handle.
func newHandle(r *reader) *C.DativoReader {
	handle := cgo.NewHandle(r)
	h := C.handle_new(C.uintptr_t(handle))
	if h == nil {
		handle.Delete()
	}
	return h
}
func handleOf(h *C.DativoReader) cgo.Handle { return cgo.Handle(C.handle_of(h)) }
func freeHandle(h *C.DativoReader) {
	handleOf(h).Delete()
	C.free(unsafe.Pointer(h))
}

// ---- columns: built row by row in Arrow's layout, then copied into C memory ----

const (
	formatInt64 = "l" // Arrow C Data Interface format strings
	formatUTF8  = "u"
)

type field struct {
	name, format string
	nullable     bool
}

// column accumulates one column of a batch.
type column struct {
	field
	nulls     []bool // per row: true = null
	nullCount int
	ints      []int64 // int64: the values
	offsets   []int32 // utf8: where each row ends in data, after a leading 0
	data      []byte
}

func newColumns() []*column {
	cols := make([]*column, len(schema))
	for i, f := range schema {
		cols[i] = &column{field: f, offsets: []int32{0}}
	}
	return cols
}

func (c *column) rows() int { return len(c.nulls) }

func (c *column) AppendInt64(v int64) {
	c.ints, c.nulls = append(c.ints, v), append(c.nulls, false)
}

func (c *column) AppendString(s string) {
	c.data = append(c.data, s...)
	c.offsets, c.nulls = append(c.offsets, int32(len(c.data))), append(c.nulls, false)
}

func (c *column) AppendNull() {
	c.ints, c.offsets = append(c.ints, 0), append(c.offsets, int32(len(c.data)))
	c.nulls, c.nullCount = append(c.nulls, true), c.nullCount+1
}

// ---- export to the Arrow C Data Interface ----

func releaseSchema(s *C.struct_ArrowSchema) { C.release_schema(s) }

// exportSchema fills out with the struct schema ("+s") whose children are `schema`.
func exportSchema(out *C.struct_ArrowSchema) error {
	if C.schema_init(out, C.CString("+s"), C.CString(""), 0, C.int64_t(len(schema))) == 0 {
		C.release_schema(out)
		return errNoMemory
	}
	for i, f := range schema {
		flags := C.int64_t(0)
		if f.nullable {
			flags = C.ARROW_FLAG_NULLABLE
		}
		if C.schema_init(C.schema_child(out, C.int64_t(i)), C.CString(f.format), C.CString(f.name), flags, 0) == 0 {
			C.release_schema(out)
			return errNoMemory
		}
	}
	return nil
}

// exportBatch fills out with a struct array ("+s", no top-level nulls) of the columns.
func exportBatch(out *C.struct_ArrowArray, cols []*column) error {
	if C.array_init(out, C.int64_t(cols[0].rows()), 0, 1, C.int64_t(len(cols))) == 0 || !exportColumns(out, cols) {
		C.release_array(out)
		return errNoMemory
	}
	return nil
}

func exportColumns(out *C.struct_ArrowArray, cols []*column) bool {
	for i, c := range cols {
		a, n := C.array_child(out, C.int64_t(i)), c.rows()
		nBuffers := 2 // validity, values
		if c.format == formatUTF8 {
			nBuffers = 3 // validity, offsets, data
		}
		if C.array_init(a, C.int64_t(n), C.int64_t(c.nullCount), C.int64_t(nBuffers), 0) == 0 {
			return false
		}
		if c.nullCount > 0 { // validity bitmap, LSB first; absent when there are no nulls
			bits := cBuffer[byte](a, 0, (n+7)/8)
			if bits == nil {
				return false
			}
			for row, null := range c.nulls {
				if !null {
					bits[row/8] |= 1 << (row % 8)
				}
			}
		}
		switch c.format {
		case formatInt64:
			values := cBuffer[int64](a, 1, n)
			if values == nil {
				return false
			}
			copy(values, c.ints)
		case formatUTF8:
			offsets, data := cBuffer[int32](a, 1, n+1), cBuffer[byte](a, 2, len(c.data))
			if offsets == nil || data == nil {
				return false
			}
			copy(offsets, c.offsets)
			copy(data, c.data)
		}
	}
	return true
}

// cBuffer allocates buffer i of a (zeroed C memory, freed by a's release) and returns a Go view
// of it; nil on out of memory.
func cBuffer[T any](a *C.struct_ArrowArray, i int, n int) []T {
	var zero T
	p := C.array_buffer(a, C.int64_t(i), C.size_t(n*int(unsafe.Sizeof(zero))))
	if p == nil {
		return nil
	}
	return unsafe.Slice((*T)(p), n)
}
