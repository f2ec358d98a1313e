// csv_writer.cpp — an example dativo writer plugin in C++17.
//
// It uses nothing but dativo_plugin.h and the C++ standard library (plus POSIX for fsync and
// rename): batches arrive through the Arrow C Data Interface and are formatted by hand.
//
// Writer "csv" stores each commit as a directory under `path`:
//
//   <path>/_tmp-<run_id>/data.csv           rows written since the last finalize (invisible)
//   <path>/commit-0000000001/data.csv       a finalized commit: the header and its rows
//   <path>/commit-0000000001/state.json     {"state": <the commit's state>, "run_id": "..."}
//
// finalize fsyncs both files, then renames the temporary directory to the next commit number and
// fsyncs `path`: a commit is there entirely or not at all, and its state travels with its data,
// which is what makes a run exactly-once (committed_state reads the newest state.json back).

#include <algorithm>
#include <cerrno>
#include <cinttypes>
#include <cmath>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <filesystem>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>
#include <vector>

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#include "dativo_plugin.h"

namespace fs = std::filesystem;

// Everything but dativo_plugin_init stays private to the library.
#pragma GCC visibility push(hidden)

namespace {

// ---------------------------------------------------------------------------------------------
// Errors: one message per thread in a fixed buffer (setting it never allocates or throws).
// ---------------------------------------------------------------------------------------------

thread_local char g_last_error[2048];

int set_error(int code, const char *fmt, ...) noexcept __attribute__((format(printf, 2, 3)));

int set_error(int code, const char *fmt, ...) noexcept {
  va_list ap;
  va_start(ap, fmt);
  std::vsnprintf(g_last_error, sizeof g_last_error, fmt, ap);
  va_end(ap);
  return code;
}

// An error with a dativo status code, thrown inside the plugin and turned into a return value
// at the boundary.
struct PluginError {
  int code;
  std::string message;
};

[[noreturn]] void raise(int code, std::string message) { throw PluginError{code, std::move(message)}; }

[[noreturn]] void raise_errno(const std::string &what, const std::string &path) {
  int e = errno;
  raise(DATIVO_ERROR, "csv writer: " + what + " `" + path + "`: " + std::strerror(e));
}

// Runs `f` (returning a status code) so that no exception crosses the C boundary.
template <class F>
int guarded(F &&f) noexcept {
  try {
    return f();
  } catch (const PluginError &e) {
    return set_error(e.code, "%s", e.message.c_str());
  } catch (const std::exception &e) {
    return set_error(DATIVO_ERROR_PANIC, "csv writer: %s", e.what());
  } catch (...) {
    return set_error(DATIVO_ERROR_PANIC, "csv writer: unknown C++ exception");
  }
}

// A string handed to dativo through char**; released by free_string (std::free).
char *to_c_string(const std::string &s) {
  char *p = static_cast<char *>(std::malloc(s.size() + 1));
  if (p == nullptr) throw std::bad_alloc();
  std::memcpy(p, s.data(), s.size());
  p[s.size()] = '\0';
  return p;
}

// ---------------------------------------------------------------------------------------------
// A small JSON scanner: walks an object's members and returns each value's raw text.
// ---------------------------------------------------------------------------------------------

class JsonScanner {
 public:
  explicit JsonScanner(std::string_view text) : s_(text) {}

  // The members of the top-level object, each value as its raw text. False if `text` is not a
  // JSON object (or not valid JSON).
  bool object_members(std::vector<std::pair<std::string, std::string_view>> &out) {
    out.clear();
    ws();
    if (!eat('{')) return false;
    ws();
    if (eat('}')) return at_end();
    for (;;) {
      ws();
      std::string key;
      if (!string(&key)) return false;
      ws();
      if (!eat(':')) return false;
      ws();
      size_t start = i_;
      if (!value(0)) return false;
      out.emplace_back(std::move(key), s_.substr(start, i_ - start));
      ws();
      if (eat(',')) continue;
      if (eat('}')) return at_end();
      return false;
    }
  }

  // Decodes a JSON string value (the whole input must be one string).
  bool string_value(std::string &out) {
    ws();
    if (!string(&out)) return false;
    return at_end();
  }

 private:
  std::string_view s_;
  size_t i_ = 0;

  char peek() const { return i_ < s_.size() ? s_[i_] : '\0'; }
  bool eat(char c) {
    if (peek() != c) return false;
    ++i_;
    return true;
  }
  void ws() {
    while (i_ < s_.size() && (s_[i_] == ' ' || s_[i_] == '\t' || s_[i_] == '\n' || s_[i_] == '\r'))
      ++i_;
  }
  bool at_end() {
    ws();
    return i_ == s_.size();
  }

  static void put_utf8(std::string &out, uint32_t cp) {
    if (cp < 0x80) {
      out += static_cast<char>(cp);
    } else if (cp < 0x800) {
      out += static_cast<char>(0xC0 | (cp >> 6));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
      out += static_cast<char>(0xE0 | (cp >> 12));
      out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    } else {
      out += static_cast<char>(0xF0 | (cp >> 18));
      out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
      out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    }
  }

