-- Connections to the target: application_name, redacted errors, pre-flight checks.
local pg = require("moonshift.pg")
local fs = require("moonshift.fs")
local proc = require("moonshift.proc")
local host = require("moonshift.host")
local redact = require("moonshift.redact")
local errors = require("moonshift.errors")
local conninfo = require("moonshift.conninfo")

local fmt = string.format

local db = {}

--- What every moonshift session sets (again after RESET ALL): migration files are UTF-8,
-- the server checks every second that we are still there, so a killed runner's statement
-- ends within a second instead of running on holding its locks, and a role's
-- idle_session_timeout cannot reap the run lock's session while a hook runs (14+).
-- SESSION_SETTINGS is the select list, for statements that set more in the same breath.
db.SESSION_SETTINGS = "pg_catalog.set_config('client_encoding', 'UTF8', false), " ..
  "CASE WHEN pg_catalog.current_setting('server_version_num')::int >= 140000 THEN " ..
  "pg_catalog.set_config('client_connection_check_interval', '1000', false) END, " ..
  "CASE WHEN pg_catalog.current_setting('server_version_num')::int >= 140000 THEN " ..
  "pg_catalog.set_config('idle_session_timeout', '0', false) END"
db.SESSION_SETUP = "SELECT " .. db.SESSION_SETTINGS

--- The lock_timeout of moonshift's own queries (reading and writing the tracking tables,
-- outside a migration's transaction): --lock-wait, how long moonshift waits for another
-- session's lock on what is its own, the run lock's and the tracking tables' alike; at
-- least 1 ms, since 0 would mean waiting for ever. A migration's transaction has its own,
-- --lock-timeout, its history row included; its last item gives the session this one back
-- (runner.lua).
-- @return string: e.g. "60000ms"
function db.bookkeeping_lock_timeout(cfg)
  return fmt("%dms", math.max(1, cfg.lock_wait_ms or 60000))
end

--- The application_name every connection carries, so a DBA can tell who holds what.
function db.application_name()
  return fmt("moonshift/%s/%s/%d", host.version, fs.hostname(), proc.getpid()):sub(1, 63)
end

--- The shortest password (or piece of one) db.scrub masks: shorter ones would garble
-- every message they happen to occur in, and are no secret anyway.
db.MIN_MASKED = 3

