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
	"fmt"
	"math"
	"math/big"
	"runtime/cgo"
	"strings"
	"time"
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

// Arrow C Data Interface format strings of the column types arrow.go builds. Timestamps,
// decimals and lists take parameters: formatTimestamp, formatDecimal and listField.
const (
	formatBool    = "b"
	formatInt8    = "c"
	formatInt16   = "s"
	formatInt32   = "i"
	formatInt64   = "l"
	formatFloat32 = "f"
	formatFloat64 = "g"
	formatUTF8    = "u"
	formatBinary  = "z"
	formatDate32  = "tdD" // days since 1970-01-01
	formatList    = "+l"
)

// formatTimestamp is a timestamp in microseconds: tz "" for a local (zone-less) timestamp,
// "UTC" or an IANA name ("Europe/Berlin") for an instant.
func formatTimestamp(tz string) string { return "tsu:" + tz }

// formatDecimal is a decimal128(precision, scale): 1 <= precision <= 38, 0 <= scale <= precision.
func formatDecimal(precision, scale int) string { return fmt.Sprintf("d:%d,%d", precision, scale) }

type field struct {
	name, format string
	nullable     bool
	item         *field // a list's values
}

// listField is a list column whose values are `item` (named "item" in Arrow).
func listField(name string, nullable bool, item field) field {
	item.name = "item"
	return field{name: name, format: formatList, nullable: nullable, item: &item}
}

// width is the bytes of one value of a fixed-width format (0: not fixed-width).
func width(format string) int {
	switch {
	case format == formatInt8:
		return 1
	case format == formatInt16:
		return 2
	case format == formatInt32 || format == formatFloat32 || format == formatDate32:
		return 4
	case format == formatInt64 || format == formatFloat64 || strings.HasPrefix(format, "ts"):
		return 8
	case strings.HasPrefix(format, "d:"):
		return 16
	}
	return 0
}

// column accumulates one column of a batch. The Append methods panic (a DATIVO_ERROR_PANIC
// naming the column) when a value does not fit the column's type: that is a bug in the reader.
type column struct {
	field
	nulls     []bool // per row: true = null
	nullCount int
	fixed     []byte  // fixed-width values, little-endian
	bools     []bool  // bool values
	offsets   []int32 // utf8, binary, list: where each row ends, after a leading 0
	data      []byte  // utf8, binary: the bytes
	item      *column // list: the values of every row
	precision int     // decimal
	scale     int     // decimal
}

func newColumn(f field) *column {
	c := &column{field: f, offsets: []int32{0}}
	switch {
	case strings.HasPrefix(f.format, "d:"):
		// The whole format: "d:12,2,256" would be a decimal256 of 32-byte values.
		_, err := fmt.Sscanf(f.format, "d:%d,%d", &c.precision, &c.scale)
		if err != nil || formatDecimal(c.precision, c.scale) != f.format ||
			c.precision < 1 || c.precision > 38 || c.scale < 0 || c.scale > c.precision {
			panic(fmt.Sprintf("column `%s`: %q is not a decimal128 format (formatDecimal(p, s))", f.name, f.format))
		}
	case width(f.format) > 0 && (!strings.HasPrefix(f.format, "ts") || strings.HasPrefix(f.format, "tsu:")):
	case f.format == formatBool || f.format == formatUTF8 || f.format == formatBinary || f.format == formatList:
	default:
		panic(fmt.Sprintf("column `%s`: format %q is not one arrow.go builds (see the README's table)", f.name, f.format))
	}
	if f.format == formatList {
		if f.item == nil {
			panic(fmt.Sprintf("column `%s`: a list needs its item field (listField)", f.name))
		}
		c.item = newColumn(*f.item)
	}
	return c
}

func newColumns() []*column {
	cols := make([]*column, len(schema))
	for i, f := range schema {
		cols[i] = newColumn(f)
	}
	return cols
}

func (c *column) rows() int { return len(c.nulls) }

func (c *column) mismatch(what string) {
	panic(fmt.Sprintf("column `%s` has format %q: %s does not fit it", c.name, c.format, what))
}

func (c *column) put(format string, what string, bits uint64) {
	if c.format != format {
		c.mismatch(what)
	}
	c.putFixed(bits)
}

func (c *column) putFixed(bits uint64) {
	for i := 0; i < width(c.format); i++ {
		c.fixed = append(c.fixed, byte(bits>>(8*i)))
	}
	c.nulls = append(c.nulls, false)
}

