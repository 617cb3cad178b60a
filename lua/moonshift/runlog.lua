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
-- @param opts table: dir, path, db, from (version), run_id, display (a path as shown),
--   on_error (called once with a message when a write fails)
-- @return Log | nil, err (kind backup: the run log is the run's record, like the backup)
function runlog.open(opts)
  local path = opts.path
  if not path then
    local ok, err = fs.mkdir_p(opts.dir, PRIVATE_DIR)
    if not ok then
      return nil, errors.new("backup", "cannot create the log directory: " ..
        tostring(err) .. "; nothing was migrated")
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
    return nil, errors.new("backup", "cannot create the run log: " .. tostring(err) ..
      "; nothing was migrated")
  end
  return setmetatable({ file = file, path = path, run_id = opts.run_id,
    display = opts.display and opts.display(path), on_error = opts.on_error }, Log)
end

-- The first line of a log (its run_start event), decoded; nil when it is not one.
local function header(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local first = f:read("l")
  f:close()
  local ok, e = pcall(json.decode, first or "")
  if ok and type(e) == "table" and e.event == "run_start" then return e end
  return nil
end

-- When a run started, as a sortable string: the precise start its header records, else
-- the second of its run id.
local function started(h)
  return tostring(h.started_at or h.time or h.run_id or "")
end

--- The newest log in dir of the same database if its run ended without a final event
-- (killed, or lost power). Logs of other databases sharing the directory are not looked
-- at: a log's header names its database (`database_id`; older logs: `target`), and the
-- newest is the one whose header records the latest start.
-- @param dir string: the log directory
-- @param db table|nil: database_id and target (the user@dbname label) of this run's
--   database; nil: the newest log of any database
-- @return { path, run_id, host, pid } | nil
function runlog.last_unfinished(dir, db)
  local newest, newest_start
  for _, name in ipairs(fs.list(dir) or {}) do
    if name:match("%.log$") then
      local h = header(dir .. "/" .. name)
      local same = h and (not db or h.database_id and h.database_id == db.database_id or
        not h.database_id and h.target == db.target)
      if same and (not newest_start or started(h) > newest_start) then
        newest, newest_start = name, started(h)
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
  if ok and type(e) == "table" and (e.event == "run_done" or e.event == "run_failed") then
    return nil
  end
  local fok, f = pcall(json.decode, first or "")
  return { path = dir .. "/" .. newest, run_id = fok and f.run_id or nil,
    host = fok and f.host or nil, pid = fok and f.pid or nil }
end

-- Records the first failure to write the log (msg names the file and the call, as the fs
-- binding does); later events are not written: a log with a hole would read as complete.
-- The log's on_error hears of it once.
function Log:fail(msg, code)
  if self.failure then return end
  msg = tostring(msg)
  if self.display and msg:sub(1, #self.path) == self.path then
    msg = self.display .. msg:sub(#self.path + 1)
  end
  self.failure = fmt("cannot write the run log: %s%s", msg, code and (" (" .. code .. ")") or "")
  if self.on_error then self.on_error(self.failure) end
end

--- Appends an event: { time, run_id, event, ...fields }. A failed write is recorded
-- (Log.failure) and reported once through on_error; the run goes on.
function Log:event(name, fields)
  if not self.file or self.failure then return end
  local e = { time = os.date("!%Y-%m-%dT%H:%M:%SZ"), run_id = self.run_id, event = name }
  for k, v in pairs(fields or {}) do e[k] = v end
  local ok, err, code = self.file:write(json.encode(e) .. "\n")
  if not ok then self:fail(err, code) end
end

--- Flushes to disk and closes; the log is durable once this returns true.
-- @return true | nil, message (the first write, fsync or close that failed, naming the file)
function Log:close()
  if not self.file then
    if self.failure then return nil, self.failure end
    return true
  end
  local ok, err, code = self.file:fsync()
  if not ok then self:fail(err, code) end
  ok, err, code = self.file:close()
  if not ok then self:fail(err, code) end
  self.file = nil
  if self.failure then return nil, self.failure end
  return true
end

return runlog
