package main

// The reader itself, in plain Go: configuration, the record scanner, field parsing and the
// column builders. Nothing here touches C; arrow.go turns the columns into Arrow C structs.

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"sort"
	"strconv"
	"strings"
	"unicode/utf8"
)

// Status codes of dativo_plugin.h.
const (
	codeOK     = 0
	codeError  = 1
	codeConfig = 3
	codePanic  = 5
)

// pluginError carries a dativo status code with its message.
type pluginError struct {
	code int
	msg  string
}

func (e *pluginError) Error() string { return e.msg }

func configErr(format string, args ...interface{}) error {
	return &pluginError{codeConfig, fmt.Sprintf(format, args...)}
}

func dataErr(format string, args ...interface{}) error {
	return &pluginError{codeError, fmt.Sprintf(format, args...)}
}

// ---- configuration ----

type fieldType int

const (
	typeInt64 fieldType = iota
	typeString
	typeDecimal
)

type field struct {
	name   string
	start  int
	length int
	typ    fieldType
	scale  int // decimal only
}

type config struct {
	path         string
	recordLength int // 0: newline-terminated records
	fields       []field
	batchSize    int
	ebcdic       bool
}

const (
	defaultBatchSize = 8192
	maxDecimalDigits = 18 // decimal128 "d:18,scale": every value fits an int64
)

// object decodes a JSON object, keeping numbers exact.
func object(raw []byte, path string) (map[string]json.RawMessage, error) {
	var m map[string]json.RawMessage
	if err := json.Unmarshal(raw, &m); err != nil || m == nil {
		return nil, configErr("%s: expected a mapping, got %s", path, describe(raw))
	}
	return m, nil
}

