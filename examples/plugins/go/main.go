// Command fixedwidth is a dativo native plugin written in Go: a reader for fixed-width record
// files such as mainframe dumps (ASCII or EBCDIC cp037), built as a C shared library:
//
//	CGO_ENABLED=1 go build -buildmode=c-shared -o libdativo_go_fixedwidth.so .
//
// The ABI is crates/dativo-plugin-sdk/include/dativo_plugin.h: one exported symbol,
// dativo_plugin_init, fills a table of C function pointers (arrow.go); those call the //export
// functions below. Data crosses as Arrow C Data Interface structs in C memory (arrow.go),
// configuration / context / state as JSON strings. The reader logic is plain Go (reader.go).
package main

/*
#cgo CFLAGS: -I${SRCDIR}/../../../crates/dativo-plugin-sdk/include
#include <stdint.h>
#include <stdlib.h>
#include "dativo_plugin.h"

struct DativoReader { uint64_t id; };
*/
import "C"

import (
	"errors"
	"fmt"
	"sync"
)

// manifest is returned by dativo_plugin_init (as a C string that lives for the whole process).
const manifest = `{"name": "go_fixedwidth", "version": "0.1.0", ` +
	`"description": "Fixed-width record files (mainframe dumps, ASCII or EBCDIC cp037), written in Go", ` +
	`"readers": [{"name": "fixedwidth", "description": "Fixed-width records (newline-terminated or record_length bytes) into int64, string and decimal columns; resumes from a byte offset"}], ` +
	`"writers": []}`

func main() {} // required by -buildmode=c-shared; never runs

// Instances: dativo holds a C-allocated handle carrying an id; the Go reader lives in this table.
// The mutex guards the map only: the header promises one thread per instance at a time.
var (
	instancesMu sync.Mutex
	instances   = map[uint64]*reader{}
	nextID      uint64
)

func lookup(h *C.DativoReader) (*reader, error) {
	if h == nil {
		return nil, errors.New("the reader handle is NULL")
	}
	id := handleID(h)
	instancesMu.Lock()
	defer instancesMu.Unlock()
	r, ok := instances[id]
	if !ok {
		return nil, fmt.Errorf("unknown reader handle %d (already freed?)", id)
	}
	return r, nil
}

// status turns an error into a dativo status code, recording its message as the thread's last
// error.
func status(err error) C.int {
	if err == nil {
		return codeOK
	}
	setLastError(err.Error())
	var pe *pluginError
	if errors.As(err, &pe) {
		return C.int(pe.code)
	}
	return codeError
}

// catch turns a panic into DATIVO_ERROR_PANIC: a Go panic must never unwind into the host.
// Deferred directly in every export.
func catch(rc *C.int, op string) {
	if p := recover(); p != nil {
		setLastError(fmt.Sprintf("go_fixedwidth: panic in %s: %v", op, p))
		*rc = codePanic
	}
}

//export dativo_plugin_init
func dativo_plugin_init(hostABIVersion C.uint32_t, out *C.DativoPlugin) (rc C.int) {
	defer catch(&rc, "dativo_plugin_init")
	if out == nil {
		return status(errors.New("dativo_plugin_init: out is NULL"))
	}
	if hostABIVersion < 1 {
		return status(fmt.Errorf("host ABI version %d is not supported (this plugin implements version %d)",
			uint32(hostABIVersion), C.DATIVO_PLUGIN_ABI_VERSION))
	}
	// ABI 1 is the first version: the table we fill is the one every ABI >= 1 host knows.
	fillPluginTable(out)
	return codeOK
}