  bool hex4(uint32_t &v) {
    v = 0;
    for (int k = 0; k < 4; ++k) {
      char h = peek();
      uint32_t d;
      if (h >= '0' && h <= '9') d = static_cast<uint32_t>(h - '0');
      else if (h >= 'a' && h <= 'f') d = static_cast<uint32_t>(h - 'a' + 10);
      else if (h >= 'A' && h <= 'F') d = static_cast<uint32_t>(h - 'A' + 10);
      else return false;
      v = v * 16 + d;
      ++i_;
    }
    return true;
  }

  // A string at i_ (decoded into *out unless out is null).
  bool string(std::string *out) {
    if (!eat('"')) return false;
    for (;;) {
      if (i_ >= s_.size()) return false;
      char c = s_[i_++];
      if (c == '"') return true;
      if (static_cast<unsigned char>(c) < 0x20) return false;
      if (c != '\\') {
        if (out) *out += c;
        continue;
      }
      if (i_ >= s_.size()) return false;
      char e = s_[i_++];
      char lit;
      switch (e) {
        case '"': lit = '"'; break;
        case '\\': lit = '\\'; break;
        case '/': lit = '/'; break;
        case 'b': lit = '\b'; break;
        case 'f': lit = '\f'; break;
        case 'n': lit = '\n'; break;
        case 'r': lit = '\r'; break;
        case 't': lit = '\t'; break;
        case 'u': {
          uint32_t cp;
          if (!hex4(cp)) return false;
          if (cp >= 0xD800 && cp < 0xDC00) {  // a surrogate pair
            uint32_t lo;
            if (!eat('\\') || !eat('u') || !hex4(lo) || lo < 0xDC00 || lo > 0xDFFF) return false;
            cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
          } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
            return false;
          }
          if (out) put_utf8(*out, cp);
          continue;
        }
        default: return false;
      }
      if (out) *out += lit;
    }
  }

  bool number() {
    size_t start = i_;
    eat('-');
    auto digits = [&] {
      size_t d = i_;
      while (peek() >= '0' && peek() <= '9') ++i_;
      return i_ > d;
    };
    if (!digits()) return false;
    if (eat('.') && !digits()) return false;
    if (peek() == 'e' || peek() == 'E') {
      ++i_;
      if (peek() == '+' || peek() == '-') ++i_;
      if (!digits()) return false;
    }
    return i_ > start;
  }

  bool literal(std::string_view lit) {
    if (s_.substr(i_, lit.size()) != lit) return false;
    i_ += lit.size();
    return true;
  }

  // Any value at i_ (nested objects and arrays included).
  bool value(int depth) {
    if (depth > 128) return false;
    ws();
    char c = peek();
    if (c == '"') return string(nullptr);
    if (c == '{' || c == '[') {
      char close = c == '{' ? '}' : ']';
      ++i_;
      ws();
      if (eat(close)) return true;
      for (;;) {
        ws();
        if (c == '{') {
          if (!string(nullptr)) return false;
          ws();
          if (!eat(':')) return false;
        }
        if (!value(depth + 1)) return false;
        ws();
        if (eat(',')) continue;
        return eat(close);
      }
    }
    if (c == 't') return literal("true");
    if (c == 'f') return literal("false");
    if (c == 'n') return literal("null");
    return number();
  }
};

std::string json_escape(std::string_view s) {
  std::string out = "\"";
  for (char ch : s) {
    unsigned char c = static_cast<unsigned char>(ch);
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      default:
        if (c < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof buf, "\\u%04x", c);
          out += buf;
        } else {
          out += ch;
        }
    }
  }
  out += '"';
  return out;
}

bool parse_int(std::string_view raw, int64_t &out) {
  std::string s(raw);
  if (s.empty()) return false;
  char *end = nullptr;
  errno = 0;
  long long v = std::strtoll(s.c_str(), &end, 10);
  if (errno != 0 || end == s.c_str() || *end != '\0') return false;
  out = v;
  return true;
}

// ---------------------------------------------------------------------------------------------
// Columns: the Arrow types this writer can format.
// ---------------------------------------------------------------------------------------------

enum class Kind {
  Bool, Int8, Int16, Int32, Int64, UInt8, UInt16, UInt32, UInt64, Float32, Float64, Decimal128,
  Utf8, LargeUtf8, Binary, LargeBinary, FixedBinary, Date32, Time64Us, TimestampUs, List,
};

struct Column {
  std::string name;
  std::string format;
  Kind kind = Kind::Int64;
  int scale = 0;              // Decimal128
  int64_t width = 0;          // FixedBinary
  bool utc_suffix = false;    // TimestampUs with a time zone
  std::vector<Column> item;   // List: exactly one element
};