// rejectUnknown fails on the first (sorted) key of m not in allowed.
func rejectUnknown(m map[string]json.RawMessage, path string, allowed ...string) error {
	var unknown []string
	for k := range m {
		if !contains(allowed, k) {
			unknown = append(unknown, k)
		}
	}
	if len(unknown) == 0 {
		return nil
	}
	sort.Strings(unknown)
	return configErr("%s.%s: unknown key (expected one of %s)", path, unknown[0], strings.Join(allowed, ", "))
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// present reports whether key is set to something other than null.
func present(m map[string]json.RawMessage, key string) bool {
	v, ok := m[key]
	return ok && string(bytes.TrimSpace(v)) != "null"
}

// describe shows a JSON value in an error message, shortened.
func describe(raw []byte) string {
	s := string(bytes.TrimSpace(raw))
	if s == "" {
		return "nothing"
	}
	if len(s) > 40 {
		s = s[:37] + "..."
	}
	return s
}

func getString(m map[string]json.RawMessage, key, path string) (string, error) {
	var s string
	if err := json.Unmarshal(m[key], &s); err != nil {
		return "", configErr("%s: expected a string, got %s", path, describe(m[key]))
	}
	return s, nil
}

func getInt(m map[string]json.RawMessage, key, path string, min int) (int, error) {
	raw := m[key]
	var n json.Number
	if err := json.Unmarshal(raw, &n); err != nil || bytes.HasPrefix(bytes.TrimSpace(raw), []byte(`"`)) {
		return 0, configErr("%s: expected an integer, got %s", path, describe(raw))
	}
	v, err := strconv.ParseInt(string(n), 10, 64)
	if err != nil || v > math.MaxInt32 {
		return 0, configErr("%s: expected an integer, got %s", path, describe(raw))
	}
	if v < int64(min) {
		return 0, configErr("%s: must be at least %d, got %d", path, min, v)
	}
	return int(v), nil
}

// parseConfig validates the job's source.config. Every error names its key.
func parseConfig(raw []byte) (*config, error) {
	m, err := object(raw, "config")
	if err != nil {
		return nil, err
	}
	if err := rejectUnknown(m, "config", "path", "record_length", "fields", "batch_size", "encoding"); err != nil {
		return nil, err
	}
	c := &config{batchSize: defaultBatchSize}

	if !present(m, "path") {
		return nil, configErr("config.path: required (the fixed-width file to read)")
	}
	if c.path, err = getString(m, "path", "config.path"); err != nil {
		return nil, err
	}
	if c.path == "" {
		return nil, configErr("config.path: must not be empty")
	}
	if present(m, "record_length") {
		if c.recordLength, err = getInt(m, "record_length", "config.record_length", 1); err != nil {
			return nil, err
		}
	}
	if present(m, "batch_size") {
		if c.batchSize, err = getInt(m, "batch_size", "config.batch_size", 1); err != nil {
			return nil, err
		}
	}
	if present(m, "encoding") {
		enc, err := getString(m, "encoding", "config.encoding")
		if err != nil {
			return nil, err
		}
		switch strings.ToLower(enc) {
		case "ascii":
		case "ebcdic":
			c.ebcdic = true
		default:
			return nil, configErr("config.encoding: expected ascii or ebcdic, got %q", enc)
		}
	}

	if !present(m, "fields") {
		return nil, configErr("config.fields: required (a list of {name, start, length, type})")
	}
	var list []json.RawMessage
	if err := json.Unmarshal(m["fields"], &list); err != nil {
		return nil, configErr("config.fields: expected a list, got %s", describe(m["fields"]))
	}
	if len(list) == 0 {
		return nil, configErr("config.fields: must list at least one field")
	}
	seen := map[string]int{}
	for i, item := range list {
		path := fmt.Sprintf("config.fields[%d]", i)
		f, err := parseField(item, path, c.recordLength)
		if err != nil {
			return nil, err
		}
		if j, dup := seen[f.name]; dup {
			return nil, configErr("%s.name: duplicate field name `%s` (also config.fields[%d])", path, f.name, j)
		}
		seen[f.name] = i
		c.fields = append(c.fields, f)
	}
	return c, nil
}

func parseField(raw []byte, path string, recordLength int) (field, error) {
	var f field
	m, err := object(raw, path)
	if err != nil {
		return f, err
	}
	if err := rejectUnknown(m, path, "name", "start", "length", "type", "scale"); err != nil {
		return f, err
	}
	for _, k := range []string{"name", "start", "length", "type"} {
		if !present(m, k) {
			return f, configErr("%s.%s: required", path, k)
		}
	}
	if f.name, err = getString(m, "name", path+".name"); err != nil {
		return f, err
	}
	if f.name == "" {
		return f, configErr("%s.name: must not be empty", path)
	}
	if f.start, err = getInt(m, "start", path+".start", 0); err != nil {
		return f, err
	}
	if f.length, err = getInt(m, "length", path+".length", 1); err != nil {
		return f, err
	}
	if recordLength > 0 && f.start+f.length > recordLength {
		return f, configErr("%s: start + length = %d is past record_length %d", path, f.start+f.length, recordLength)
	}
	var typ string
	if err := json.Unmarshal(m["type"], &typ); err != nil {
		return f, configErr("%s.type: expected int64, string or decimal, got %s", path, describe(m["type"]))
	}
	switch typ {
	case "int64":
		f.typ = typeInt64
	case "string":
		f.typ = typeString
	case "decimal":
		f.typ = typeDecimal
	default:
		return f, configErr("%s.type: expected int64, string or decimal, got %q", path, typ)
	}
	if f.typ == typeDecimal {
		if !present(m, "scale") {
			return f, configErr("%s.scale: required for type decimal (digits after the decimal point)", path)
		}
		if f.scale, err = getInt(m, "scale", path+".scale", 0); err != nil {
			return f, err
		}
		if f.scale > maxDecimalDigits {
			return f, configErr("%s.scale: must be at most %d, got %d", path, maxDecimalDigits, f.scale)
		}
	} else if present(m, "scale") {
		return f, configErr("%s.scale: only valid with type decimal", path)
	}
	return f, nil
}

// parseState reads context.state: null (start at the beginning) or {"offset": N}.
func parseState(contextJSON []byte) (offset int64, has bool, err error) {
	if len(bytes.TrimSpace(contextJSON)) == 0 {
		return 0, false, nil
	}
	var ctx struct {
		State json.RawMessage `json:"state"`
		Shard *struct {
			Index int `json:"index"`
			Count int `json:"count"`
		} `json:"shard"`
	}
	if err := json.Unmarshal(contextJSON, &ctx); err != nil {
		return 0, false, dataErr("context: invalid JSON: %v", err)
	}
	if ctx.Shard != nil && ctx.Shard.Count > 1 {
		return 0, false, configErr("context.shard: this reader reads one file sequentially and cannot be split (count %d)", ctx.Shard.Count)
	}
	if len(ctx.State) == 0 || string(bytes.TrimSpace(ctx.State)) == "null" {
		return 0, false, nil
	}
	bad := dataErr(`context.state: expected {"offset": <byte offset>} or null, got %s`, describe(ctx.State))
	var st map[string]json.RawMessage
	if json.Unmarshal(ctx.State, &st) != nil || st == nil || len(st) != 1 {
		return 0, false, bad
	}
	var n json.Number
	if json.Unmarshal(st["offset"], &n) != nil || bytes.HasPrefix(bytes.TrimSpace(st["offset"]), []byte(`"`)) {
		return 0, false, bad
	}
	v, perr := strconv.ParseInt(string(n), 10, 64)
	if perr != nil || v < 0 {
		return 0, false, bad
	}
	return v, true, nil
}

// ---- the record scanner ----

// scanner hands out records from a file: fixed-length records, or lines. A record's bytes are
// valid until the next call.
type scanner struct {
	r            io.Reader
	recordLength int
	ebcdic       bool
	buf          []byte
	lo, hi       int
	eof          bool
	pos          int64 // file offset of buf[lo]
}

func newScanner(r io.Reader, offset int64, recordLength int, ebcdic bool) *scanner {
	size := 1 << 16
	if recordLength > size {
		size = recordLength
	}
	return &scanner{r: r, recordLength: recordLength, ebcdic: ebcdic, buf: make([]byte, size), pos: offset}
}

// fill reads more of the file, moving what is left to the front and growing buf when it is full.
func (s *scanner) fill() error {
	if s.lo > 0 {
		copy(s.buf, s.buf[s.lo:s.hi])
		s.hi -= s.lo
		s.lo = 0
	}
	if s.hi == len(s.buf) {
		bigger := make([]byte, 2*len(s.buf))
		copy(bigger, s.buf[:s.hi])
		s.buf = bigger
	}
	n, err := s.r.Read(s.buf[s.hi:])
	s.hi += n
	if err == io.EOF {
		s.eof = true
		return nil
	}
	return err
}

// indexNewline finds the first record terminator: LF, or in EBCDIC files LF (0x25) or NL (0x15,
// as z/OS writes text files).
func (s *scanner) indexNewline(b []byte) int {
	if !s.ebcdic {
		return bytes.IndexByte(b, '\n')
	}
	for i, c := range b {
		if c == 0x25 || c == 0x15 {
			return i
		}
	}
	return -1
}

// trimCR drops a trailing carriage return (0x0D in ASCII and EBCDIC alike).
func trimCR(rec []byte) []byte {
	if len(rec) > 0 && rec[len(rec)-1] == '\r' {
		return rec[:len(rec)-1]
	}
	return rec
}

// next returns the next record, its byte offset, and the offset just past it (after its
// newline); rec == nil at the end of the file. Newline mode drops a trailing CR and skips empty
// lines; a last line without a newline is a record.
func (s *scanner) next() (rec []byte, start, end int64, err error) {
	for {
		if s.recordLength > 0 {
			if s.hi-s.lo >= s.recordLength {
				rec = s.buf[s.lo : s.lo+s.recordLength]
				start = s.pos
				s.lo += s.recordLength
				s.pos += int64(s.recordLength)
				return rec, start, s.pos, nil
			}
			if s.eof {
				if s.hi > s.lo {
					return nil, 0, 0, dataErr("the file ends with a partial record: %d bytes at byte offset %d (record_length %d)",
						s.hi-s.lo, s.pos, s.recordLength)
				}
				return nil, s.pos, s.pos, nil
			}
		} else {
			if i := s.indexNewline(s.buf[s.lo:s.hi]); i >= 0 {
				rec, start = s.buf[s.lo:s.lo+i], s.pos
				s.lo += i + 1
				s.pos += int64(i + 1)
				if rec = trimCR(rec); len(rec) == 0 {
					continue // an empty line
				}
				return rec, start, s.pos, nil
			}
			if s.eof {
				// The last line has no newline: it is a record all the same.
				rec, start = trimCR(s.buf[s.lo:s.hi]), s.pos
				s.pos += int64(s.hi - s.lo)
				s.lo = s.hi
				if len(rec) > 0 {
					return rec, start, s.pos, nil
				}
				return nil, s.pos, s.pos, nil
			}
		}
		if err := s.fill(); err != nil {
			return nil, 0, 0, &pluginError{codeError, fmt.Sprintf("reading at byte offset %d: %v", s.pos+int64(s.hi-s.lo), err)}
		}
	}
}

// ---- decoding and parsing fields ----

// cp037 maps each EBCDIC (IBM code page 037) byte to its Unicode code point, which for this
// code page is always in Latin-1 (U+0000..U+00FF); the ASCII range comes out as ASCII.
var cp037 = [256]byte{
	0x00, 0x01, 0x02, 0x03, 0x9C, 0x09, 0x86, 0x7F, 0x97, 0x8D, 0x8E, 0x0B, 0x0C, 0x0D, 0x0E, 0x0F, // 0x00
	0x10, 0x11, 0x12, 0x13, 0x9D, 0x85, 0x08, 0x87, 0x18, 0x19, 0x92, 0x8F, 0x1C, 0x1D, 0x1E, 0x1F, // 0x10
	0x80, 0x81, 0x82, 0x83, 0x84, 0x0A, 0x17, 0x1B, 0x88, 0x89, 0x8A, 0x8B, 0x8C, 0x05, 0x06, 0x07, // 0x20
	0x90, 0x91, 0x16, 0x93, 0x94, 0x95, 0x96, 0x04, 0x98, 0x99, 0x9A, 0x9B, 0x14, 0x15, 0x9E, 0x1A, // 0x30
	0x20, 0xA0, 0xE2, 0xE4, 0xE0, 0xE1, 0xE3, 0xE5, 0xE7, 0xF1, 0xA2, 0x2E, 0x3C, 0x28, 0x2B, 0x7C, // 0x40
	0x26, 0xE9, 0xEA, 0xEB, 0xE8, 0xED, 0xEE, 0xEF, 0xEC, 0xDF, 0x21, 0x24, 0x2A, 0x29, 0x3B, 0xAC, // 0x50
	0x2D, 0x2F, 0xC2, 0xC4, 0xC0, 0xC1, 0xC3, 0xC5, 0xC7, 0xD1, 0xA6, 0x2C, 0x25, 0x5F, 0x3E, 0x3F, // 0x60
	0xF8, 0xC9, 0xCA, 0xCB, 0xC8, 0xCD, 0xCE, 0xCF, 0xCC, 0x60, 0x3A, 0x23, 0x40, 0x27, 0x3D, 0x22, // 0x70
	0xD8, 0x61, 0x62, 0x63, 0x64, 0x65, 0x66, 0x67, 0x68, 0x69, 0xAB, 0xBB, 0xF0, 0xFD, 0xFE, 0xB1, // 0x80
	0xB0, 0x6A, 0x6B, 0x6C, 0x6D, 0x6E, 0x6F, 0x70, 0x71, 0x72, 0xAA, 0xBA, 0xE6, 0xB8, 0xC6, 0xA4, // 0x90
	0xB5, 0x7E, 0x73, 0x74, 0x75, 0x76, 0x77, 0x78, 0x79, 0x7A, 0xA1, 0xBF, 0xD0, 0xDD, 0xDE, 0xAE, // 0xA0
	0x5E, 0xA3, 0xA5, 0xB7, 0xA9, 0xA7, 0xB6, 0xBC, 0xBD, 0xBE, 0x5B, 0x5D, 0xAF, 0xA8, 0xB4, 0xD7, // 0xB0
	0x7B, 0x41, 0x42, 0x43, 0x44, 0x45, 0x46, 0x47, 0x48, 0x49, 0xAD, 0xF4, 0xF6, 0xF2, 0xF3, 0xF5, // 0xC0
	0x7D, 0x4A, 0x4B, 0x4C, 0x4D, 0x4E, 0x4F, 0x50, 0x51, 0x52, 0xB9, 0xFB, 0xFC, 0xF9, 0xFA, 0xFF, // 0xD0
	0x5C, 0xF7, 0x53, 0x54, 0x55, 0x56, 0x57, 0x58, 0x59, 0x5A, 0xB2, 0xD4, 0xD6, 0xD2, 0xD3, 0xD5, // 0xE0
	0x30, 0x31, 0x32, 0x33, 0x34, 0x35, 0x36, 0x37, 0x38, 0x39, 0xB3, 0xDB, 0xDC, 0xD9, 0xDA, 0x9F, // 0xF0
}

// decode turns a field's bytes into UTF-8 text: EBCDIC through cp037, ASCII as is (it must then
// be valid UTF-8, which ASCII always is).
func decode(raw []byte, ebcdic bool, scratch *[]byte) (string, bool) {
	if !ebcdic {
		return string(raw), utf8.Valid(raw)
	}
	out := (*scratch)[:0]
	for _, b := range raw {
		c := cp037[b]
		if c < 0x80 {
			out = append(out, c)
		} else {
			out = append(out, 0xC0|c>>6, 0x80|c&0x3F) // U+0080..U+00FF in UTF-8
		}
	}
	*scratch = out
	return string(out), true
}

// parseDecimal reads a decimal as its unscaled integer at `scale`. Without a decimal point the
// digits are the unscaled value (the mainframe's implied decimal point: "00012345" at scale 2 is
// 123.45); with one they are the value itself ("-12.34"). A sign may lead or trail.
func parseDecimal(s string, scale int) (int64, string) {
	neg := false
	switch {
	case strings.HasPrefix(s, "-"), strings.HasPrefix(s, "+"):
		neg, s = s[0] == '-', s[1:]
	case strings.HasSuffix(s, "-"), strings.HasSuffix(s, "+"):
		neg, s = s[len(s)-1] == '-', s[:len(s)-1]
	}
	intPart, frac, point := s, "", false
	if i := strings.IndexByte(s, '.'); i >= 0 {
		intPart, frac, point = s[:i], s[i+1:], true
	}
	if intPart+frac == "" || !allDigits(intPart) || !allDigits(frac) {
		return 0, "is not a number"
	}
	if point {
		if len(frac) > scale {
			return 0, fmt.Sprintf("has more than %d digits after the decimal point", scale)
		}
		frac += strings.Repeat("0", scale-len(frac))
	}
	digits := strings.TrimLeft(intPart+frac, "0")
	if len(digits) > maxDecimalDigits {
		return 0, fmt.Sprintf("does not fit in decimal(%d,%d)", maxDecimalDigits, scale)
	}
	var v int64
	for i := 0; i < len(digits); i++ {
		v = v*10 + int64(digits[i]-'0')
	}
	if neg {
		v = -v
	}
	return v, ""
}

func allDigits(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

// ---- columns ----

// column accumulates one field's values for a batch.
type column struct {
	null    []bool
	nulls   int
	ints    []int64 // int64 values, or unscaled decimals
	offsets []int32 // strings: n+1 offsets into data
	data    []byte
}

func newColumn(f *field, capacity int) *column {
	c := &column{null: make([]bool, 0, capacity)}
	if f.typ == typeString {
		c.offsets = append(make([]int32, 0, capacity+1), 0)
	} else {
		c.ints = make([]int64, 0, capacity)
	}
	return c
}

func (c *column) appendNull(f *field) {
	c.null = append(c.null, true)
	c.nulls++
	if f.typ == typeString {
		c.offsets = append(c.offsets, int32(len(c.data)))
	} else {
		c.ints = append(c.ints, 0)
	}
}

// ---- the reader ----

type reader struct {
	cfg      *config
	file     *os.File
	scan     *scanner
	closed   bool
	failed   error
	offset   int64 // just past the last record returned
	hasState bool
	record   int64 // records seen so far (for messages), see recordBase
	// recordBase is true when `record` counts from the start of the file (always with
	// record_length, or when reading started at offset 0); otherwise it counts from the offset
	// the reader resumed at, and messages say so.
	recordBase bool
	scratch    []byte
}

func (r *reader) initialize(configJSON, contextJSON []byte) error {
	if r.cfg != nil {
		return dataErr("initialize was already called on this reader")
	}
	if r.closed {
		return dataErr("the reader is closed")
	}
	cfg, err := parseConfig(configJSON)
	if err != nil {
		return err
	}
	offset, has, err := parseState(contextJSON)
	if err != nil {
		return err
	}
	f, err := os.Open(cfg.path)
	if err != nil {
		return dataErr("config.path: %v", err)
	}
	st, err := f.Stat()
	if err != nil || !st.Mode().IsRegular() {
		f.Close()
		return dataErr("config.path: `%s` is not a regular file", cfg.path)
	}
	if offset > st.Size() {
		f.Close()
		return dataErr("state offset %d is past the end of `%s` (%d bytes): was the file replaced?", offset, cfg.path, st.Size())
	}
	if cfg.recordLength > 0 && offset%int64(cfg.recordLength) != 0 {
		f.Close()
		return dataErr("state offset %d is not a multiple of record_length %d: was record_length changed?", offset, cfg.recordLength)
	}
	if _, err := f.Seek(offset, io.SeekStart); err != nil {
		f.Close()
		return dataErr("config.path: seeking to %d: %v", offset, err)
	}
	r.cfg, r.file = cfg, f
	r.scan = newScanner(f, offset, cfg.recordLength, cfg.ebcdic)
	r.offset, r.hasState = offset, has
	r.recordBase = offset == 0 || cfg.recordLength > 0
	if cfg.recordLength > 0 {
		r.record = offset / int64(cfg.recordLength)
	}
	return nil
}

func (r *reader) ready() error {
	switch {
	case r.closed:
		return dataErr("the reader is closed")
	case r.cfg == nil:
		return dataErr("initialize has not succeeded on this reader")
	case r.failed != nil:
		return dataErr("an earlier read_batch failed: %v", r.failed)
	}
	return nil
}

// readBatch reads up to batch_size records into columns; n == 0 at the end of the file. On
// success the reader's state moves past the batch; on failure it stays before it.
func (r *reader) readBatch() (cols []*column, n int, err error) {
	if err := r.ready(); err != nil {
		return nil, 0, err
	}
	cfg := r.cfg
	capacity := cfg.batchSize
	if capacity > 4096 {
		capacity = 4096 // grow past this only when the file actually has the records
	}
	cols = make([]*column, len(cfg.fields))
	for i := range cfg.fields {
		cols[i] = newColumn(&cfg.fields[i], capacity)
	}
	var end int64
	for n < cfg.batchSize {
		rec, start, recEnd, err := r.scan.next()
		if err != nil {
			r.failed = err
			return nil, 0, err
		}
		if rec == nil {
			break
		}
		r.record++
		if err := r.appendRecord(cols, rec, start); err != nil {
			r.failed = err
			return nil, 0, err
		}
		n++
		end = recEnd
	}
	if n > 0 {
		r.offset, r.hasState = end, true
	}
	return cols, n, nil
}

func (r *reader) appendRecord(cols []*column, rec []byte, start int64) error {
	for i := range r.cfg.fields {
		f, c := &r.cfg.fields[i], cols[i]
		// A short line (newline mode) is padded with blanks: missing bytes are spaces.
		var raw []byte
		if f.start < len(rec) {
			hi := f.start + f.length
			if hi > len(rec) {
				hi = len(rec)
			}
			raw = rec[f.start:hi]
		}
		text, ok := decode(raw, r.cfg.ebcdic, &r.scratch)
		if !ok {
			return r.fieldErr(start, f, fmt.Sprintf("%q is not valid ASCII/UTF-8 (is the file EBCDIC? set encoding: ebcdic)", raw))
		}
		switch f.typ {
		case typeString:
			text = strings.TrimRight(text, " ")
			if text == "" {
				c.appendNull(f)
				continue
			}
			c.data = append(c.data, text...)
			if len(c.data) > math.MaxInt32 {
				return r.fieldErr(start, f, "the batch's strings exceed 2 GiB; lower batch_size")
			}
			c.null = append(c.null, false)
			c.offsets = append(c.offsets, int32(len(c.data)))
		case typeInt64:
			text = strings.Trim(text, " ")
			if text == "" {
				c.appendNull(f)
				continue
			}
			v, err := strconv.ParseInt(text, 10, 64)
			if err != nil {
				what := "is not a number"
				if errors.Is(err, strconv.ErrRange) {
					what = "does not fit in int64"
				}
				return r.fieldErr(start, f, fmt.Sprintf("`%s` %s", text, what))
			}
			c.null = append(c.null, false)
			c.ints = append(c.ints, v)
		case typeDecimal:
			text = strings.Trim(text, " ")
			if text == "" {
				c.appendNull(f)
				continue
			}
			v, problem := parseDecimal(text, f.scale)
			if problem != "" {
				return r.fieldErr(start, f, fmt.Sprintf("`%s` %s", text, problem))
			}
			c.null = append(c.null, false)
			c.ints = append(c.ints, v)
		}
	}
	return nil
}

func (r *reader) fieldErr(start int64, f *field, what string) error {
	which := fmt.Sprintf("record %d", r.record)
	if !r.recordBase {
		which = fmt.Sprintf("record %d after the resume point", r.record)
	}
	return dataErr("%s (byte offset %d): field `%s`: %s", which, start, f.name, what)
}

// state is the JSON of the incremental state, or "" for none.
func (r *reader) state() (string, error) {
	if r.closed {
		return "", dataErr("the reader is closed")
	}
	if !r.hasState {
		return "", nil
	}
	return fmt.Sprintf(`{"offset":%d}`, r.offset), nil
}

func (r *reader) close() error {
	if r.closed {
		return nil
	}
	r.closed = true
	if r.file != nil {
		err := r.file.Close()
		r.file, r.scan = nil, nil
		if err != nil {
			return dataErr("closing `%s`: %v", r.cfg.path, err)
		}
	}
	return nil
}
