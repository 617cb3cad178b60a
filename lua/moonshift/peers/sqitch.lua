-- Sqitch: the registry schema `sqitch` (changes, events, tags, ...); sqitch.changes holds one
-- row per deployed change. As sqitch's lib/App/Sqitch/Engine/pg.sql creates it:
--   CREATE TABLE :"registry".changes (change_id TEXT PRIMARY KEY, script_hash TEXT NULL,
--     change TEXT NOT NULL, project TEXT NOT NULL REFERENCES :"registry".projects(project)
--     ON UPDATE CASCADE, note TEXT NOT NULL DEFAULT '', committed_at TIMESTAMPTZ NOT NULL
--     DEFAULT clock_timestamp(), committer_name TEXT NOT NULL, committer_email TEXT NOT NULL,
--     planned_at TIMESTAMPTZ NOT NULL, planner_name TEXT NOT NULL, planner_email TEXT
--     NOT NULL, UNIQUE(project, script_hash))
-- A change matches a migration by name (deploy/NAME.sql): sqitch names changes, not
-- versions. script_hash is the SHA-1 of the deploy script's bytes (App/Sqitch/Plan/
-- Change.pm, _deploy_hash), compared with the migration's up file. sqitch.conf's `registry`
-- names another schema.
local peers = require("moonshift.peers")

local fmt = string.format
local spack, sunpack = string.pack, string.unpack

local sqitch = { name = "sqitch", table = "changes", schema = "sqitch",
  columns = { "change_id", "change", "project", "script_hash" } }

function sqitch.configured(read)
  local text = read("sqitch.conf")
  if not text then return nil end
  local r = text:match("\n%s*registry%s*=%s*([%w_]+)")
  return r and { schema = r } or nil
end

function sqitch.read(conn, t)
  local rows, err = conn:query(fmt("SELECT change_id, change, script_hash, " ..
    "pg_catalog.to_char(committed_at, 'YYYYMMDDHH24MISS') AS at FROM %s " ..
    "ORDER BY committed_at", t))
  if not rows then return nil, err end
  local out = {}
  for _, r in ipairs(rows) do
    out[#out + 1] = { name = r.change, id = r.change_id, key = false,
      checksum = type(r.script_hash) == "string" and r.script_hash or nil }
  end
  return out
end

function sqitch.find(e, set)
  for _, m in ipairs(set.migrations) do
    if m.name == e.name or m.id == e.name then return m end
  end
  return nil
end

local function rol(x, n)
  return ((x << n) | (x >> (32 - n))) & 0xFFFFFFFF
end

--- SHA-1 of a string, lowercase hex (FIPS 180-4); only Sqitch's hashes need it.
function sqitch.sha1(text)
  local h0, h1, h2, h3, h4 = 0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476, 0xC3D2E1F0
  local msg = text .. "\128" .. string.rep("\0", (55 - #text) % 64) .. spack(">I8", #text * 8)
  local w = {}
  for chunk = 1, #msg, 64 do
    for i = 0, 15 do w[i] = sunpack(">I4", msg, chunk + i * 4) end
    for i = 16, 79 do w[i] = rol(w[i - 3] ~ w[i - 8] ~ w[i - 14] ~ w[i - 16], 1) end
    local a, b, c, d, e = h0, h1, h2, h3, h4
    for i = 0, 79 do
      local f, k
      if i < 20 then
        f, k = (b & c) | ((~b) & d), 0x5A827999
      elseif i < 40 then
        f, k = b ~ c ~ d, 0x6ED9EBA1
      elseif i < 60 then
        f, k = (b & c) | (b & d) | (c & d), 0x8F1BBCDC
      else
        f, k = b ~ c ~ d, 0xCA62C1D6
      end
      local t = (rol(a, 5) + (f & 0xFFFFFFFF) + e + k + w[i]) & 0xFFFFFFFF
      a, b, c, d, e = t, a, rol(b, 30), c, d
    end
    h0, h1 = (h0 + a) & 0xFFFFFFFF, (h1 + b) & 0xFFFFFFFF
    h2, h3, h4 = (h2 + c) & 0xFFFFFFFF, (h3 + d) & 0xFFFFFFFF, (h4 + e) & 0xFFFFFFFF
  end
  return fmt("%08x%08x%08x%08x%08x", h0, h1, h2, h3, h4)
end

function sqitch.checksum(m)
  local text, err = peers.file_text(m)
  if not text then return nil, err end
  return sqitch.sha1(text)
end

return sqitch
