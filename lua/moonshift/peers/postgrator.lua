-- postgrator: schemaversion(version bigint, name text, md5 text, run_at timestamptz), one
-- row per applied migration with the md5 of its file. As rickbergfalk/postgrator
-- lib/postgres.js creates it (postgrator 4+):
--   CREATE TABLE schemaversion (version BIGINT PRIMARY KEY, name TEXT DEFAULT '',
--     md5 TEXT DEFAULT '', run_at TIMESTAMP WITH TIME ZONE DEFAULT now())
-- and inserts version 0 first; md5 is of the file's content (postgrator.js fileChecksum,
-- without newline conversion by default).
local peers = require("moonshift.peers")

local fmt = string.format

local postgrator = { name = "postgrator", table = "schemaversion",
  columns = { "version", "name", "md5" } }

function postgrator.read(conn, t)
  local rows, err = conn:query(fmt("SELECT version::text AS version, name, md5 FROM %s", t))
  if not rows then return nil, err end
  local out = {}
  for _, r in ipairs(rows) do
    if r.version ~= "0" then
      local md5 = type(r.md5) == "string" and r.md5 ~= "" and r.md5 or nil
      out[#out + 1] = { version = r.version, name = type(r.name) == "string" and r.name or nil,
        checksum = md5 }
    end
  end
  return out
end

function postgrator.checksum(m, conn)
  local text, err = peers.file_text(m)
  if not text then return nil, err end
  local rows, qerr = conn:query("SELECT pg_catalog.md5(pg_catalog.convert_to($1, 'UTF8')) AS h",
    text)
  if not rows then return nil, qerr end
  return rows[1].h
end

return postgrator