// Parses `s` into `col`; on failure returns false with the offending type, as the message shows
// it, in `bad` (e.g. "`e`", "`i` (dictionary-encoded)", "`+l` (list item type `e`)").
bool parse_column(const ArrowSchema *s, Column &col, std::string &bad) {
  col.format = s->format ? s->format : "";
  col.name = s->name ? s->name : "";
  const std::string &f = col.format;
  if (s->dictionary != nullptr) {
    bad = "`" + f + "` (dictionary-encoded)";
    return false;
  }
  static const std::pair<const char *, Kind> simple[] = {
      {"b", Kind::Bool},     {"c", Kind::Int8},     {"s", Kind::Int16},      {"i", Kind::Int32},
      {"l", Kind::Int64},    {"C", Kind::UInt8},    {"S", Kind::UInt16},     {"I", Kind::UInt32},
      {"L", Kind::UInt64},   {"f", Kind::Float32},  {"g", Kind::Float64},    {"u", Kind::Utf8},
      {"U", Kind::LargeUtf8}, {"z", Kind::Binary},  {"Z", Kind::LargeBinary}, {"tdD", Kind::Date32},
      {"ttu", Kind::Time64Us},
  };
  for (const auto &[fmt, kind] : simple) {
    if (f == fmt) {
      col.kind = kind;
      return true;
    }
  }
  if (f.rfind("tsu:", 0) == 0) {
    col.kind = Kind::TimestampUs;
    col.utc_suffix = f.size() > 4;
    return true;
  }
  if (f.rfind("w:", 0) == 0) {
    int64_t w;
    if (!parse_int(std::string_view(f).substr(2), w) || w <= 0) {
      bad = "`" + f + "`";
      return false;
    }
    col.kind = Kind::FixedBinary;
    col.width = w;
    return true;
  }
  if (f.rfind("d:", 0) == 0) {
    // d:precision,scale[,bitwidth] — only 128-bit decimals
    std::string_view rest = std::string_view(f).substr(2);
    std::vector<std::string_view> parts;
    size_t p;
    while ((p = rest.find(',')) != std::string_view::npos) {
      parts.push_back(rest.substr(0, p));
      rest = rest.substr(p + 1);
    }
    parts.push_back(rest);
    int64_t precision, scale, bits = 128;
    if ((parts.size() != 2 && parts.size() != 3) || !parse_int(parts[0], precision) ||
        !parse_int(parts[1], scale) || (parts.size() == 3 && !parse_int(parts[2], bits)) ||
        bits != 128 || precision < 1 || precision > 38 || scale < -1000 || scale > 1000) {
      bad = "`" + f + "`";
      return false;
    }
    col.kind = Kind::Decimal128;
    col.scale = static_cast<int>(scale);
    return true;
  }
  if (f == "+l") {
    if (s->n_children != 1 || s->children == nullptr || s->children[0] == nullptr) {
      bad = "`" + f + "` (without its item type)";
      return false;
    }
    Column item;
    std::string inner;
    if (!parse_column(s->children[0], item, inner)) {
      bad = "`" + f + "` (list item type " + inner + ")";
      return false;
    }
    col.kind = Kind::List;
    col.item.push_back(std::move(item));
    return true;
  }
  bad = "`" + f + "`";
  return false;
}

// ---------------------------------------------------------------------------------------------
// Formatting values.
// ---------------------------------------------------------------------------------------------

bool bit(const void *bitmap, int64_t i) {
  const uint8_t *b = static_cast<const uint8_t *>(bitmap);
  return (b[i >> 3] >> (i & 7)) & 1;
}

// `i` is the physical index (the array's own offset already added).
bool is_valid(const ArrowArray *a, int64_t i) {
  if (a->null_count == 0 || a->n_buffers < 1 || a->buffers[0] == nullptr) return true;
  return bit(a->buffers[0], i);
}

template <class T>
T load(const ArrowArray *a, int buffer, int64_t i) {
  T v;
  std::memcpy(&v, static_cast<const uint8_t *>(a->buffers[buffer]) + i * static_cast<int64_t>(sizeof(T)),
              sizeof(T));
  return v;
}

// Days since 1970-01-01 → (year, month, day); proleptic Gregorian, negative days included
// (Howard Hinnant's civil_from_days).
void civil_from_days(int64_t z, int64_t &y, unsigned &m, unsigned &d) {
  z += 719468;
  const int64_t era = (z >= 0 ? z : z - 146096) / 146097;
  const unsigned doe = static_cast<unsigned>(z - era * 146097);
  const unsigned yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
  y = static_cast<int64_t>(yoe) + era * 400;
  const unsigned doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
  const unsigned mp = (5 * doy + 2) / 153;
  d = doy - (153 * mp + 2) / 5 + 1;
  m = mp < 10 ? mp + 3 : mp - 9;
  if (m <= 2) ++y;
}

// a = q * b + r with 0 <= r < b (b > 0), without overflow even for INT64_MIN.
void floor_divmod(int64_t a, int64_t b, int64_t &q, int64_t &r) {
  q = a / b;
  r = a % b;
  if (r < 0) {
    r += b;
    --q;
  }
}

void append_date(std::string &out, int64_t days) {
  int64_t y;
  unsigned m, d;
  civil_from_days(days, y, m, d);
  char buf[48];
  std::snprintf(buf, sizeof buf, "%04" PRId64 "-%02u-%02u", y, m, d);
  out += buf;
}

void append_time_of_day(std::string &out, int64_t micros) {
  int64_t secs, frac;
  floor_divmod(micros, 1000000, secs, frac);
  char buf[96];
  std::snprintf(buf, sizeof buf, "%02" PRId64 ":%02" PRId64 ":%02" PRId64 ".%06" PRId64,
                secs / 3600, (secs / 60) % 60, secs % 60, frac);
  out += buf;
}

void append_timestamp(std::string &out, int64_t micros, bool utc_suffix) {
  const int64_t per_day = INT64_C(86400000000);
  int64_t days, rest;  // 0 <= rest < per_day
  floor_divmod(micros, per_day, days, rest);
  append_date(out, days);
  out += 'T';
  append_time_of_day(out, rest);
  if (utc_suffix) out += 'Z';
}