//export fixedwidth_reader_new
func fixedwidth_reader_new(name *C.char) (h *C.DativoReader) {
	defer func() {
		if p := recover(); p != nil {
			setLastError(fmt.Sprintf("go_fixedwidth: panic in reader_new: %v", p))
			h = nil
		}
	}()
	if name == nil || C.GoString(name) != "fixedwidth" {
		n := "(null)"
		if name != nil {
			n = C.GoString(name)
		}
		setLastError(fmt.Sprintf("go_fixedwidth has no reader `%s` (it has: fixedwidth)", n))
		return nil
	}
	instancesMu.Lock()
	defer instancesMu.Unlock()
	nextID++
	h = newHandle(nextID)
	if h == nil {
		setLastError("go_fixedwidth: out of memory")
		return nil
	}
	instances[nextID] = &reader{}
	return h
}

//export fixedwidth_reader_initialize
func fixedwidth_reader_initialize(h *C.DativoReader, configJSON, contextJSON *C.char) (rc C.int) {
	defer catch(&rc, "reader_initialize")
	r, err := lookup(h)
	if err != nil {
		return status(err)
	}
	if configJSON == nil {
		return status(configErr("config: missing (NULL)"))
	}
	var ctx []byte
	if contextJSON != nil {
		ctx = []byte(C.GoString(contextJSON))
	}
	return status(r.initialize([]byte(C.GoString(configJSON)), ctx))
}

//export fixedwidth_reader_get_schema
func fixedwidth_reader_get_schema(h *C.DativoReader, out *C.struct_ArrowSchema) (rc C.int) {
	defer catch(&rc, "reader_get_schema")
	r, err := lookup(h)
	if err != nil {
		return status(err)
	}
	if out == nil {
		return status(errors.New("get_schema: out is NULL"))
	}
	out.release = nil
	if r.cfg == nil {
		return status(dataErr("initialize has not succeeded on this reader"))
	}
	return status(exportSchema(r.cfg.fields, out))
}

//export fixedwidth_reader_read_batch
func fixedwidth_reader_read_batch(h *C.DativoReader, out *C.struct_ArrowArray, outSchema *C.struct_ArrowSchema) (rc C.int) {
	defer catch(&rc, "reader_read_batch")
	r, err := lookup(h)
	if err != nil {
		return status(err)
	}
	if out == nil {
		return status(errors.New("read_batch: out is NULL"))
	}
	out.release = nil
	if outSchema != nil {
		outSchema.release = nil
	}
	cols, n, err := r.readBatch()
	if err != nil || n == 0 {
		return status(err) // n == 0: end of stream, out->release stays NULL
	}
	if outSchema != nil {
		if err := exportSchema(r.cfg.fields, outSchema); err != nil {
			return status(err)
		}
	}
	if err := exportBatch(r.cfg.fields, cols, n, out); err != nil {
		if outSchema != nil {
			releaseSchema(outSchema)
		}
		return status(err)
	}
	return codeOK
}

//export fixedwidth_reader_get_incremental_state
func fixedwidth_reader_get_incremental_state(h *C.DativoReader, outJSON **C.char) (rc C.int) {
	defer catch(&rc, "reader_get_incremental_state")
	r, err := lookup(h)
	if err != nil {
		return status(err)
	}
	if outJSON == nil {
		return status(errors.New("get_incremental_state: out_json is NULL"))
	}
	*outJSON = nil
	s, err := r.state()
	if err != nil || s == "" {
		return status(err)
	}
	*outJSON = C.CString(s) // freed by dativo through free_string
	return codeOK
}

//export fixedwidth_reader_close
func fixedwidth_reader_close(h *C.DativoReader) (rc C.int) {
	defer catch(&rc, "reader_close")
	r, err := lookup(h)
	if err != nil {
		return status(err)
	}
	return status(r.close())
}

//export fixedwidth_reader_free
func fixedwidth_reader_free(h *C.DativoReader) {
	defer func() {
		if p := recover(); p != nil {
			setLastError(fmt.Sprintf("go_fixedwidth: panic in reader_free: %v", p))
		}
	}()
	if h == nil {
		return
	}
	id := handleID(h)
	instancesMu.Lock()
	r := instances[id]
	delete(instances, id)
	instancesMu.Unlock()
	if r != nil {
		_ = r.close() // in case dativo skipped close
	}
	freeHandle(h)
}
