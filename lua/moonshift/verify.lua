-- Verification library for companions and hooks: checks on the schema and data via ctx.db.
--
-- Example, in 0007_add_email.lua:
--   local verify = require("moonshift.verify")
--   return { verify = function(ctx)
--     verify.column(ctx, "users", "email", { type = "text", nullable = false })
--     verify.index_exists(ctx, "users_email_key", { valid = true, unique = true })
--     verify.no_rows(ctx, "SELECT id FROM users WHERE email IS NULL")
--   end }
--
-- Every function takes ctx first and uses only ctx.db (query, one, value). Names go to the
-- server as $1 parameters, never into SQL text. A relation or function name may be written
-- as it is stored (`Weird "Name"`, `MixedCase`) or as SQL would spell it (`app.users`,
-- `"Weird ""Name"""`); the stored spelling is tried first, unqualified names follow the
-- search_path. A failed check raises errors.new("verify", message, { check, expected, found,
-- file, line }) with level 0; misuse (a wrong argument) raises a plain error.
local errors = require("moonshift.errors")
local pg = require("moonshift.pg")

local fmt = string.format
local concat = table.concat

local verify = {}

local THIS_SOURCE = debug.getinfo(1, "S").source

-- Relation kinds by pg_class.relkind, for messages and for what each check accepts.
local RELKIND = {
  r = "table", p = "partitioned table", f = "foreign table", v = "view",
  m = "materialized view", i = "index", I = "partitioned index", S = "sequence",
  c = "composite type", t = "TOAST table",
}
local TABLE_KINDS = { r = true, p = true, f = true }
local COLUMN_KINDS = { r = true, p = true, f = true, v = true, m = true, c = true }
local COUNT_KINDS = { r = true, p = true, f = true, v = true, m = true }
local INDEX_KINDS = { i = true, I = true }

local CONTYPE = {
  ["primary key"] = "p", ["foreign key"] = "f", unique = "u", check = "c", exclusion = "x",
  pk = "p", fk = "f", exclude = "x",
}
local CONTYPE_NAME = {
  p = "primary key", f = "foreign key", u = "unique", c = "check", x = "exclusion",
  t = "constraint trigger", n = "not null",
}

-- Spellings of built-in types mapped to what format_type() prints.
local TYPE_ALIAS = {
  int = "integer", int4 = "integer", integer = "integer", serial = "integer",
  serial4 = "integer",
  bigint = "bigint", int8 = "bigint", bigserial = "bigint", serial8 = "bigint",
  smallint = "smallint", int2 = "smallint", smallserial = "smallint", serial2 = "smallint",
  bool = "boolean", boolean = "boolean",
  varchar = "character varying", ["character varying"] = "character varying",
  char = "character", character = "character", bpchar = "character",
  timestamptz = "timestamp with time zone",
  ["timestamp with time zone"] = "timestamp with time zone",
  timestamp = "timestamp without time zone",
  ["timestamp without time zone"] = "timestamp without time zone",
  timetz = "time with time zone", ["time with time zone"] = "time with time zone",
  time = "time without time zone", ["time without time zone"] = "time without time zone",
  float8 = "double precision", float = "double precision", double = "double precision",
  ["double precision"] = "double precision", float4 = "real", real = "real",
  numeric = "numeric", decimal = "numeric",
  varbit = "bit varying", ["bit varying"] = "bit varying",
}

local MAX_SQL_SHOWN = 80
local MAX_ROWS_SHOWN = 5

-- Misuse checks -------------------------------------------------------------------------

local function check_ctx(ctx)
  if type(ctx) ~= "table" or type(ctx.db) ~= "table" and type(ctx.db) ~= "userdata" then
    error("verify: the first argument must be the hook's ctx (with ctx.db)", 3)
  end
  return ctx.db
end

local function check_string(v, what)
  if type(v) ~= "string" or v == "" then
    error(fmt("verify: %s must be a non-empty string, not %s", what,
      v == "" and "an empty string" or type(v)), 3)
  end
end

local function check_opts(opts, allowed, fn)
  if opts == nil then return {} end
  if type(opts) ~= "table" then
    error(fmt("verify.%s: options must be a table, not a %s", fn, type(opts)), 3)
  end
  for k in pairs(opts) do
    if not allowed[k] then
      error(fmt("verify.%s: unknown option %s", fn, tostring(k)), 3)
    end
  end
  return opts
end

-- Failures ------------------------------------------------------------------------------

