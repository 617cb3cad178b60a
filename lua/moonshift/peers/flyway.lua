-- Flyway: flyway_schema_history, one row per run (installed_rank), with a CRC32 checksum
-- of each script. As flyway-core's org/flywaydb/core/internal/database/postgresql/
-- createMetaDataTable.sql creates it:
--   CREATE TABLE ${schema}.${table} ("installed_rank" INT NOT NULL, "version" VARCHAR(50),
--     "description" VARCHAR(200) NOT NULL, "type" VARCHAR(20) NOT NULL,
--     "script" VARCHAR(1000) NOT NULL, "checksum" INTEGER, "installed_by" VARCHAR(100)
--     NOT NULL, "installed_on" TIMESTAMP NOT NULL DEFAULT now(), "execution_time" INTEGER
--     NOT NULL, "success" BOOLEAN NOT NULL);
--   ALTER TABLE ... ADD CONSTRAINT "${table}_pk" PRIMARY KEY ("installed_rank");
--   CREATE INDEX "${table}_s_idx" ON ... ("success");
-- The checksum (ChecksumCalculator): CRC32 over the script's lines, each without its line
-- break, the first without a BOM, as a signed 32-bit int. flyway.conf's flyway.table,
-- flyway.schemas / flyway.defaultSchema name another table or schema.
local peers = require("moonshift.peers")

local fmt = string.format

local flyway = { name = "flyway", table = "flyway_schema_history",
  columns = { "installed_rank", "version", "script", "checksum", "success" } }

function flyway.configured(read)
  local text = read("flyway.conf") or read("conf/flyway.conf")
  if not text then return nil end
  local t = text:match("flyway%.table%s*=%s*([%w_]+)")
  local s = text:match("flyway%.defaultSchema%s*=%s*([%w_]+)") or
    text:match("flyway%.schemas%s*=%s*([%w_]+)")
  if not (t or s) then return nil end
  return { table = t, schema = s }
end

--- The checksum Flyway records for a script's text.
function flyway.crc(text)
  text = text:gsub("^\239\187\191", ""):gsub("[\r\n]", "")
  local c = peers.crc32(text)
  if c >= 0x80000000 then c = c - 0x100000000 end
  return c
end

function flyway.checksum(m)
  local text, err = peers.file_text(m)
  if not text then return nil, err end
  return flyway.crc(text)
end

local UNDONE = { UNDO_SQL = true, UNDO_JDBC = true, UNDO_SCRIPT = true, DELETE = true }

function flyway.read(conn, t, found)
  local rows, err = conn:query(fmt("SELECT installed_rank, version, description, type, " ..
    "script, checksum::text AS checksum, success FROM %s ORDER BY installed_rank", t))
  if not rows then return nil, err end
  local by_version, order = {}, {}
  for _, r in ipairs(rows) do
    local v = r.version
    -- a SCHEMA row is Flyway's note that it created the schema; a NULL version a repeatable
    if r.type ~= "SCHEMA" and type(v) == "string" then
      if not by_version[v] then order[#order + 1] = v end
      if UNDONE[r.type] then
        by_version[v] = nil
      else
        by_version[v] = { version = v, name = r.description, script = r.script,
          checksum = type(r.checksum) == "string" and tonumber(r.checksum) or nil,
          failed = r.success == false, baseline = r.type == "BASELINE" }
      end
    end
  end
  local out = {}
  for _, v in ipairs(order) do
    local e = by_version[v]
    if e then
      if e.baseline then
        e.checksum = nil
        found.baseline = e
      end
      out[#out + 1] = e
    end
  end
  return out
end

function flyway.recovery(e)
  return fmt("Flyway records version %s (%s) as failed: undo what it changed by hand, run " ..
    "`flyway repair` to remove the failed entry, then `flyway migrate` or adopt again",
    e.version, tostring(e.script))
end

local function description(m)
  return (m.name or ""):gsub("_", " ")
end

local function insert(w, m)
  local crc = flyway.checksum(m)
  return w.q(fmt("INSERT INTO %s (installed_rank, version, description, type, script, " ..
    "checksum, installed_by, execution_time, success) SELECT COALESCE(pg_catalog.max(" ..
    "installed_rank), 0) + 1, $1::varchar, $2, 'SQL', $3, $4::integer, CURRENT_USER, 0, true " ..
    "FROM %s HAVING NOT pg_catalog.bool_or(version = $1::varchar AND success) IS TRUE",
    w.t, w.t), m.version, description(m), peers.basename(m.up_path), crc and tostring(crc))
end

flyway.compat = {
  ddl = function(t, bare)
    return { fmt("CREATE TABLE IF NOT EXISTS %s (installed_rank INT NOT NULL, version " ..
      "VARCHAR(50), description VARCHAR(200) NOT NULL, type VARCHAR(20) NOT NULL, script " ..
      "VARCHAR(1000) NOT NULL, checksum INTEGER, installed_by VARCHAR(100) NOT NULL, " ..
      "installed_on TIMESTAMP NOT NULL DEFAULT now(), execution_time INTEGER NOT NULL, " ..
      "success BOOLEAN NOT NULL, CONSTRAINT %s PRIMARY KEY (installed_rank))", t,
      '"' .. bare .. '_pk"'),
      fmt("CREATE INDEX IF NOT EXISTS %s ON %s (success)", '"' .. bare .. '_s_idx"', t) }
  end,
  applied = function(w, m, dirty)
    if dirty then return true end -- Flyway writes a row once a script is done
    return insert(w, m)
  end,
  removed = function(w, m)
    return w.q(fmt("DELETE FROM %s WHERE version = $1::varchar", w.t), m.version)
  end,
  state = function(w, list)
    local ok, err = w.q(fmt("DELETE FROM %s WHERE type NOT IN ('SCHEMA', 'BASELINE')", w.t))
    if not ok then return nil, err end
    for _, r in ipairs(list) do
      if r.m and not r.dirty then
        ok, err = insert(w, r.m)
        if not ok then return nil, err end
      end
    end
    return true
  end,
}

return flyway