// The shortest text that reads back as the same value.
void append_double(std::string &out, double v) {
  if (std::isnan(v)) {
    out += "NaN";
    return;
  }
  if (std::isinf(v)) {
    out += v > 0 ? "inf" : "-inf";
    return;
  }
  char buf[64];
  for (int prec = 15; prec <= 17; ++prec) {
    std::snprintf(buf, sizeof buf, "%.*g", prec, v);
    if (prec == 17 || std::strtod(buf, nullptr) == v) break;
  }
  out += buf;
}

void append_float(std::string &out, float v) {
  if (std::isnan(v) || std::isinf(v)) {
    append_double(out, static_cast<double>(v));
    return;
  }
  char buf[64];
  for (int prec = 6; prec <= 9; ++prec) {
    std::snprintf(buf, sizeof buf, "%.*g", prec, static_cast<double>(v));
    if (prec == 9 || std::strtof(buf, nullptr) == v) break;
  }
  out += buf;
}

void append_decimal128(std::string &out, const ArrowArray *a, int64_t i, int scale) {
  __int128 v;
  std::memcpy(&v, static_cast<const uint8_t *>(a->buffers[1]) + i * 16, 16);
  bool negative = v < 0;
  unsigned __int128 mag = negative ? ~static_cast<unsigned __int128>(v) + 1
                                   : static_cast<unsigned __int128>(v);
  std::string digits;
  do {
    digits += static_cast<char>('0' + static_cast<int>(mag % 10));
    mag /= 10;
  } while (mag != 0);
  std::string text(digits.rbegin(), digits.rend());
  if (scale > 0) {
    size_t sc = static_cast<size_t>(scale);
    if (text.size() <= sc) text.insert(0, sc + 1 - text.size(), '0');
    text.insert(text.size() - sc, 1, '.');
  } else if (scale < 0 && text != "0") {
    text.append(static_cast<size_t>(-scale), '0');
  }
  if (negative) out += '-';
  out += text;
}

void append_hex(std::string &out, const uint8_t *p, int64_t n) {
  static const char digits[] = "0123456789abcdef";
  for (int64_t k = 0; k < n; ++k) {
    out += digits[p[k] >> 4];
    out += digits[p[k] & 15];
  }
}

// (start, end) of variable-size element i (offsets of type O in buffer 1).
template <class O>
std::pair<int64_t, int64_t> var_range(const ArrowArray *a, int64_t i) {
  return {static_cast<int64_t>(load<O>(a, 1, i)), static_cast<int64_t>(load<O>(a, 1, i + 1))};
}

bool is_textual(Kind k) {
  switch (k) {
    case Kind::Utf8: case Kind::LargeUtf8: case Kind::Binary: case Kind::LargeBinary:
    case Kind::FixedBinary: case Kind::Date32: case Kind::Time64Us: case Kind::TimestampUs:
      return true;
    default:
      return false;
  }
}

// Appends the text of element `i` (physical index) of `a`, which is not null. (Inside a list,
// append_list quotes textual values as JSON strings, so that the list reads as JSON.)
void append_value(std::string &out, const Column &c, const ArrowArray *a, int64_t i);

void append_list(std::string &out, const Column &c, const ArrowArray *a, int64_t i) {
  auto [start, end] = var_range<int32_t>(a, i);
  const Column &item = c.item[0];
  const ArrowArray *child = a->children[0];
  out += '[';
  for (int64_t k = start; k < end; ++k) {
    if (k > start) out += ',';
    int64_t phys = child->offset + k;
    if (!is_valid(child, phys)) {
      out += "null";
    } else if (is_textual(item.kind)) {
      std::string text;
      append_value(text, item, child, phys);
      out += json_escape(text);
    } else {
      append_value(out, item, child, phys);
    }
  }
  out += ']';
}

void append_value(std::string &out, const Column &c, const ArrowArray *a, int64_t i) {
  switch (c.kind) {
    case Kind::Bool: out += bit(a->buffers[1], i) ? "true" : "false"; return;
    case Kind::Int8: out += std::to_string(load<int8_t>(a, 1, i)); return;
    case Kind::Int16: out += std::to_string(load<int16_t>(a, 1, i)); return;
    case Kind::Int32: out += std::to_string(load<int32_t>(a, 1, i)); return;
    case Kind::Int64: out += std::to_string(load<int64_t>(a, 1, i)); return;
    case Kind::UInt8: out += std::to_string(load<uint8_t>(a, 1, i)); return;
    case Kind::UInt16: out += std::to_string(load<uint16_t>(a, 1, i)); return;
    case Kind::UInt32: out += std::to_string(load<uint32_t>(a, 1, i)); return;
    case Kind::UInt64: out += std::to_string(load<uint64_t>(a, 1, i)); return;
    case Kind::Float32: append_float(out, load<float>(a, 1, i)); return;
    case Kind::Float64: append_double(out, load<double>(a, 1, i)); return;
    case Kind::Decimal128: append_decimal128(out, a, i, c.scale); return;
    case Kind::Utf8: case Kind::Binary: {
      auto [s, e] = var_range<int32_t>(a, i);
      const char *data = static_cast<const char *>(a->buffers[2]);
      if (c.kind == Kind::Utf8) out.append(data + s, static_cast<size_t>(e - s));
      else append_hex(out, reinterpret_cast<const uint8_t *>(data) + s, e - s);
      return;
    }
    case Kind::LargeUtf8: case Kind::LargeBinary: {
      auto [s, e] = var_range<int64_t>(a, i);
      const char *data = static_cast<const char *>(a->buffers[2]);
      if (c.kind == Kind::LargeUtf8) out.append(data + s, static_cast<size_t>(e - s));
      else append_hex(out, reinterpret_cast<const uint8_t *>(data) + s, e - s);
      return;
    }
    case Kind::FixedBinary:
      append_hex(out, static_cast<const uint8_t *>(a->buffers[1]) + i * c.width, c.width);
      return;
    case Kind::Date32: append_date(out, load<int32_t>(a, 1, i)); return;
    case Kind::Time64Us: append_time_of_day(out, load<int64_t>(a, 1, i)); return;
    case Kind::TimestampUs: append_timestamp(out, load<int64_t>(a, 1, i), c.utc_suffix); return;
    case Kind::List: append_list(out, c, a, i); return;
  }
}