func (c *column) AppendInt8(v int8)   { c.put(formatInt8, "an int8", uint64(v)) }
func (c *column) AppendInt16(v int16) { c.put(formatInt16, "an int16", uint64(v)) }
func (c *column) AppendInt32(v int32) { c.put(formatInt32, "an int32", uint64(v)) }
func (c *column) AppendInt64(v int64) { c.put(formatInt64, "an int64", uint64(v)) }
func (c *column) AppendFloat32(v float32) {
	c.put(formatFloat32, "a float32", uint64(math.Float32bits(v)))
}
func (c *column) AppendFloat64(v float64) {
	c.put(formatFloat64, "a float64", math.Float64bits(v))
}

func (c *column) AppendBool(v bool) {
	if c.format != formatBool {
		c.mismatch("a bool")
	}
	c.bools, c.nulls = append(c.bools, v), append(c.nulls, false)
}

func (c *column) AppendString(s string) {
	if c.format != formatUTF8 {
		c.mismatch("a string")
	}
	c.appendData([]byte(s))
}

func (c *column) AppendBytes(b []byte) {
	if c.format != formatBinary {
		c.mismatch("bytes")
	}
	c.appendData(b)
}

func (c *column) appendData(b []byte) {
	c.data = append(c.data, b...)
	c.offsets, c.nulls = append(c.offsets, int32(len(c.data))), append(c.nulls, false)
}

// AppendDate appends t's calendar date (in t's own location).
func (c *column) AppendDate(t time.Time) {
	if c.format != formatDate32 {
		c.mismatch("a date")
	}
	y, m, d := t.Date()
	days := time.Date(y, m, d, 0, 0, 0, 0, time.UTC).Unix() / 86400
	c.putFixed(uint64(int32(days)))
}

// AppendTimestamp appends t in microseconds: the instant for a column with a zone, the wall
// clock time (t as if in UTC) for one without.
func (c *column) AppendTimestamp(t time.Time) {
	if !strings.HasPrefix(c.format, "tsu:") {
		c.mismatch("a timestamp (formatTimestamp)")
	}
	if c.format == "tsu:" {
		y, mo, d := t.Date()
		h, mi, s := t.Clock()
		t = time.Date(y, mo, d, h, mi, s, t.Nanosecond(), time.UTC)
	}
	c.putFixed(uint64(t.UnixMicro()))
}

// AppendDecimal appends a decimal given as text ("-1234.5", "0.07"): an error when it is not
// a number, has more fractional digits than the scale or more digits than the precision.
func (c *column) AppendDecimal(text string) error {
	if !strings.HasPrefix(c.format, "d:") {
		c.mismatch("a decimal")
	}
	s, neg := strings.TrimSpace(text), false
	if strings.HasPrefix(s, "-") || strings.HasPrefix(s, "+") {
		neg, s = s[0] == '-', s[1:]
	}
	whole, frac, _ := strings.Cut(s, ".")
	if whole == "" && frac == "" || len(frac) > c.scale || strings.Trim(whole+frac, "0123456789") != "" {
		return fmt.Errorf("column `%s`: %q is not a decimal with at most %d fractional digits", c.name, text, c.scale)
	}
	digits := strings.TrimLeft(whole+frac+strings.Repeat("0", c.scale-len(frac)), "0")
	if len(digits) > c.precision {
		return fmt.Errorf("column `%s`: %q has more than %d digits", c.name, text, c.precision)
	}
	v, _ := new(big.Int).SetString("0"+digits, 10)
	if neg {
		v.Neg(v)
	}
	c.appendInt128(v)
	return nil
}

// AppendDecimalUnscaled appends unscaled × 10^-scale (12345 with scale 2 is 123.45): an
// error when it has more digits than the precision.
func (c *column) AppendDecimalUnscaled(unscaled int64) error {
	if !strings.HasPrefix(c.format, "d:") {
		c.mismatch("a decimal")
	}
	v := big.NewInt(unscaled)
	limit := new(big.Int).Exp(big.NewInt(10), big.NewInt(int64(c.precision)), nil)
	if new(big.Int).Abs(v).Cmp(limit) >= 0 {
		return fmt.Errorf("column `%s`: %d (unscaled) has more than %d digits", c.name, unscaled, c.precision)
	}
	c.appendInt128(v)
	return nil
}