-- Every spelling of the password in a connection string, for scrubbing messages: libpq
-- quotes a malformed URI's pieces ("invalid percent-encoded token: \"s3cret%\"").
local function password_candidates(conninfo_s, extra)
  local out = {}
  for _, pw in ipairs(extra) do out[#out + 1] = pw end
  for _, pw in ipairs(conninfo.secrets(conninfo_s)) do out[#out + 1] = pw end
  local userinfo = conninfo_s:match("^%a[%w+.-]*://([^/?#]*)@")
  local pw = userinfo and userinfo:match("^[^:]*:(.*)$")
  if pw and pw ~= "" then out[#out + 1] = pw end
  for v in conninfo_s:gmatch("[Pp][Aa][Ss][Ss][Ww][Oo][Rr][Dd]%s*=%s*'([^']*)'") do
    out[#out + 1] = v
  end
  for v in conninfo_s:gmatch("[Pp][Aa][Ss][Ss][Ww][Oo][Rr][Dd]%s*=%s*([^%s&']+)") do
    out[#out + 1] = v
  end
  local more = {}
  for _, v in ipairs(out) do
    more[#more + 1] = v:gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end)
    for i = #v - 1, db.MIN_MASKED, -1 do more[#more + 1] = v:sub(1, i) end -- cut at a bad escape
  end
  for _, v in ipairs(more) do out[#out + 1] = v end
  table.sort(out, function(a, b) return #a > #b end)
  return out
end

--- A message with every password removed: redact.secrets' patterns, any password that
-- conninfo holds, and the passwords given (PGPASSWORD, say). The one scrubber: connection
-- errors, pg_dump's stderr and the run log all go through it.
-- @param msg string
-- @param conn_string string|nil: a connection string whose secrets (conninfo.secrets) go too
-- @param ... string|nil: further passwords known to be in play
-- @return string
function db.scrub(msg, conn_string, ...)
  msg = redact.secrets(msg)
  local extra = {}
  for i = 1, select("#", ...) do
    local pw = select(i, ...)
    if type(pw) == "string" then extra[#extra + 1] = pw end
  end
  for _, pw in ipairs(password_candidates(conn_string or "", extra)) do
    if #pw >= db.MIN_MASKED then
      local s, e = msg:find(pw, 1, true)
      while s do
        msg = msg:sub(1, s - 1) .. "***" .. msg:sub(e + 1)
        s, e = msg:find(pw, s + 3, true)
      end
    end
  end
  return msg
end

-- The string literals of a statement, in order: { first, last (the content, quotes
-- excluded), value (unescaped), dollar (dollar-quoted), after_password (the word before it
-- is PASSWORD) }.
-- Comments, quoted identifiers and dollar quotes are stepped over as the server would.
local function sql_literals(sqltext)
  local out, i, n, prev_word = {}, 1, #sqltext, nil
  while i <= n do
    local c = sqltext:sub(i, i)
    if c:match("%s") then
      i = i + 1
    elseif sqltext:sub(i, i + 1) == "--" then
      i = (sqltext:find("\n", i, true) or n) + 1
    elseif sqltext:sub(i, i + 1) == "/*" then
      local depth = 1
      i = i + 2
      while i <= n and depth > 0 do
        local two = sqltext:sub(i, i + 1)
        if two == "/*" then depth, i = depth + 1, i + 2
        elseif two == "*/" then depth, i = depth - 1, i + 2
        else i = i + 1 end
      end
    elseif c == "'" or ((c == "E" or c == "e") and sqltext:sub(i + 1, i + 1) == "'") then
      local escapes = c ~= "'"
      if escapes then i = i + 1 end
      local first, chars = i + 1, {}
      i = i + 1
      while i <= n do
        local d = sqltext:sub(i, i)
        if d == "'" then
          if sqltext:sub(i + 1, i + 1) ~= "'" then break end
          i = i + 1
        elseif d == "\\" and escapes and i < n then
          i = i + 1
          d = sqltext:sub(i, i)
        end
        chars[#chars + 1] = d
        i = i + 1
      end
      out[#out + 1] = { first = first, last = i - 1, value = table.concat(chars),
        after_password = prev_word == "password" }
      prev_word = nil
      i = i + 1
    elseif c == '"' then
      local close = sqltext:find('"', i + 1, true) or n
      prev_word = sqltext:sub(i + 1, close - 1):lower()
      i = close + 1
    elseif c == "$" and sqltext:match("^%$[%a_]*[%w_]*%$", i) then
      local tag = sqltext:match("^%$[%a_]*[%w_]*%$", i)
      local close = sqltext:find(tag, i + #tag, true)
      out[#out + 1] = { first = i + #tag, last = (close or n + 1) - 1,
        value = sqltext:sub(i + #tag, (close or n + 1) - 1), dollar = true,
        after_password = prev_word == "password" }
      prev_word = nil
      i = close and close + #tag or n + 1
    else
      local word = sqltext:match("^[%a_][%w_$]*", i)
      if word then
        prev_word = word:lower()
        i = i + #word
      else
        prev_word = nil
        i = i + 1
      end
    end
  end
  return out
end

--- A statement fit to print and log: the literal after PASSWORD (CREATE/ALTER ROLE ...
-- [ENCRYPTED] PASSWORD '...', a user mapping's OPTIONS (password '...')) and every
-- secret in a literal holding a connection string (CREATE SUBSCRIPTION ... CONNECTION
-- '... password=...') replaced by ***, and those secrets, to scrub them from the server's
-- messages about the statement too (db.scrub(msg, nil, table.unpack(secrets))).
-- @param sqltext string
-- @param depth integer|nil: how deep in nested literals (bodies of SQL) this is; internal
-- @return string, array of strings
function db.redact_sql(sqltext, depth)
  depth = depth or 1
  local secrets, parts, pos = {}, {}, 1
  for _, lit in ipairs(sql_literals(sqltext)) do
    local masked
    local has_password = lit.value:lower():find("password", 1, true)
    -- a body of SQL (DO $$ ... EXECUTE 'ALTER ROLE ... PASSWORD ...' $$, a function's)
    local inner, inner_secrets
    if has_password and not lit.after_password and depth < 4 then
      inner, inner_secrets = db.redact_sql(lit.value, depth + 1)
    end
    if lit.after_password then
      masked = "***"
      secrets[#secrets + 1] = lit.value
    elseif inner_secrets and #inner_secrets > 0 then
      for _, v in ipairs(inner_secrets) do secrets[#secrets + 1] = v end
      masked = lit.dollar and inner or inner:gsub("'", "''")
    elseif has_password or lit.value:find("^%s*postgres[%a]*://") then
      -- a connection string: masked as libpq reads it; one libpq cannot read (the server
      -- quotes its pieces: missing "=" after "..."), from the password on
      local info = conninfo.parse(lit.value)
      local value
      if info then
        for _, v in ipairs(info.secrets) do secrets[#secrets + 1] = v end
        value = info.display
      else
        local _, after = lit.value:lower():find("password%s*=%s*")
        if after then
          local rest = lit.value:sub(after + 1)
          secrets[#secrets + 1] = rest
          for word in rest:gmatch("[^%s'\\]+") do secrets[#secrets + 1] = word end
          value = lit.value:sub(1, after) .. "***"
        else
          -- a URI libpq splits elsewhere than meant: the password up to the last "@", and
          -- the pieces libpq would take for a host or port
          local pw = lit.value:match("^%s*%a[%w+.-]*://[^:/]*:(.*)@")
          if pw then
            secrets[#secrets + 1] = pw
            for piece in pw:gmatch("[^@/?]+") do secrets[#secrets + 1] = piece end
          end
          value = redact.secrets(lit.value)
        end
      end
      if value ~= lit.value then
        masked = lit.dollar and value or value:gsub("'", "''")
      end
    end
    if masked then
      parts[#parts + 1] = sqltext:sub(pos, lit.first - 1) .. masked
      pos = lit.last + 1
    end
  end
  parts[#parts + 1] = sqltext:sub(pos)
  local out = table.concat(parts)
  if #secrets > 0 then out = db.scrub(out, nil, table.unpack(secrets)) end
  return out, secrets
end

-- Whether a connection leaves the machine: TCP to an address other than loopback.
local function crosses_network(info)
  local name = info.host or ""
  if name == "" or name:sub(1, 1) == "/" or name:sub(1, 1) == "@" then return false end
  local addr = info.hostaddr or name
  return not (name == "localhost" or addr:match("^127%.") or addr == "::1")
end

--- Starts connecting to the configured database on a thread of its own, so that the server
-- sets up the session while moonshift reads the migrations; db.connect finishes it.
-- @return pending (close it to give up)
function db.connect_begin(cfg)
  return pg.connect_begin(cfg.database, { application_name = db.application_name() })
end

--- Connects to the configured database (or finishes what db.connect_begin started). A
-- connection that crosses a network without TLS is refused with `require_tls`, and
-- otherwise reported through `warn` (when given).
-- @return conn, nil, pooled ({ server_pid, client_pid } when a connection pooler is in
--   between, else nil) | nil, err (kind connect)
function db.connect(cfg, warn, pending)
  local conn, err
  if pending then
    conn, err = pending:wait()
  else
    conn, err = pg.connect(cfg.database, { application_name = db.application_name() })
  end
  if not conn then
    local msg = db.scrub(tostring(err.message or err), cfg.database):gsub("%s+$", "")
    return nil, errors.new("connect", fmt("cannot connect to %s: %s",
      db.describe_target(cfg), msg), { cause = err })
  end
  -- A pooler (PgBouncer, Pgpool, RDS Proxy) answers the startup itself and hands libpq a
  -- backend key of its own, so the pid libpq was given is not the server's.
  local rows, perr = conn:query("SELECT pg_catalog.pg_backend_pid() AS pid")
  if not rows then
    conn:close()
    return nil, errors.new("connect", "cannot query the server: " .. tostring(perr))
  end
  local pooled = rows[1].pid ~= conn:backend_pid() and
    { server_pid = rows[1].pid, client_pid = conn:backend_pid() } or nil
  -- Migration files are UTF-8 whatever the server's encoding; our SQL is schema-qualified;
  -- our queries wait for a lock at most --lock-wait (db.bookkeeping_lock_timeout).
  -- Behind a pooler a session setting would stay on a server connection others then use:
  -- only what the pooler itself tracks per client (application_name, client_encoding).
  local _, serr = conn:exec("SET application_name = " ..
    conn:escape_literal(db.application_name()) .. "; " ..
    (pooled and "SET client_encoding = 'UTF8'" or db.SESSION_SETUP ..
      ", pg_catalog.set_config('lock_timeout', " ..
      conn:escape_literal(db.bookkeeping_lock_timeout(cfg)) .. ", false)"))
  if serr then
    conn:close()
    return nil, errors.new("connect", "cannot configure session: " .. tostring(serr))
  end
  local info = conn:info()
  if not info.ssl and crosses_network(info) then
    local what = fmt("the connection to %s:%s is NOT encrypted", info.host, tostring(info.port))
    if cfg.require_tls then
      conn:close()
      return nil, errors.new("connect", what .. " and TLS is required (require_tls); " ..
        "connect with sslmode=require or verify-full")
    end
    if warn then warn(what .. " (sslmode=require or verify-full would refuse this)") end
  end
  return conn, nil, pooled
end

--- The connection string for messages, status --json and the run log: every value of a
-- keyword libpq marks secret masked (conninfo.display).
function db.describe_target(cfg)
  if cfg.database == "" then return "the default database (PG* environment)" end
  return conninfo.display(cfg.database)
end

--- "user@dbname" of an open connection.
function db.label(conn)
  local info = conn:info()
  return fmt("%s@%s", info.user or "?", info.dbname or "?")
end

--- Refuses a read-only target (a hot standby, or default_transaction_read_only) before any write.
-- @return true | nil, err (kind connect)
function db.check_writable(conn)
  local rows, err = conn:query(
    "SELECT pg_catalog.pg_is_in_recovery() AS standby, " ..
    "pg_catalog.current_setting('transaction_read_only') AS ro")
  if not rows then return nil, errors.wrap("connect", err) end
  if rows[1].standby then
    return nil, errors.new("connect", "target is a read-only standby (in recovery); " ..
      "connect to the primary, or add target_session_attrs=read-write")
  end
  if rows[1].ro == "on" then
    return nil, errors.new("connect", "target session is read-only " ..
      "(default_transaction_read_only is on); use a read-write connection")
  end
  return true
end

--- The schema for the tracking tables: configured, or the connection's current schema.
-- @return string | nil, err
function db.tracking_schema(conn, cfg)
  if cfg.schema then return cfg.schema end
  local rows, err = conn:query("SELECT pg_catalog.current_schema() AS s")
  if not rows then return nil, errors.wrap("connect", err) end
  local s = rows[1].s
  if s == pg.null or s == nil then
    return nil, errors.new("usage", "no schema to keep history in: search_path names no " ..
      "existing schema; set schema = \"...\" in migrate.lua or --schema")
  end
  return s
end

return db