void append_csv_field(std::string &out, std::string_view text, bool force_quotes) {
  bool quote = force_quotes || text.find_first_of(",\"\r\n") != std::string_view::npos;
  if (!quote) {
    out += text;
    return;
  }
  out += '"';
  for (char ch : text) {
    if (ch == '"') out += '"';
    out += ch;
  }
  out += '"';
}

// Checks that `a` has the buffers (and children) `c` needs for physical rows [0, rows): a batch
// that does not match its schema is refused instead of being misread.
void check_array(const Column &c, const ArrowArray *a, int64_t rows) {
  auto fail = [&](const char *why) {
    raise(DATIVO_ERROR, "csv writer: column `" + c.name + "` (`" + c.format + "`): " + why);
  };
  if (a == nullptr || a->release == nullptr) fail("missing or released array");
  if (a->offset < 0 || a->length < 0) fail("negative offset or length");
  if (a->offset + a->length < rows) fail("the array is shorter than the batch");
  if (rows == 0) return;
  int need = 2;
  switch (c.kind) {
    case Kind::Utf8: case Kind::LargeUtf8: case Kind::Binary: case Kind::LargeBinary: need = 3; break;
    default: break;
  }
  if (a->n_buffers < need || a->buffers == nullptr) fail("too few buffers");
  for (int b = 1; b < need; ++b)
    if (a->buffers[b] == nullptr) fail("a data buffer is null");
  if (a->null_count > 0 && a->buffers[0] == nullptr) fail("null_count > 0 without a validity buffer");
  if (c.kind == Kind::List) {
    if (a->n_children != 1 || a->children == nullptr || a->children[0] == nullptr)
      fail("a list array needs one child");
    int64_t first = a->offset;
    // offsets[first .. rows] must be increasing and within the child
    int64_t max_end = 0;
    for (int64_t k = first; k < rows; ++k) {
      int32_t s = load<int32_t>(a, 1, k), e = load<int32_t>(a, 1, k + 1);
      if (s < 0 || e < s) fail("list offsets are not increasing");
      if (e > max_end) max_end = e;
    }
    const ArrowArray *child = a->children[0];
    check_array(c.item[0], child, child->offset + max_end);
  }
}

// ---------------------------------------------------------------------------------------------
// File system helpers (POSIX).
// ---------------------------------------------------------------------------------------------

void write_all(int fd, const std::string &data, const std::string &path) {
  size_t done = 0;
  while (done < data.size()) {
    ssize_t n = ::write(fd, data.data() + done, data.size() - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      raise_errno("cannot write", path);
    }
    done += static_cast<size_t>(n);
  }
}

void fsync_path(const std::string &path, bool directory) {
  int fd = ::open(path.c_str(), (directory ? O_RDONLY | O_DIRECTORY : O_RDONLY) | O_CLOEXEC);
  if (fd < 0) raise_errno("cannot open", path);
  if (::fsync(fd) != 0) {
    int e = errno;
    ::close(fd);
    errno = e;
    raise_errno("cannot fsync", path);
  }
  ::close(fd);
}

// The highest number among the `commit-NNNNNNNNNN` directories in `dir` (0: none, or no dir).
uint64_t highest_commit(const std::string &dir) {
  uint64_t best = 0;
  DIR *d = ::opendir(dir.c_str());
  if (d == nullptr) {
    if (errno == ENOENT) return 0;
    raise_errno("cannot list", dir);
  }
  while (struct dirent *ent = ::readdir(d)) {
    std::string_view name(ent->d_name);
    if (name.size() != 17 || name.substr(0, 7) != "commit-") continue;
    uint64_t n = 0;
    bool ok = true;
    for (char ch : name.substr(7)) {
      if (ch < '0' || ch > '9') {
        ok = false;
        break;
      }
      n = n * 10 + static_cast<uint64_t>(ch - '0');
    }
    if (ok && n > best) best = n;
  }
  ::closedir(d);
  return best;
}

std::string commit_name(uint64_t n) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "commit-%010" PRIu64, n);
  return buf;
}

std::string read_file(const std::string &path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) raise_errno("cannot open", path);
  std::string out;
  char buf[4096];
  for (;;) {
    ssize_t n = ::read(fd, buf, sizeof buf);
    if (n < 0) {
      if (errno == EINTR) continue;
      int e = errno;
      ::close(fd);
      errno = e;
      raise_errno("cannot read", path);
    }
    if (n == 0) break;
    out.append(buf, static_cast<size_t>(n));
  }
  ::close(fd);
  return out;
}

