-- What the operator sees: progress on stderr, results on stdout, one question at most.
local fs = require("moonshift.fs")

local fmt = string.format

local ui = {}

local Ui = {}
Ui.__index = Ui

--- A UI writing to the process's stdout/stderr.
-- @param opts table|nil: quiet (bool), json (bool: progress as JSON lines is the log's job)
function ui.new(opts)
  opts = opts or {}
  return setmetatable({
    quiet = opts.quiet, json = opts.json, out = opts.out or io.stdout, err = opts.err or io.stderr,
    interactive = fs.isatty("stdin") and fs.isatty("stderr"),
    -- a live progress line only on a terminal, and not with NO_COLOR (plain lines then)
    live_ok = not opts.quiet and fs.isatty("stderr") and (os.getenv("NO_COLOR") or "") == "",
  }, Ui)
end

--- An event as a JSON line on stdout (--log-format json); nothing otherwise.
function Ui:event(name, fields)
  if self.log then self.log:event(name, fields) end
  if not self.json then return end
  local json = require("moonshift.json")
  local e = { event = name, time = os.date("!%Y-%m-%dT%H:%M:%SZ") }
  for k, v in pairs(fields or {}) do e[k] = v end
  self.out:write(json.encode(e), "\n")
  self.out:flush()
end

--- Rewrites the live line (terminal only): the running migration and its elapsed time.
function Ui:live(text)
  if not self.live_ok then return end
  self.err:write("\r\27[K", text)
  self.err:flush()
  self.live_shown = true
end

function Ui:clear_live()
  if self.live_shown then
    self.err:write("\r\27[K")
    self.live_shown = false
  end
end

--- A progress line: "[2/3] 0002_add_index  ok  12 ms".
function Ui:step(i, n, id, status, ms)
  if self.quiet then return end
  self:clear_live()
  local timing = ms and fmt("  %s", ui.duration(ms)) or ""
  self.err:write(fmt("[%d/%d] %s  %s%s\n", i, n, id, status, timing))
  self.err:flush()
end

--- A note for the operator (stderr).
function Ui:info(msg)
  if self.quiet then return end
  self:clear_live()
  self.err:write(msg, "\n")
  self.err:flush()
end

function Ui:warn(msg)
  self:clear_live()
  self.err:write("warning: ", msg, "\n")
  self.err:flush()
end

--- An error message (stderr), never suppressed.
function Ui:error(msg)
  self:clear_live()
  self.err:write("moonshift: ", msg, "\n")
  self.err:flush()
end

--- A result (stdout).
function Ui:result(msg)
  self.out:write(msg, "\n")
  self.out:flush()
end

--- Asks a yes/no question on the terminal; false without one.
function Ui:confirm(question)
  if not self.interactive then return false end
  self.err:write(question, " [y/N] ")
  self.err:flush()
  local answer = io.stdin:read("l")
  return answer ~= nil and answer:lower():match("^%s*y") ~= nil
end

--- "12 ms", "1.4 s", "2 min 3 s".
function ui.duration(ms)
  ms = math.floor(ms + 0.5)
  if ms < 1000 then return fmt("%d ms", ms) end
  if ms < 60000 then return fmt("%.1f s", ms / 1000) end
  return fmt("%d min %d s", ms // 60000, (ms % 60000) // 1000)
end

local UNITS = { ms = 1, s = 1000, sec = 1000, min = 60000, m = 60000, h = 3600000 }

--- Parses a duration ("500ms", "5s", "2min", "1h"; a bare number is seconds) into ms.
-- @return integer ms | nil, err
function ui.parse_duration(v)
  if v == nil or v == false then return nil end
  if type(v) == "number" then return math.floor(v * 1000) end
  local n, unit = tostring(v):match("^%s*([%d.]+)%s*(%a*)%s*$")
  local scale = unit and UNITS[unit ~= "" and unit:lower() or "s"]
  if not scale or not tonumber(n) then
    return nil, fmt("invalid duration %q (use e.g. 500ms, 5s, 2min)", tostring(v))
  end
  return math.floor(tonumber(n) * scale)
end

return ui
