"""Edits a newcomer makes to the Go and C scaffolds of `dativo plugin new` — in main.go and the
plugin's .c file only, never in arrow.go or dativo_sdk.h: a string config key `prefix` and a
column of every type the helpers build — and the rows the edited readers must produce."""
GO_SCHEMA = '''var schema = []field{
	{name: "id", format: formatInt64},
	{name: "name", format: formatUTF8, nullable: true},
	{name: "i8", format: formatInt8, nullable: true},
	{name: "i16", format: formatInt16, nullable: true},
	{name: "i32", format: formatInt32, nullable: true},
	{name: "f32", format: formatFloat32, nullable: true},
	{name: "f64", format: formatFloat64, nullable: true},
	{name: "flag", format: formatBool, nullable: true},
	{name: "raw", format: formatBinary, nullable: true},
	{name: "day", format: formatDate32, nullable: true},
	{name: "at", format: formatTimestamp("UTC"), nullable: true},
	{name: "local", format: formatTimestamp(""), nullable: true},
	{name: "amount", format: formatDecimal(12, 2), nullable: true},
	listField("ints", true, field{format: formatInt64, nullable: true}),
	listField("tags", true, field{format: formatUTF8}),
}'''

GO_ROW = '''		cols[0].AppendInt64(id)
		if id%10 == 0 {
			for _, c := range cols[1:] {
				c.AppendNull()
			}
			continue
		}
		cols[1].AppendString(fmt.Sprintf("%s-%d", r.cfg.Prefix, id))
		cols[2].AppendInt8(int8(id % 100))
		cols[3].AppendInt16(int16(id))
		cols[4].AppendInt32(int32(id * 1000))
		cols[5].AppendFloat32(float32(id) / 4)
		cols[6].AppendFloat64(float64(id) / 8)
		cols[7].AppendBool(id%2 == 0)
		cols[8].AppendBytes([]byte{byte(id), 0, 255})
		cols[9].AppendDate(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC).AddDate(0, 0, int(id)))
		berlin := time.FixedZone("CET", 3600)
		cols[10].AppendTimestamp(time.Date(2026, 3, 29, 0, 30, 0, 0, berlin).Add(time.Duration(id) * time.Hour))
		cols[11].AppendTimestamp(time.Date(2026, 1, 1, 12, 0, 0, 0, berlin).Add(time.Duration(id) * time.Second))
		if err := cols[12].AppendDecimal(fmt.Sprintf("-%d.%02d", id, id%100)); err != nil {
			return nil, fail(codeError, "%v", err)
		}
		for j := int64(0); j < id%4; j++ {
			cols[13].Item().AppendInt64(id*10 + j)
		}
		if id%7 == 0 {
			cols[13].Item().AppendNull()
		}
		cols[13].EndList()
		if id%5 == 0 {
			cols[14].AppendNull()
		} else {
			cols[14].Item().AppendString(r.cfg.Prefix)
			cols[14].EndList()
		}'''


def edit_go(main):
    """What a newcomer changes in main.go (and only there): a string config key and columns of
    every type arrow.go offers."""
    s = main.read_text()
    start = s.index("var schema = []field{")
    s = s[:start] + GO_SCHEMA + s[s.index("}\n", start) + 1:]
    s = s.replace('''	BatchSize int64 `json:"batch_size"`
}''', '''	BatchSize int64 `json:"batch_size"`
	Prefix    string `json:"prefix"`
}''')
    s = s.replace("r.cfg = config{Rows: 100, BatchSize: 1000}", 'r.cfg = config{Rows: 100, BatchSize: 1000, Prefix: "row"}')
    start = s.index("		cols[0].AppendInt64(id)\n")
    end = s.index("	}\n	return cols, nil", start)
    s = s[:start] + GO_ROW + "\n" + s[end:]
    s = s.replace('import (\n\t"bytes"', 'import (\n\t"time"\n\t"bytes"')
    main.write_text(s)