// Removes a directory tree; one that does not exist (or whose parent is not a directory) is fine.
void remove_tree(const std::string &dir) {
  struct stat st;
  if (::lstat(dir.c_str(), &st) != 0) {
    if (errno == ENOENT || errno == ENOTDIR) return;
    raise_errno("cannot stat", dir);
  }
  std::error_code ec;
  fs::remove_all(dir, ec);
  if (ec) raise(DATIVO_ERROR, "csv writer: cannot remove `" + dir + "`: " + ec.message());
}

// Only [A-Za-z0-9._-] in a directory name; anything else becomes '_'.
std::string safe_name(std::string_view s) {
  std::string out;
  for (char ch : s) {
    bool ok = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
              ch == '-' || ch == '_' || ch == '.';
    out += ok ? ch : '_';
  }
  if (out.empty() || out == "." || out == "..") out = "run";
  return out;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// The writer.
// ---------------------------------------------------------------------------------------------

struct __attribute__((visibility("hidden"))) DativoWriter {
  bool initialized = false;
  bool closed = false;
  std::string path;     // the target directory
  std::string tmp_dir;  // <path>/_tmp-<run_id>
  std::vector<Column> columns;

  bool pending = false; // tmp_dir holds data.csv with rows not finalized yet
  int fd = -1;          // data.csv, open for appending (closed once finalize has synced it)
  int64_t rows = 0;     // rows written since the last finalize
  uint64_t bytes = 0;   // bytes written to data.csv (header included)

  std::string data_path() const { return tmp_dir + "/data.csv"; }

  void close_fd() {
    if (fd >= 0) ::close(fd);
    fd = -1;
  }

  void discard_tmp() {
    close_fd();
    pending = false;
    rows = 0;
    bytes = 0;
    if (!tmp_dir.empty()) remove_tree(tmp_dir);
  }

  // Creates <tmp>/data.csv with the header line.
  void open_tmp() {
    close_fd();
    std::error_code ec;
    fs::create_directories(path, ec);
    if (ec) raise(DATIVO_ERROR, "csv writer: cannot create `" + path + "`: " + ec.message());
    remove_tree(tmp_dir);
    if (::mkdir(tmp_dir.c_str(), 0755) != 0) raise_errno("cannot create", tmp_dir);
    std::string file = data_path();
    fd = ::open(file.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) raise_errno("cannot create", file);
    std::string header;
    for (size_t k = 0; k < columns.size(); ++k) {
      if (k > 0) header += ',';
      append_csv_field(header, columns[k].name, false);
    }
    header += '\n';
    write_all(fd, header, file);
    bytes = header.size();
    rows = 0;
    pending = true;
  }

  // data.csv, open for appending: created on the first batch after a finalize.
  void open_for_append() {
    if (fd >= 0) return;
    if (!pending) {
      open_tmp();
      return;
    }
    // a finalize that failed after closing the file: keep appending to it
    std::string file = data_path();
    fd = ::open(file.c_str(), O_WRONLY | O_APPEND | O_CLOEXEC);
    if (fd < 0) raise_errno("cannot open", file);
  }

  void initialize(const char *config_json, const char *context_json, ArrowSchema *schema) {
    // config: {"path": "<directory>"}
    std::vector<std::pair<std::string, std::string_view>> members;
    JsonScanner config(config_json ? config_json : "");
    if (!config.object_members(members))
      raise(DATIVO_ERROR_CONFIG, "csv writer: the config must be a JSON object like {\"path\": \"out/csv\"}");
    bool have_path = false;
    for (const auto &[key, raw] : members) {
      if (key == "path") {
        if (!JsonScanner(raw).string_value(path) || path.empty())
          raise(DATIVO_ERROR_CONFIG, "csv writer: config key `path` must be a non-empty string");
        have_path = true;
      } else {
        raise(DATIVO_ERROR_CONFIG, "csv writer: unknown config key `" + key + "` (expected: path)");
      }
    }
    if (!have_path) raise(DATIVO_ERROR_CONFIG, "csv writer: config key `path` is required");
    while (path.size() > 1 && path.back() == '/') path.pop_back();

    // context: run_id (and shard, so that parallel shards do not share a directory)
    JsonScanner context(context_json ? context_json : "");
    if (!context.object_members(members)) raise(DATIVO_ERROR, "csv writer: the context is not a JSON object");
    std::string run_id;
    int64_t shard_index = 0, shard_count = 1;
    for (const auto &[key, raw] : members) {
      if (key == "run_id") {
        if (!JsonScanner(raw).string_value(run_id))
          raise(DATIVO_ERROR, "csv writer: the context's run_id is not a string");
      } else if (key == "shard") {
        std::vector<std::pair<std::string, std::string_view>> shard;
        if (JsonScanner(raw).object_members(shard)) {
          for (const auto &[k, v] : shard) {
            if (k == "index") parse_int(v, shard_index);
            if (k == "count") parse_int(v, shard_count);
          }
        }
      }
    }
    if (run_id.empty()) raise(DATIVO_ERROR, "csv writer: the context has no run_id");
    tmp_dir = path + "/_tmp-" + safe_name(run_id);
    if (shard_count > 1) tmp_dir += "-shard" + std::to_string(shard_index);

    // schema: a struct whose children are the columns
    if (schema == nullptr || schema->release == nullptr || schema->format == nullptr ||
        std::string_view(schema->format) != "+s")
      raise(DATIVO_ERROR, "csv writer: the schema must be a struct (format `+s`)");
    columns.clear();
    for (int64_t k = 0; k < schema->n_children; ++k) {
      const ArrowSchema *child = schema->children[k];
      Column col;
      std::string bad;
      if (child == nullptr) raise(DATIVO_ERROR, "csv writer: the schema has a null child");
      if (!parse_column(child, col, bad))
        raise(DATIVO_ERROR, "csv writer: column `" + col.name + "` has unsupported Arrow type " + bad);
      columns.push_back(std::move(col));
    }
    // Leftovers of an earlier attempt of this same run were never committed: drop them.
    discard_tmp();
    initialized = true;
  }

  void write_batch(ArrowArray *batch, ArrowSchema *schema) {
    if (!initialized || closed) raise(DATIVO_ERROR, "csv writer: write_batch on a writer that is not open");
    if (batch == nullptr || batch->release == nullptr) raise(DATIVO_ERROR, "csv writer: null or released batch");
    if (batch->n_children != static_cast<int64_t>(columns.size()) || (columns.size() > 0 && batch->children == nullptr))
      raise(DATIVO_ERROR, "csv writer: the batch has " + std::to_string(batch->n_children) +
                              " columns, the schema " + std::to_string(columns.size()));
    if (schema != nullptr && schema->release != nullptr) {
      bool same = schema->n_children == static_cast<int64_t>(columns.size());
      for (size_t k = 0; same && k < columns.size(); ++k)
        same = schema->children != nullptr && schema->children[k] != nullptr &&
               schema->children[k]->format != nullptr && columns[k].format == schema->children[k]->format;
      if (!same) raise(DATIVO_ERROR, "csv writer: the batch's schema differs from the initialized schema");
    }
    if (batch->offset < 0 || batch->length < 0) raise(DATIVO_ERROR, "csv writer: negative batch offset or length");
    for (size_t k = 0; k < columns.size(); ++k) {
      const ArrowArray *col = batch->children[k];
      if (col == nullptr) raise(DATIVO_ERROR, "csv writer: column `" + columns[k].name + "` is missing");
      check_array(columns[k], col, col->offset + batch->offset + batch->length);
    }

    open_for_append();
    std::string out;
    std::string text;
    for (int64_t r = 0; r < batch->length; ++r) {
      for (size_t k = 0; k < columns.size(); ++k) {
        if (k > 0) out += ',';
        const ArrowArray *col = batch->children[k];
        int64_t i = col->offset + batch->offset + r;  // the struct's offset applies to its children
        if (!is_valid(col, i)) continue;              // null → empty field
        text.clear();
        append_value(text, columns[k], col, i);
        append_csv_field(out, text, columns[k].kind == Kind::List);
      }
      out += '\n';
      if (out.size() >= (1u << 20)) {
        write_all(fd, out, data_path());
        bytes += out.size();
        out.clear();
      }
    }
    write_all(fd, out, data_path());
    bytes += out.size();
    rows += batch->length;
  }

  std::string finalize(const char *commit_json) {
    if (!initialized || closed) raise(DATIVO_ERROR, "csv writer: finalize on a writer that is not open");
    std::vector<std::pair<std::string, std::string_view>> members;
    JsonScanner commit(commit_json ? commit_json : "");
    if (!commit.object_members(members)) raise(DATIVO_ERROR, "csv writer: the commit is not a JSON object");
    std::string_view state = "null", run_id = "null";
    for (const auto &[key, raw] : members) {
      if (key == "state") state = raw;
      if (key == "run_id") run_id = raw;
    }
    if (run_id != "null" && (run_id.empty() || run_id.front() != '"'))
      raise(DATIVO_ERROR, "csv writer: the commit's run_id is not a string");

    if (!pending) open_tmp();  // an empty commit still gets a directory (a header-only data.csv)
    const std::string file = data_path();
    if (fd >= 0) {
      if (::fsync(fd) != 0) raise_errno("cannot fsync", file);
      int rc = ::close(fd);
      fd = -1;
      if (rc != 0) raise_errno("cannot close", file);
    }

    const std::string state_file = tmp_dir + "/state.json";
    std::string content = "{\"state\": ";
    content.append(state);
    content += ", \"run_id\": ";
    content.append(run_id);
    content += "}";
    int sfd = ::open(state_file.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (sfd < 0) raise_errno("cannot create", state_file);
    try {
      write_all(sfd, content, state_file);
    } catch (...) {
      ::close(sfd);
      throw;
    }
    if (::fsync(sfd) != 0) {
      int e = errno;
      ::close(sfd);
      errno = e;
      raise_errno("cannot fsync", state_file);
    }
    ::close(sfd);
    fsync_path(tmp_dir, true);

    // Publish: rename to the next free commit number (another writer may take one meanwhile:
    // renaming onto a non-empty directory fails, and we try the next number).
    uint64_t n = highest_commit(path) + 1;
    std::string target;
    for (int attempt = 0;; ++attempt) {
      target = path + "/" + commit_name(n);
      if (::rename(tmp_dir.c_str(), target.c_str()) == 0) break;
      if ((errno == EEXIST || errno == ENOTEMPTY) && attempt < 1000) {
        n = std::max(n + 1, highest_commit(path) + 1);
        continue;
      }
      raise_errno("cannot rename `" + tmp_dir + "` to", target);
    }
    pending = false;
    fsync_path(path, true);

    std::string report = "{\"files\": [" + json_escape(target + "/data.csv") + "], \"rows\": " +
                         std::to_string(rows) + ", \"bytes\": " + std::to_string(bytes) +
                         ", \"commit_id\": " + json_escape(commit_name(n)) + "}";
    rows = 0;
    bytes = 0;
    return report;
  }

  std::string committed_state() {
    if (!initialized) raise(DATIVO_ERROR, "csv writer: committed_state before initialize");
    uint64_t n = highest_commit(path);
    if (n == 0) return "{\"state\": null, \"run_id\": null}";
    return read_file(path + "/" + commit_name(n) + "/state.json");
  }

  void close() {
    if (closed) return;
    closed = true;
    discard_tmp();
  }
};

// ---------------------------------------------------------------------------------------------
// The C ABI.
// ---------------------------------------------------------------------------------------------

namespace {

const char *plugin_last_error() { return g_last_error; }

void plugin_free_string(char *s) { std::free(s); }

DativoWriter *writer_new(const char *name) {
  DativoWriter *w = nullptr;
  int rc = guarded([&] {
    if (name == nullptr || std::string_view(name) != "csv")
      raise(DATIVO_ERROR, std::string("cpp_csv: unknown writer `") + (name ? name : "(null)") +
                              "` (this plugin has: csv)");
    w = new DativoWriter();
    return DATIVO_OK;
  });
  return rc == DATIVO_OK ? w : nullptr;
}

int writer_initialize(DativoWriter *w, const char *config_json, const char *context_json,
                      ArrowSchema *schema) {
  if (w == nullptr) return set_error(DATIVO_ERROR, "csv writer: null writer");
  return guarded([&] {
    w->initialize(config_json, context_json, schema);
    return DATIVO_OK;
  });
}

int writer_write_batch(DativoWriter *w, ArrowArray *batch, ArrowSchema *schema) {
  if (w == nullptr) return set_error(DATIVO_ERROR, "csv writer: null writer");
  return guarded([&] {
    w->write_batch(batch, schema);
    return DATIVO_OK;
  });
}

int writer_finalize(DativoWriter *w, const char *commit_json, char **out_report_json) {
  if (w == nullptr) return set_error(DATIVO_ERROR, "csv writer: null writer");
  if (out_report_json != nullptr) *out_report_json = nullptr;
  return guarded([&] {
    std::string report = w->finalize(commit_json);
    if (out_report_json != nullptr) *out_report_json = to_c_string(report);
    return DATIVO_OK;
  });
}

int writer_abort(DativoWriter *w) {
  if (w == nullptr) return set_error(DATIVO_ERROR, "csv writer: null writer");
  return guarded([&] {
    w->discard_tmp();
    return DATIVO_OK;
  });
}

int writer_committed_state(DativoWriter *w, char **out_json) {
  if (w == nullptr || out_json == nullptr) return set_error(DATIVO_ERROR, "csv writer: null argument");
  *out_json = nullptr;
  return guarded([&] {
    *out_json = to_c_string(w->committed_state());
    return DATIVO_OK;
  });
}

int writer_close(DativoWriter *w) {
  if (w == nullptr) return set_error(DATIVO_ERROR, "csv writer: null writer");
  return guarded([&] {
    w->close();
    return DATIVO_OK;
  });
}

void writer_free(DativoWriter *w) {
  if (w == nullptr) return;
  try {
    w->close_fd();
    delete w;
  } catch (...) {
  }
}

const char MANIFEST[] =
    "{\"name\": \"cpp_csv\", \"version\": \"0.1.0\","
    " \"description\": \"Example C++ plugin: exactly-once CSV commits in a local directory\","
    " \"readers\": [],"
    " \"writers\": [{\"name\": \"csv\", \"description\":"
    " \"one directory per commit (data.csv + state.json), published by an atomic rename\"}]}";

}  // namespace

#pragma GCC visibility pop

extern "C" __attribute__((visibility("default"))) int dativo_plugin_init(uint32_t host_abi_version,
                                                                         DativoPlugin *out) {
  if (out == nullptr) return set_error(DATIVO_ERROR, "cpp_csv: null plugin table");
  if (host_abi_version < 1)
    return set_error(DATIVO_ERROR, "cpp_csv: host ABI version %u is not supported", host_abi_version);
  std::memset(out, 0, sizeof *out);
  out->abi_version = DATIVO_PLUGIN_ABI_VERSION;
  out->struct_size = static_cast<uint32_t>(sizeof *out);
  out->manifest_json = MANIFEST;
  out->last_error = plugin_last_error;
  out->free_string = plugin_free_string;
  // no readers: the reader function pointers stay NULL
  out->writer_new = writer_new;
  out->writer_initialize = writer_initialize;
  out->writer_write_batch = writer_write_batch;
  out->writer_finalize = writer_finalize;
  out->writer_abort = writer_abort;
  out->writer_committed_state = writer_committed_state;
  out->writer_close = writer_close;
  out->writer_free = writer_free;
  return DATIVO_OK;
}