-- The first stack frame outside this file: the hook line that called the check.
local function caller()
  for level = 3, 40 do
    local info = debug.getinfo(level, "Sl")
    if not info then return nil end
    if info.source ~= THIS_SOURCE and info.what ~= "C" then
      return info.short_src, info.currentline
    end
  end
  return nil
end

local function fail(check, message, expected, found)
  local file, line = caller()
  error(errors.new("verify", message, {
    check = check, expected = expected, found = found, file = file, line = line,
  }), 0)
end

-- Rendering values compactly ------------------------------------------------------------

local function shorten_sql(sql)
  local s = sql:gsub("%s+", " "):gsub("^ ", ""):gsub(" $", "")
  if #s > MAX_SQL_SHOWN then s = s:sub(1, MAX_SQL_SHOWN - 3) .. "..." end
  return (fmt("%q", s):gsub("\\\n", "\\n"))
end

local render

local function sorted_keys(t)
  local keys = {}
  for k in pairs(t) do keys[#keys + 1] = k end
  table.sort(keys, function(a, b)
    if type(a) == type(b) and (type(a) == "number" or type(a) == "string") then return a < b end
    return type(a) < type(b)
  end)
  return keys
end

local function render_table(t, order, depth)
  if depth > 3 then return "{...}" end
  local parts, seen = {}, {}
  local n = #t
  for i = 1, n do
    parts[#parts + 1] = render(t[i], depth + 1)
    seen[i] = true
  end
  local keys = {}
  for _, k in ipairs(order or {}) do
    if t[k] ~= nil and not seen[k] then keys[#keys + 1] = k; seen[k] = true end
  end
  for _, k in ipairs(sorted_keys(t)) do
    if not seen[k] then keys[#keys + 1] = k end
  end
  for _, k in ipairs(keys) do
    local key = type(k) == "string" and k:match("^[%a_][%w_]*$") and k or ("[" .. render(k) .. "]")
    parts[#parts + 1] = key .. "=" .. render(t[k], depth + 1)
  end
  return "{" .. concat(parts, ", ") .. "}"
end

render = function(v, depth, order)
  if v == nil or v == pg.null then return "NULL" end
  if type(v) == "string" then return (fmt("%q", v):gsub("\\\n", "\\n")) end
  if type(v) == "table" then return render_table(v, order, depth or 0) end
  return tostring(v)
end

local function render_rows(rows, columns)
  local parts = {}
  for i = 1, math.min(#rows, MAX_ROWS_SHOWN) do
    parts[i] = render(rows[i], 1, columns)
  end
  if #rows > MAX_ROWS_SHOWN then parts[#parts + 1] = fmt("... %d more", #rows - MAX_ROWS_SHOWN) end
  return "{" .. concat(parts, ", ") .. "}"
end

local function article(word)
  local vowel = word:find("^[aeio]") or word:find("^u") and not word:find("^uni")
  return (vowel and "an " or "a ") .. word
end

local function plural(n, word)
  return fmt("%d %s%s", n, word, n == 1 and "" or "s")
end

-- Names ---------------------------------------------------------------------------------

-- Splits a qualified name the way the server does (unquoted parts fold to lower case, ""
-- is a quote inside quotes); nil when it is not valid SQL name syntax.
local function parse_name(s)
  local parts, i, n = {}, 1, #s
  while true do
    i = s:match("^%s*()", i)
    local part
    if s:sub(i, i) == '"' then
      local buf = {}
      i = i + 1
      while true do
        local q = s:find('"', i, true)
        if not q then return nil end
        buf[#buf + 1] = s:sub(i, q - 1)
        if s:sub(q + 1, q + 1) == '"' then
          buf[#buf + 1] = '"'
          i = q + 2
        else
          i = q + 1
          break
        end
      end
      part = concat(buf)
    else
      local stop = s:match("^[^%s%.\"]*()", i)
      part = s:sub(i, stop - 1):gsub("%u", string.lower)
      i = stop
    end
    if part == "" then return nil end
    parts[#parts + 1] = part
    i = s:match("^%s*()", i)
    if i > n then return parts end
    if s:sub(i, i) ~= "." then return nil end
    i = i + 1
  end
end

-- The (schema, name) pairs a user's name may mean, most literal first; schema "" means
-- "whatever the search_path finds".
local function candidates(s)
  local out = { { "", s } }
  local parts = parse_name(s)
  if parts and #parts == 1 and parts[1] ~= s then
    out[#out + 1] = { "", parts[1] }
  elseif parts and #parts == 2 then
    out[#out + 1] = { parts[1], parts[2] }
  end
  return out
end

-- Names that are never qualified (columns, constraints): as written, then as SQL spells it.
local function simple_candidates(s)
  local out = { s }
  local parts = parse_name(s)
  if parts and #parts == 1 and parts[1] ~= s then out[2] = parts[1] end
  return out
end

local RELATION_SQL = [[
SELECT c.oid AS oid, n.nspname AS schema, c.relname AS name, c.relkind AS kind
FROM pg_catalog.pg_class c
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE c.relname = $2
  AND CASE WHEN $1 = '' THEN pg_catalog.pg_table_is_visible(c.oid) ELSE n.nspname = $1 END]]

-- The pg_class row a name means, or nil.
local function find_relation(db, name)
  for _, cand in ipairs(candidates(name)) do
    local row = db:one(RELATION_SQL, cand[1], cand[2])
    if row then return row end
  end
  return nil
end

-- The relation a name means, of one of `kinds`; fails the check otherwise.
local function relation(db, check, name, kinds, what)
  local rel = find_relation(db, name)
  if not rel then
    fail(check, fmt("%s %s does not exist", what, name), what, nil)
  end
  if not kinds[rel.kind] then
    local found = RELKIND[rel.kind] or ("relation of kind " .. rel.kind)
    fail(check, fmt("%s is %s, not %s", name, article(found), article(what)), what, found)
  end
  return rel
end

-- Types ---------------------------------------------------------------------------------

-- A type spelling as { base, modifier, array }: "varchar(255)" -> character varying, (255);
-- "timestamp(3) with time zone" -> timestamp with time zone, (3).
local function parse_type(s)
  s = s:gsub("%s+", " "):gsub("^ ", ""):gsub(" $", "")
  local array = false
  s = s:gsub("%s*%[%d*%]", function() array = true; return "" end)
  local modifier = ""
  s = s:gsub("%s*(%b())", function(m)
    modifier = m:gsub("%s+", "")
    return ""
  end, 1)
  s = s:gsub("%s+", " "):gsub("^ ", ""):gsub(" $", "")
  local base = s
  if not base:find('"', 1, true) then base = base:lower() end
  base = TYPE_ALIAS[base] or base
  return { base = base, modifier = modifier, array = array }
end

local function type_matches(expected, found)
  local e, f = parse_type(expected), parse_type(found)
  if e.base ~= f.base or e.array ~= f.array then return false end
  return e.modifier == "" or e.modifier == f.modifier
end

-- "int, varchar" -> "integer, character varying", for comparing argument lists.
local function canonical_args(s)
  local out = {}
  for arg in (s .. ","):gmatch("([^,]*),") do
    if arg:match("%S") then
      local t = parse_type(arg)
      out[#out + 1] = t.base .. t.modifier .. (t.array and "[]" or "")
    end
  end
  return concat(out, ", ")
end

-- Values --------------------------------------------------------------------------------

local function is_null(v) return v == nil or v == pg.null end

-- Whether a value from the server equals what a user wrote: numbers compare with numeric
-- text (numeric arrives as text), tables (json) compare deeply.
local function same(expected, found)
  if is_null(expected) or is_null(found) then return is_null(expected) and is_null(found) end
  if expected == found then return true end
  local te, tf = type(expected), type(found)
  if te == "number" and tf == "string" then return tonumber(found) == expected end
  if te == "string" and tf == "number" then return tonumber(expected) == found end
  if te == "table" and tf == "table" then
    for k, v in pairs(expected) do
      if not same(v, found[k]) then return false end
    end
    for k in pairs(found) do
      if expected[k] == nil then return false end
    end
    return true
  end
  return false
end

-- The column names of a result: rows.columns when the driver gives them, else sorted keys.
local function columns_of(rows)
  if type(rows.columns) == "table" then return rows.columns end
  return rows[1] and sorted_keys(rows[1]) or {}
end

-- Whether an expected row (by name, or positional) matches a found row.
local function row_matches(expected, found, columns)
  if type(expected) ~= "table" then
    return #columns == 1 and same(expected, found[columns[1]])
  end
  if expected[1] ~= nil then
    if #expected ~= #columns then return false end
    for i, col in ipairs(columns) do
      if not same(expected[i], found[col]) then return false end
    end
    return true
  end
  local n = 0
  for k, v in pairs(expected) do
    n = n + 1
    if found[k] == nil or not same(v, found[k]) then return false end
  end
  return n == #columns
end

-- Public checks -------------------------------------------------------------------------

--- Checks that a table (plain, partitioned or foreign) exists.
-- Example: `verify.table_exists(ctx, "app.users")`
-- @param ctx table: the hook's ctx
-- @param name string: table name, optionally schema-qualified
-- @return true, table: { oid, schema, name, kind }; raises a verify error otherwise
function verify.table_exists(ctx, name)
  local db = check_ctx(ctx)
  check_string(name, "the table name")
  return true, relation(db, "table_exists", name, TABLE_KINDS, "table")
end

local COLUMN_OPTS = { type = true, nullable = true, default = true }

local COLUMN_SQL = [[
SELECT a.attname AS name,
       pg_catalog.format_type(a.atttypid, a.atttypmod) AS type,
       NOT a.attnotnull AS nullable,
       CASE WHEN a.attgenerated = '' THEN pg_catalog.pg_get_expr(d.adbin, d.adrelid) END
         AS "default"
FROM pg_catalog.pg_attribute a
LEFT JOIN pg_catalog.pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
WHERE a.attrelid = $1::pg_catalog.oid AND a.attname = $2 AND a.attnum > 0
  AND NOT a.attisdropped]]

--- Checks that a column exists and, optionally, its type, nullability and default.
-- Example: `verify.column(ctx, "users", "email", { type = "text", nullable = false })`
-- @param ctx table: the hook's ctx
-- @param tbl string: table (or view) name, optionally schema-qualified
-- @param col string: column name
-- @param opts table|nil: type (string: "varchar" matches any length, "varchar(255)" only
--   that one; aliases such as int/int4/integer are accepted), nullable (boolean),
--   default (string compared with pg_get_expr of the default; false: no default)
-- @return true, table: { name, type, nullable, default }; raises a verify error otherwise
function verify.column(ctx, tbl, col, opts)
  local db = check_ctx(ctx)
  check_string(tbl, "the table name")
  check_string(col, "the column name")
  opts = check_opts(opts, COLUMN_OPTS, "column")
  if opts.type ~= nil then check_string(opts.type, "opts.type") end
  local rel = relation(db, "column", tbl, COLUMN_KINDS, "table")
  local what = fmt("column %s.%s", tbl, col)
  local found
  for _, cand in ipairs(simple_candidates(col)) do
    found = db:one(COLUMN_SQL, rel.oid, cand)
    if found then break end
  end
  if not found then fail("column", what .. " does not exist", "column", nil) end
  if found.default == pg.null then found.default = nil end
  if opts.type and not type_matches(opts.type, found.type) then
    fail("column", fmt("%s: expected type %s, found %s", what, opts.type, found.type),
      opts.type, found.type)
  end
  if opts.nullable ~= nil and (not opts.nullable) ~= (not found.nullable) then
    local function say(nullable) return nullable and "nullable" or "not null" end
    fail("column", fmt("%s: expected %s, found %s", what, say(opts.nullable),
      say(found.nullable)), say(opts.nullable), say(found.nullable))
  end
  if opts.default ~= nil then
    local want = opts.default
    if want == false then
      if found.default then
        fail("column", fmt("%s: expected no default, found default %s", what, found.default),
          false, found.default)
      end
    elseif not found.default or found.default ~= tostring(want) then
      fail("column", fmt("%s: expected default %s, found %s", what, tostring(want),
        found.default and ("default " .. found.default) or "no default"),
        want, found.default)
    end
  end
  return true, found
end

local INDEX_OPTS = { valid = true, unique = true, table = true }

local INDEX_SQL = [[
SELECT x.indisunique AS "unique", x.indisvalid AS valid, x.indisready AS ready,
       x.indrelid AS table_oid, n.nspname AS table_schema, c.relname AS "table",
       pg_catalog.pg_get_indexdef(x.indexrelid) AS definition
FROM pg_catalog.pg_index x
JOIN pg_catalog.pg_class c ON c.oid = x.indrelid
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE x.indexrelid = $1::pg_catalog.oid]]

--- Checks that an index exists and, optionally, that it is valid, unique, on a table.
-- Example: `verify.index_exists(ctx, "users_email_idx", { valid = true, table = "users" })`
-- @param ctx table: the hook's ctx
-- @param name string: index name, optionally schema-qualified
-- @param opts table|nil: valid (true: indisvalid and indisready, i.e. a CREATE INDEX
--   CONCURRENTLY that finished), unique (boolean), table (name of the indexed table)
-- @return true, table: { name, schema, table, unique, valid, ready, definition };
--   raises a verify error otherwise
function verify.index_exists(ctx, name, opts)
  local db = check_ctx(ctx)
  check_string(name, "the index name")
  opts = check_opts(opts, INDEX_OPTS, "index_exists")
  local rel = relation(db, "index_exists", name, INDEX_KINDS, "index")
  local idx = assert(db:one(INDEX_SQL, rel.oid))
  local what = "index " .. name
  if opts.table ~= nil then
    check_string(opts.table, "opts.table")
    local t = find_relation(db, opts.table)
    if not t or t.oid ~= idx.table_oid then
      local on = fmt("%s.%s", idx.table_schema, idx.table)
      fail("index_exists", fmt("%s: expected on table %s, found on table %s", what, opts.table,
        on), opts.table, on)
    end
  end
  if opts.unique ~= nil and (not opts.unique) ~= (not idx.unique) then
    local function say(u) return u and "unique" or "not unique" end
    fail("index_exists", fmt("%s: expected %s, found %s", what, say(opts.unique),
      say(idx.unique)), say(opts.unique), say(idx.unique))
  end
  if opts.valid and not (idx.valid and idx.ready) then
    local state = idx.valid and "not ready" or "invalid"
    fail("index_exists", fmt("%s: expected valid, found %s (a CREATE INDEX CONCURRENTLY that " ..
      "failed or is still running leaves it so; drop it and create it again)", what, state),
      "valid", state)
  end
  return true, {
    name = rel.name, schema = rel.schema, table = idx.table, unique = idx.unique,
    valid = idx.valid, ready = idx.ready, definition = idx.definition,
  }
end

local CONSTRAINT_OPTS = { type = true, validated = true }

local CONSTRAINT_SQL = [[
SELECT conname AS name, contype AS type, convalidated AS validated,
       pg_catalog.pg_get_constraintdef(oid) AS definition
FROM pg_catalog.pg_constraint
WHERE conrelid = $1::pg_catalog.oid AND conname = $2]]

--- Checks that a table has a constraint and, optionally, its type and that it is validated.
-- Example: `verify.constraint_exists(ctx, "orders", "orders_user_fk",
--   { type = "foreign key", validated = true })`
-- @param ctx table: the hook's ctx
-- @param tbl string: table name, optionally schema-qualified
-- @param name string: constraint name
-- @param opts table|nil: type ("primary key", "foreign key", "unique", "check",
--   "exclusion"), validated (true: not NOT VALID, i.e. VALIDATE CONSTRAINT ran)
-- @return true, table: { name, type, validated, definition }; raises a verify error otherwise
function verify.constraint_exists(ctx, tbl, name, opts)
  local db = check_ctx(ctx)
  check_string(tbl, "the table name")
  check_string(name, "the constraint name")
  opts = check_opts(opts, CONSTRAINT_OPTS, "constraint_exists")
  local want
  if opts.type ~= nil then
    check_string(opts.type, "opts.type")
    want = CONTYPE[opts.type:lower():gsub("[_%s]+", " ")]
    if not want then
      error(fmt("verify.constraint_exists: unknown constraint type %q (use primary key, " ..
        "foreign key, unique, check or exclusion)", opts.type), 2)
    end
  end
  local rel = relation(db, "constraint_exists", tbl, TABLE_KINDS, "table")
  local what = fmt("constraint %s.%s", tbl, name)
  local con
  for _, cand in ipairs(simple_candidates(name)) do
    con = db:one(CONSTRAINT_SQL, rel.oid, cand)
    if con then break end
  end
  if not con then fail("constraint_exists", what .. " does not exist", "constraint", nil) end
  local kind = CONTYPE_NAME[con.type] or con.type
  if want and want ~= con.type then
    fail("constraint_exists", fmt("%s: expected %s constraint, found %s constraint", what,
      article(CONTYPE_NAME[want]), article(kind)), CONTYPE_NAME[want], kind)
  end
  if opts.validated and not con.validated then
    fail("constraint_exists", fmt("%s: expected validated, found NOT VALID (run ALTER TABLE " ..
      "... VALIDATE CONSTRAINT)", what), "validated", "not valid")
  end
  return true, { name = con.name, type = kind, validated = con.validated,
    definition = con.definition }
end

local FUNCTION_OPTS = { args = true }

local FUNCTION_SQL = [[
SELECT pg_catalog.pg_get_function_identity_arguments(p.oid) AS args,
       pg_catalog.oidvectortypes(p.proargtypes) AS types,
       n.nspname AS schema, p.proname AS name
FROM pg_catalog.pg_proc p
JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
WHERE p.proname = $2
  AND CASE WHEN $1 = '' THEN pg_catalog.pg_function_is_visible(p.oid) ELSE n.nspname = $1 END
ORDER BY 1]]

--- Checks that a function (or procedure, or aggregate) exists, optionally with given
-- argument types.
-- Example: `verify.function_exists(ctx, "app.touch_updated_at", { args = "" })`
-- @param ctx table: the hook's ctx
-- @param name string: function name, optionally schema-qualified
-- @param opts table|nil: args (string such as "integer, text", compared with
--   pg_get_function_identity_arguments, with or without argument names; "" for none)
-- @return true, table: { schema, name, args }; raises a verify error otherwise
function verify.function_exists(ctx, name, opts)
  local db = check_ctx(ctx)
  check_string(name, "the function name")
  opts = check_opts(opts, FUNCTION_OPTS, "function_exists")
  if opts.args ~= nil and type(opts.args) ~= "string" then
    error("verify.function_exists: opts.args must be a string such as \"integer, text\"", 2)
  end
  local found
  for _, cand in ipairs(candidates(name)) do
    found = db:query(FUNCTION_SQL, cand[1], cand[2])
    if found[1] then break end
  end
  if not found[1] then
    fail("function_exists", fmt("function %s does not exist", name), "function", nil)
  end
  if opts.args == nil then
    local f = found[1]
    return true, { schema = f.schema, name = f.name, args = f.args }
  end
  local want = canonical_args(opts.args)
  local seen = {}
  for _, f in ipairs(found) do
    if canonical_args(f.types) == want or canonical_args(f.args) == want
      or f.args:gsub("%s+", " ") == opts.args:gsub("%s+", " ") then
      return true, { schema = f.schema, name = f.name, args = f.args }
    end
    seen[#seen + 1] = "(" .. f.args .. ")"
  end
  local list = concat(seen, ", ")
  fail("function_exists", fmt("function %s: expected arguments (%s), found %s", name, opts.args,
    list), opts.args, list)
end

local EXTENSION_OPTS = { version = true }

--- Checks that an extension is installed in the database, optionally at a version.
-- Example: `verify.extension(ctx, "pgcrypto", { version = "1.3" })`
-- @param ctx table: the hook's ctx
-- @param name string: extension name
-- @param opts table|nil: version (string, compared exactly with pg_extension.extversion)
-- @return true, string: the installed version; raises a verify error otherwise
function verify.extension(ctx, name, opts)
  local db = check_ctx(ctx)
  check_string(name, "the extension name")
  opts = check_opts(opts, EXTENSION_OPTS, "extension")
  local version = db:value("SELECT extversion FROM pg_catalog.pg_extension WHERE extname = $1",
    name)
  if not version then
    local available = db:value("SELECT default_version FROM pg_catalog.pg_available_extensions " ..
      "WHERE name = $1", name)
    fail("extension", fmt("extension %s is not installed (%s)", name, available
      and ("available on the server: version " .. available) or "not available on the server"),
      opts.version or "installed", nil)
  end
  if opts.version ~= nil and tostring(opts.version) ~= version then
    fail("extension", fmt("extension %s: expected version %s, found %s", name,
      tostring(opts.version), version), tostring(opts.version), version)
  end
  return true, version
end

local ROW_COUNT_OPTS = { min = true, max = true, equals = true }

-- The count runs server-side through query_to_xml, so the table's name reaches SQL only as
-- a regclass the server quotes itself.
local ROW_COUNT_SQL = [[
SELECT pg_catalog.substring(pg_catalog.query_to_xml(
         pg_catalog.format('SELECT count(*) AS n FROM %s', $1::pg_catalog.oid::pg_catalog.regclass),
         false, false, '')::pg_catalog.text, '<n>(\d+)</n>')::pg_catalog.int8 AS n]]

--- Counts the rows of a table (or view) and checks the count.
-- Example: `local n = verify.row_count(ctx, "users", { min = 1 })`
-- @param ctx table: the hook's ctx
-- @param tbl string: table name, optionally schema-qualified
-- @param opts table|nil: min, max, equals (integers)
-- @return integer: the count; raises a verify error when it is out of bounds
function verify.row_count(ctx, tbl, opts)
  local db = check_ctx(ctx)
  check_string(tbl, "the table name")
  opts = check_opts(opts, ROW_COUNT_OPTS, "row_count")
  for _, k in ipairs({ "min", "max", "equals" }) do
    if opts[k] ~= nil and math.type(opts[k]) ~= "integer" then
      error(fmt("verify.row_count: opts.%s must be an integer", k), 2)
    end
  end
  local rel = relation(db, "row_count", tbl, COUNT_KINDS, "table")
  local n = assert(math.tointeger(db:value(ROW_COUNT_SQL, rel.oid)))
  local what = "table " .. tbl
  if opts.equals and n ~= opts.equals then
    fail("row_count", fmt("%s: expected exactly %s, found %d", what,
      plural(opts.equals, "row"), n), opts.equals, n)
  end
  if opts.min and n < opts.min then
    fail("row_count", fmt("%s: expected at least %s, found %d", what, plural(opts.min, "row"),
      n), opts.min, n)
  end
  if opts.max and n > opts.max then
    fail("row_count", fmt("%s: expected at most %s, found %d", what, plural(opts.max, "row"),
      n), opts.max, n)
  end
  return n
end

--- Runs a query and fails if it returns any row (e.g. rows breaking an invariant).
-- Example: `verify.no_rows(ctx, "SELECT id FROM users WHERE email !~ $1", "@")`
-- @param ctx table: the hook's ctx
-- @param sql string: the query, with $1 parameters
-- @param ... the parameters
-- @return true; raises a verify error showing the first row otherwise
function verify.no_rows(ctx, sql, ...)
  local db = check_ctx(ctx)
  check_string(sql, "the query")
  local rows = db:query(sql, ...)
  if #rows > 0 then
    local first = render(rows[1], 1, columns_of(rows))
    fail("no_rows", fmt("expected 0 rows from %s, found %d (first: %s)", shorten_sql(sql),
      #rows, first), 0, #rows)
  end
  return true
end

--- Runs a query and compares its result with what is expected.
-- Examples: `verify.query_equals(ctx, "SELECT count(*) FROM users WHERE NOT active", 0)`,
-- `verify.query_equals(ctx, "SELECT id, name FROM plans ORDER BY id",
--   { { id = 1, name = "free" }, { id = 2, name = "pro" } })`
-- @param ctx table: the hook's ctx
-- @param sql string: the query, with $1 parameters
-- @param expected a scalar (nil or pg.null for NULL) compared with the single value of a
--   one-row, one-column result; or an array of rows compared in order, each a table keyed
--   by column name (all columns), a positional array, or a scalar for a one-column result.
--   Numbers equal numeric text ("10.50" == 10.5); json compares deeply.
-- @param ... the parameters
-- @return true, rows; raises a verify error showing expected and found otherwise
function verify.query_equals(ctx, sql, expected, ...)
  local db = check_ctx(ctx)
  check_string(sql, "the query")
  local rows = db:query(sql, ...)
  local columns = columns_of(rows)
  local shown = shorten_sql(sql)
  if type(expected) ~= "table" then
    if #rows == 1 and #columns == 1 then
      local v = rows[1][columns[1]]
      if same(expected, v) then return true, rows end
      fail("query_equals", fmt("query %s: expected %s, found %s", shown, render(expected),
        render(v)), expected, v)
    end
    local found = #rows ~= 1 and plural(#rows, "row") or plural(#columns, "column")
    fail("query_equals", fmt("query %s: expected a single value %s, found %s: %s", shown,
      render(expected), found, render_rows(rows, columns)), expected, rows)
  end
  if #rows ~= #expected then
    fail("query_equals", fmt("query %s: expected %s, found %d: expected %s, found %s", shown,
      plural(#expected, "row"), #rows, render_rows(expected, columns),
      render_rows(rows, columns)), expected, rows)
  end
  for i, want in ipairs(expected) do
    if not row_matches(want, rows[i], columns) then
      fail("query_equals", fmt("query %s: row %d: expected %s, found %s", shown, i,
        render(want, 1, columns), render(rows[i], 1, columns)), want, rows[i])
    end
  end
  return true, rows
end

return verify
