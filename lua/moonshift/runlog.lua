-- The run log: one JSON line per event, in a private file an operator can attach to a ticket.
local fs = require("moonshift.fs")
local json = require("moonshift.json")
local errors = require("moonshift.errors")

local fmt = string.format

local runlog = {}

local Log = {}
Log.__index = Log

local PRIVATE_DIR = tonumber("700", 8)
local PRIVATE_FILE = tonumber("600", 8)

local function safe(s)
  return (tostring(s or "db"):gsub("[^%w_.-]", "_"))
end

--- Opens a new log file, mode 0600 (O_EXCL, never following a planted link) in a 0700
-- directory: `<db>-v<from>-<UTC time>.log`, or exactly `path` when given.
-- @param opts table: dir, path, db, from (version), run_id
-- @return Log | nil, err (kind usage)
function runlog.open(opts)
  local path = opts.path
  if not path then
    local ok, err = fs.mkdir_p(opts.dir, PRIVATE_DIR)
    if not ok then
      return nil, errors.new("usage", "cannot create the log directory: " .. tostring(err))
    end
    path = fmt("%s/%s-v%s-%s.log", opts.dir, safe(opts.db), safe(opts.from or "0"),
      os.date("!%Y%m%dT%H%M%SZ"))
  end
  local file, err, code = fs.open_excl(path, PRIVATE_FILE)
  local n = 1
  while not file and code == "EEXIST" and not opts.path and n < 100 do
    n = n + 1
    local candidate = path:gsub("%.log$", "") .. "-" .. n .. ".log"
    file, err, code = fs.open_excl(candidate, PRIVATE_FILE)
    if file then path = candidate end
  end
  if not file then
    return nil, errors.new("usage", "cannot create the run log: " .. tostring(err))
  end
  return setmetatable({ file = file, path = path, run_id = opts.run_id }, Log)
end

--- The newest log in dir if its run ended without a final event (killed, or lost power).
-- @return { path, run_id } | nil
function runlog.last_unfinished(dir)
  local newest, newest_mtime
  for _, name in ipairs(fs.list(dir) or {}) do
    if name:match("%.log$") then
      local st = fs.stat(dir .. "/" .. name)
      if st and (not newest_mtime or st.mtime > newest_mtime or
          (st.mtime == newest_mtime and name > newest)) then
        newest, newest_mtime = name, st.mtime
      end
    end
  end
  if not newest then return nil end
  local text = fs.read(dir .. "/" .. newest) or ""
  local first = text:match("^([^\n]+)")
  -- the last line, found by plain searches: a pattern scan from every position would be
  -- quadratic in a log whose plan line is megabytes long
  local body, start, at = text:gsub("\n+$", ""), 1, 0
  while true do
    at = body:find("\n", at + 1, true)
    if not at then break end
    start = at + 1
  end
  local last = body:sub(start)
  if last == "" then return nil end
  local ok, e = pcall(json.decode, last)
  if ok and (e.event == "run_done" or e.event == "run_failed") then return nil end
  local fok, f = pcall(json.decode, first or "")
  return { path = dir .. "/" .. newest, run_id = fok and f.run_id or nil }
end

--- Appends an event: { time, run_id, event, ...fields }.
function Log:event(name, fields)
  if not self.file then return end
  local e = { time = os.date("!%Y-%m-%dT%H:%M:%SZ"), run_id = self.run_id, event = name }
  for k, v in pairs(fields or {}) do e[k] = v end
  self.file:write(json.encode(e) .. "\n")
end

--- Flushes to disk and closes; the log is durable once this returns.
function Log:close()
  if not self.file then return true end
  local ok, err = self.file:fsync()
  self.file:close()
  self.file = nil
  return ok, err
end

return runlog
