/*
 * dativo_plugin.h — the native plugin ABI of dativo, version 1.
 *
 * A plugin is a shared library (.so / .dylib / .dll) written in any language that can export a
 * C function: Rust (cdylib, use the dativo-plugin-sdk crate), C, C++, Go (-buildmode=c-shared),
 * Zig... It exports ONE symbol:
 *
 *     int dativo_plugin_init(uint32_t host_abi_version, DativoPlugin *out);
 *
 * which fills `out` with a manifest and function pointers, and returns DATIVO_OK. Data moves
 * through the Arrow C Data Interface (zero copy); configuration, context, state and reports are
 * UTF-8 JSON strings. The pattern is ADBC's driver-init: the table is versioned and append-only,
 * so a newer host can load an older plugin and vice versa (fields past `struct_size` are absent).
 *
 * The methods are the same five for readers (initialize, get_schema, read_batch,
 * get_incremental_state, close) and the writer's (initialize, write_batch, finalize, abort, close,
 * committed_state) in every dativo plugin language; see docs/plugins.md.
 *
 * Rules
 *  - Every int-returning function returns DATIVO_OK (0) or an error code below. On error the
 *    plugin sets a message retrievable with last_error() on the same thread, until its next call.
 *  - One instance (DativoReader / DativoWriter) is used by one thread at a time; different
 *    instances may run on different threads at once.
 *  - Strings returned through `char **out_json` are allocated by the plugin and given back to it
 *    through free_string(). Strings passed in are owned by dativo and valid only during the call.
 *  - Arrow structs the plugin fills (out parameters) become dativo's; dativo calls their release.
 *    Arrow structs dativo passes in (write_batch, writer_initialize's schema) stay dativo's unless
 *    the plugin MOVES them (copies the struct and sets the original's release to NULL, as the
 *    Arrow spec describes); dativo releases whatever was not moved after the call returns.
 *  - A batch is a struct array (format "+s") whose children are the columns, with no nulls at
 *    the top level, exactly as ArrowArrayStream delivers record batches.
 *  - Never let an exception or panic cross this boundary; return DATIVO_ERROR_PANIC instead.
 *  - dativo never unloads a plugin library (release callbacks live in its code).
 */
#ifndef DATIVO_PLUGIN_H
#define DATIVO_PLUGIN_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- Arrow C Data Interface (https://arrow.apache.org/docs/format/CDataInterface.html) ---- */
#ifndef ARROW_C_DATA_INTERFACE
#define ARROW_C_DATA_INTERFACE

#define ARROW_FLAG_DICTIONARY_ORDERED 1
#define ARROW_FLAG_NULLABLE 2
#define ARROW_FLAG_MAP_KEYS_SORTED 4

struct ArrowSchema {
  const char *format;
  const char *name;
  const char *metadata;
  int64_t flags;
  int64_t n_children;
  struct ArrowSchema **children;
  struct ArrowSchema *dictionary;
  void (*release)(struct ArrowSchema *);
  void *private_data;
};

struct ArrowArray {
  int64_t length;
  int64_t null_count;
  int64_t offset;
  int64_t n_buffers;
  int64_t n_children;
  const void **buffers;
  struct ArrowArray **children;
  struct ArrowArray *dictionary;
  void (*release)(struct ArrowArray *);
  void *private_data;
};

#endif /* ARROW_C_DATA_INTERFACE */

/* ---- dativo ---- */

/** The ABI version this header describes. */
#define DATIVO_PLUGIN_ABI_VERSION 1

/** Status codes. */
#define DATIVO_OK 0
/** Failed; retrying will not help (bad data, a bug, a permanent refusal). */
#define DATIVO_ERROR 1
/** Failed for a reason that may go away (timeout, dropped connection): the run may be retried. */
#define DATIVO_ERROR_RETRYABLE 2
/** The configuration is invalid: the message should name the offending key. */
#define DATIVO_ERROR_CONFIG 3
/** Could not connect to, or authenticate with, the source or target (retryable). */
#define DATIVO_ERROR_CONNECTION 4
/** A bug inside the plugin (a caught panic or exception). */
#define DATIVO_ERROR_PANIC 5
/** Credentials were rejected or a permission is missing (not retried; exit code 3). */
#define DATIVO_ERROR_AUTH 6
/** A value could not be read or converted (not retried; exit code 4). */
#define DATIVO_ERROR_DATA 7
/** A schema is missing, mismatched or unsupported (not retried; exit code 4). */
#define DATIVO_ERROR_SCHEMA 8
/** Local or remote storage failed: disk full, permission denied on a path (not retried; exit 6). */
#define DATIVO_ERROR_IO 9

/** Opaque reader / writer instances, defined by the plugin. */
typedef struct DativoReader DativoReader;
typedef struct DativoWriter DativoWriter;

/**
 * Filled by dativo_plugin_init. Append-only: new fields only ever go at the end.
 * A plugin that provides no readers (or no writers) sets those function pointers to NULL.
 */