def expected(rows, prefix):
    """The rows the edited reader produces, as pyarrow reads them back."""
    import datetime as dt
    from decimal import Decimal
    out = []
    for i in range(1, rows + 1):
        if i % 10 == 0:
            out.append({"id": i, "name": None, "i8": None, "i16": None, "i32": None, "f32": None, "f64": None,
                        "flag": None, "raw": None, "day": None, "at": None, "local": None, "amount": None,
                        "ints": None, "tags": None})
            continue
        cet = dt.timezone(dt.timedelta(hours=1))
        ints = [i * 10 + j for j in range(i % 4)] + ([None] if i % 7 == 0 else [])
        out.append({
            "id": i, "name": f"{prefix}-{i}", "i8": i % 100, "i16": i, "i32": i * 1000, "f32": i / 4, "f64": i / 8,
            "flag": i % 2 == 0, "raw": bytes([i % 256, 0, 255]),
            "day": dt.date(2026, 1, 1) + dt.timedelta(days=i),
            "at": (dt.datetime(2026, 3, 29, 0, 30, tzinfo=cet) + dt.timedelta(hours=i)).astimezone(dt.timezone.utc),
            "local": dt.datetime(2026, 1, 1, 12, 0) + dt.timedelta(seconds=i),
            "amount": Decimal(f"-{i}.{i % 100:02d}"),
            "ints": ints, "tags": None if i % 5 == 0 else [prefix],
        })
    return out


C_COLUMNS = '''enum { COL_ID, COL_NAME, COL_I8, COL_I16, COL_I32, COL_F32, COL_F64, COL_FLAG, COL_RAW, COL_DAY, COL_AT,
       COL_LOCAL, COL_AMOUNT, COL_INTS, COL_TAGS, NCOLS };'''

C_INIT = '''  DvColumn *ints_item = calloc(1, sizeof *ints_item), *tags_item = calloc(1, sizeof *tags_item);
  if (!ints_item || !tags_item || !dv_column_init(ints_item, "item", DV_INT64, 1) ||
      !dv_column_init(tags_item, "item", DV_UTF8, 0) ||
      !dv_column_init(&r->cols[COL_ID], "id", DV_INT64, 0) ||
      !dv_column_init(&r->cols[COL_NAME], "name", DV_UTF8, 1) ||
      !dv_column_init(&r->cols[COL_I8], "i8", DV_INT8, 1) ||
      !dv_column_init(&r->cols[COL_I16], "i16", DV_INT16, 1) ||
      !dv_column_init(&r->cols[COL_I32], "i32", DV_INT32, 1) ||
      !dv_column_init(&r->cols[COL_F32], "f32", DV_FLOAT32, 1) ||
      !dv_column_init(&r->cols[COL_F64], "f64", DV_FLOAT64, 1) ||
      !dv_column_init(&r->cols[COL_FLAG], "flag", DV_BOOL_FMT, 1) ||
      !dv_column_init(&r->cols[COL_RAW], "raw", DV_BINARY, 1) ||
      !dv_column_init(&r->cols[COL_DAY], "day", DV_DATE32, 1) ||
      !dv_column_init(&r->cols[COL_AT], "at", "tsu:UTC", 1) ||
      !dv_column_init(&r->cols[COL_LOCAL], "local", "tsu:", 1) ||
      !dv_column_init(&r->cols[COL_AMOUNT], "amount", "d:12,2", 1) ||
      !dv_list_init(&r->cols[COL_INTS], "ints", 1, ints_item) ||
      !dv_list_init(&r->cols[COL_TAGS], "tags", 1, tags_item)) {'''