// appendInt128 appends v as 16 bytes of two's complement, little-endian.
func (c *column) appendInt128(v *big.Int) {
	var b [16]byte
	mag := new(big.Int).Abs(v).FillBytes(make([]byte, 16)) // big-endian magnitude
	for i := 0; i < 16; i++ {
		b[i] = mag[15-i]
	}
	if v.Sign() < 0 { // two's complement: invert and add one
		carry := true
		for i := range b {
			b[i] = ^b[i]
			if carry {
				b[i]++
				carry = b[i] == 0
			}
		}
	}
	c.fixed, c.nulls = append(c.fixed, b[:]...), append(c.nulls, false)
}

// Item is a list column's value column: append a row's values to it, then call EndList.
func (c *column) Item() *column {
	if c.item == nil {
		c.mismatch("a list")
	}
	return c.item
}

// EndList ends a list row: it holds the values appended to Item() since the previous row.
func (c *column) EndList() {
	if c.item == nil {
		c.mismatch("a list")
	}
	c.offsets, c.nulls = append(c.offsets, int32(c.item.rows())), append(c.nulls, false)
}

// AppendNull appends a null of any type (for a non-nullable column, dativo refuses the batch).
func (c *column) AppendNull() {
	switch {
	case c.format == formatBool:
		c.bools = append(c.bools, false)
	case c.format == formatUTF8 || c.format == formatBinary:
		c.offsets = append(c.offsets, int32(len(c.data)))
	case c.format == formatList:
		c.offsets = append(c.offsets, int32(c.item.rows()))
	default:
		c.fixed = append(c.fixed, make([]byte, width(c.format))...)
	}
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
		if !exportField(C.schema_child(out, C.int64_t(i)), f) {
			C.release_schema(out)
			return errNoMemory
		}
	}
	return nil
}

func exportField(s *C.struct_ArrowSchema, f field) bool {
	flags := C.int64_t(0)
	if f.nullable {
		flags = C.ARROW_FLAG_NULLABLE
	}
	children := 0
	if f.item != nil {
		children = 1
	}
	if C.schema_init(s, C.CString(f.format), C.CString(f.name), flags, C.int64_t(children)) == 0 {
		return false
	}
	return f.item == nil || exportField(C.schema_child(s, 0), *f.item)
}

// exportBatch fills out with a struct array ("+s", no top-level nulls) of the columns.
func exportBatch(out *C.struct_ArrowArray, cols []*column) error {
	if C.array_init(out, C.int64_t(cols[0].rows()), 0, 1, C.int64_t(len(cols))) == 0 {
		C.release_array(out)
		return errNoMemory
	}
	for i, c := range cols {
		if c.rows() != cols[0].rows() {
			C.release_array(out)
			return fmt.Errorf("{{name}}: column `%s` has %d rows, column `%s` %d", c.name, c.rows(), cols[0].name, cols[0].rows())
		}
		if !exportColumn(C.array_child(out, C.int64_t(i)), c) {
			C.release_array(out)
			return errNoMemory
		}
	}
	return nil
}

func exportColumn(a *C.struct_ArrowArray, c *column) bool {
	n := c.rows()
	nBuffers, nChildren := 2, 0 // validity, values
	switch c.format {
	case formatUTF8, formatBinary:
		nBuffers = 3 // validity, offsets, data
	case formatList:
		nChildren = 1 // validity, offsets; the values
	}
	if C.array_init(a, C.int64_t(n), C.int64_t(c.nullCount), C.int64_t(nBuffers), C.int64_t(nChildren)) == 0 {
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
	case formatBool:
		bits := cBuffer[byte](a, 1, (n+7)/8)
		if bits == nil {
			return false
		}
		for row, v := range c.bools {
			if v {
				bits[row/8] |= 1 << (row % 8)
			}
		}
	case formatUTF8, formatBinary:
		offsets, data := cBuffer[int32](a, 1, n+1), cBuffer[byte](a, 2, len(c.data))
		if offsets == nil || data == nil {
			return false
		}
		copy(offsets, c.offsets)
		copy(data, c.data)
	case formatList:
		offsets := cBuffer[int32](a, 1, n+1)
		if offsets == nil {
			return false
		}
		copy(offsets, c.offsets)
		return exportColumn(C.array_child(a, 0), c.item)
	default:
		values := cBuffer[byte](a, 1, len(c.fixed))
		if values == nil {
			return false
		}
		copy(values, c.fixed)
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