typedef struct DativoPlugin {
  /** DATIVO_PLUGIN_ABI_VERSION the plugin was built against. */
  uint32_t abi_version;
  /** sizeof(DativoPlugin) as the plugin knows it. */
  uint32_t struct_size;
  /**
   * Static UTF-8 JSON, valid for the life of the process:
   * {"name": "my_plugin", "version": "1.2.0", "description": "...",
   *  "readers": [{"name": "orders", "description": "..."}],
   *  "writers": [{"name": "csv", "description": "..."}]}
   */
  const char *manifest_json;
  /** The message of the last failed call on this thread (never NULL after a failure). */
  const char *(*last_error)(void);
  /** Frees a string the plugin returned through a char** out parameter. */
  void (*free_string)(char *s);

  /* -- reader -- */
  /** A new reader called `name` (from the manifest); NULL on failure (see last_error). */
  DativoReader *(*reader_new)(const char *name);
  /**
   * config_json: the job's source.config mapping. context_json:
   * {"job": "...", "stream": "...", "run_id": "...", "state": <last committed state or null>,
   *  "shard": {"index": 0, "count": 1}}
   */
  int (*reader_initialize)(DativoReader *r, const char *config_json, const char *context_json);
  /** The schema of every batch (a struct schema, format "+s"), into `out`. */
  int (*reader_get_schema)(DativoReader *r, struct ArrowSchema *out);
  /**
   * The next batch into `out` and its schema into `out_schema`; at end of stream return
   * DATIVO_OK and leave out->release NULL. Leaving out_schema->release NULL means "the schema
   * from get_schema" (filling it lets dativo catch a mismatch instead of misreading memory).
   */
  int (*reader_read_batch)(DativoReader *r, struct ArrowArray *out, struct ArrowSchema *out_schema);
  /** JSON state covering every batch returned so far; *out_json = NULL means none. */
  int (*reader_get_incremental_state)(DativoReader *r, char **out_json);
  /** Release resources (connections, files). Called exactly once, on success and failure. */
  int (*reader_close)(DativoReader *r);
  /** Free the instance itself; last call on it (an instance never initialized gets only this). */
  void (*reader_free)(DativoReader *r);

  /* -- writer -- */
  /** A new writer called `name` (from the manifest); NULL on failure (see last_error). */
  DativoWriter *(*writer_new)(const char *name);
  /**
   * config_json: the job's target.config mapping. context_json:
   * {"job": "...", "stream": "...", "run_id": "...", "shard": {"index": 0, "count": 1}}.
   * schema: the struct schema of every batch to come (see the ownership rules above).
   */
  int (*writer_initialize)(DativoWriter *w, const char *config_json, const char *context_json,
                           struct ArrowSchema *schema);
  /** Buffer or stream out one batch; nothing may be visible to readers of the target yet. */
  int (*writer_write_batch)(DativoWriter *w, struct ArrowArray *batch, struct ArrowSchema *schema);
  /**
   * Make everything written since the last finalize durable and visible atomically, with the
   * state. commit_json: {"state": <json or null>, "run_id": "...", "sequence": 1}.
   * *out_report_json: {"files": ["..."], "rows": 10, "bytes": 1234, "commit_id": "..."} (any
   * field may be omitted; NULL means {}).
   */
  int (*writer_finalize)(DativoWriter *w, const char *commit_json, char **out_report_json);
  /** Discard everything written since the last finalize. */
  int (*writer_abort)(DativoWriter *w);
  /**
   * The state stored by the last successful finalize, read back from the target:
   * {"state": <json or null>, "run_id": "..." or null}. *out_json = NULL means this writer does
   * not store state. May be NULL in the table (same meaning).
   */
  int (*writer_committed_state)(DativoWriter *w, char **out_json);
  /** Release resources. Called exactly once, on success and failure. */
  int (*writer_close)(DativoWriter *w);
  /** Free the instance itself; last call on it. */
  void (*writer_free)(DativoWriter *w);

  /* -- appended in v1 before release -- */
  /**
   * The status code of the last failed call on this thread (DATIVO_ERROR_*), so a NULL from
   * reader_new / writer_new can say what kind of failure it was. May be NULL: then a failed
   * *_new counts as DATIVO_ERROR.
   */
  int (*last_error_code)(void);
} DativoPlugin;

/**
 * The one symbol a plugin exports. Return DATIVO_OK after filling *out.
 *
 * Before the call dativo zeroes *out and sets out->struct_size to the size of the table it
 * allocated; a plugin must not write past that many bytes (a plugin built against a newer header
 * fills only the fields an older host knows). The plugin then sets abi_version and struct_size
 * to its own values; dativo treats fields past the plugin's struct_size as NULL.
 */
typedef int (*DativoPluginInitFn)(uint32_t host_abi_version, DativoPlugin *out);

#ifdef __cplusplus
}
#endif

#endif /* DATIVO_PLUGIN_H */