C_ROW = '''    int ok = dv_append_int64(&r->cols[COL_ID], id);
    if (id % 10 == 0) {
      for (int c = COL_NAME; c < NCOLS; c++) ok = ok && dv_append_null(&r->cols[c]);
      if (!ok) return fail(DATIVO_ERROR, "out of memory");
      continue;
    }
    char amount[48];
    snprintf(text, sizeof text, "%s-%" PRId64, r->prefix, id);
    snprintf(amount, sizeof amount, "-%" PRId64 ".%02d", id, (int)(id % 100));
    const uint8_t raw[3] = {(uint8_t)id, 0, 255};
    /* 2026-03-29 00:30 +01:00 plus id hours; 2026-01-01 12:00 (wall clock) plus id seconds */
    int64_t at = ((int64_t)dv_days_from_civil(2026, 3, 29) * 86400 - 1800 + id * 3600) * 1000000;
    int64_t local = ((int64_t)dv_days_from_civil(2026, 1, 1) * 86400 + 12 * 3600 + id) * 1000000;
    ok = ok && dv_append_string(&r->cols[COL_NAME], text) && dv_append_int8(&r->cols[COL_I8], (int8_t)(id % 100)) &&
         dv_append_int16(&r->cols[COL_I16], (int16_t)id) && dv_append_int32(&r->cols[COL_I32], (int32_t)(id * 1000)) &&
         dv_append_float32(&r->cols[COL_F32], (float)id / 4) && dv_append_float64(&r->cols[COL_F64], (double)id / 8) &&
         dv_append_bool(&r->cols[COL_FLAG], id % 2 == 0) && dv_append_binary(&r->cols[COL_RAW], raw, 3) &&
         dv_append_date32(&r->cols[COL_DAY], dv_days_from_civil(2026, 1, 1) + (int32_t)id) &&
         dv_append_timestamp_us(&r->cols[COL_AT], at) && dv_append_timestamp_us(&r->cols[COL_LOCAL], local) &&
         dv_append_decimal(&r->cols[COL_AMOUNT], amount);
    for (int64_t j = 0; j < id % 4; j++) ok = ok && dv_append_int64(r->cols[COL_INTS].item, id * 10 + j);
    if (id % 7 == 0) ok = ok && dv_append_null(r->cols[COL_INTS].item);
    ok = ok && dv_list_end(&r->cols[COL_INTS]);
    if (id % 5 == 0) {
      ok = ok && dv_append_null(&r->cols[COL_TAGS]);
    } else {
      ok = ok && dv_append_string(r->cols[COL_TAGS].item, r->prefix) && dv_list_end(&r->cols[COL_TAGS]);
    }'''


def edit_c(src):
    """What a newcomer changes in the C scaffold's own file (not dativo_sdk.h): a string config
    key and columns of every type the helpers build."""
    s = src.read_text()
    s = s.replace("enum { COL_ID, COL_NAME, NCOLS };", C_COLUMNS)
    s = s.replace("  int have_state;           /* a state was given in the context, or a batch was returned */",
                  "  int have_state;           /* a state was given in the context, or a batch was returned */\n"
                  "  char prefix[64];          /* config: prefix */")
    start = s.index("  if (!dv_column_init(&r->cols[COL_ID]")
    end = s.index("{\n", start) + 2
    s = s[:start] + C_INIT + "\n" + s[end:]
    s = s.replace('static const char *const keys[] = {"rows", "batch_size", NULL};',
                  'static const char *const keys[] = {"rows", "batch_size", "prefix", NULL};\n  const char *prefix = "row";')
    s = s.replace("dv_cfg_int(&cfg, \"batch_size\", 1000, 1, MAX_BATCH_SIZE, &r->batch_size, err, sizeof err);",
                  "dv_cfg_int(&cfg, \"batch_size\", 1000, 1, MAX_BATCH_SIZE, &r->batch_size, err, sizeof err) &&\n"
                  "           dv_cfg_string(&cfg, \"prefix\", \"row\", &prefix, err, sizeof err);\n"
                  "  if (ok) snprintf(r->prefix, sizeof r->prefix, \"%s\", prefix);")
    start = s.index("    int ok = dv_append_int64(&r->cols[COL_ID], id);")
    end = s.index("    if (!ok) return fail(DATIVO_ERROR, \"", start)
    s = s[:start] + C_ROW + "\n" + s[end:]
    s = s.replace("char text[32];", "char text[96];")
    src.write_text(s)
