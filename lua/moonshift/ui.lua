-- What the operator sees: progress on stderr, results on stdout, one question at most.
local fs = require("moonshift.fs")

local fmt = string.format
local find = string.find

local ui = {}

local Ui = {}
Ui.__index = Ui

-- Names from outside (migration files, history rows) that hold control characters, longest
-- first: every line of text shows them escaped, so that a name cannot move the cursor,
-- colour the terminal or forge a line of its own ("0002_x\n[2/2] 0003_y  ok").
local untrusted, untrusted_list = {}, {}

local ESCAPES = { ["\n"] = "\\n", ["\r"] = "\\r", ["\t"] = "\\t" }

local function escape_byte(c)
  return ESCAPES[c] or fmt("\\x%02x", c:byte())
end

-- C1 controls (U+0080..U+009F; U+009B is a one-character CSI on some terminals), written
-- as JSON writes them, so that JSON text stays JSON.
local function escape_c1(c)
  return fmt("\\u%04x", c:byte())
end

--- s with every control character shown visibly: \n, \r, \t, \x1b, \u009b.
-- @param s string
-- @return string
function ui.visible(s)
  return (s:gsub("%c", escape_byte):gsub("\194([\128-\159])", escape_c1))
end

--- Marks a name read from outside (a file name, a history row) as one that text output
-- shows escaped wherever it appears; a name without control characters is left alone.
-- @param s string|nil
-- @return boolean: whether s holds control characters
function ui.untrusted(s)
  -- one scan for the common case (called for every file: ~0.25 us a name)
  if type(s) ~= "string" or not find(s, "[^ -~]") then return false end
  if untrusted[s] then return true end
  if not (find(s, "%c") or find(s, "\194[\128-\159]")) then return false end
  untrusted[s] = ui.visible(s)
  untrusted_list[#untrusted_list + 1] = s
  table.sort(untrusted_list, function(a, b) return #a > #b end)
  return true
end

-- Every occurrence of `raw` in text replaced by `with` (plain, no patterns).
local function replace(text, raw, with)
  local parts, pos = {}, 1
  while true do
    local a, b = text:find(raw, pos, true)
    if not a then break end
    parts[#parts + 1] = text:sub(pos, a - 1)
    parts[#parts + 1] = with
    pos = b + 1
  end
  if pos == 1 then return text end
  parts[#parts + 1] = text:sub(pos)
  return table.concat(parts)
end

-- Text as the terminal may receive it: untrusted names escaped, and no control character
-- but our own newlines and tabs (a server message or a hook's output cannot hold an escape
-- sequence either).
local function shown(text)
  text = tostring(text)
  for i = 1, #untrusted_list do
    local raw = untrusted_list[i]
    text = replace(text, raw, untrusted[raw])
  end
  if text:find("[\0-\8\11-\31\127]") or text:find("\194[\128-\159]") then
    text = text:gsub("[\0-\8\11-\31\127]", escape_byte):gsub("\194([\128-\159])", escape_c1)
  end
  return text
end

-- Writes to the result stream (stdout); a failed write (a reader gone: EPIPE) is kept in
-- self.out_failed for the run to stop on, and said once the run has stopped.
local function emit(self, ...)
  local ok, err = self.out:write(...)
  if ok then ok, err = self.out:flush() end
  if not ok and not self.out_failed then self.out_failed = tostring(err) end
end

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
  local e = { event = name, time = os.date("!%Y-%m-%dT%H:%M:%SZ"), run_id = self.run_id }
  for k, v in pairs(fields or {}) do e[k] = v end
  local line = json.encode(e)
  if line:find("\194[\128-\159]") then line = line:gsub("\194([\128-\159])", escape_c1) end
  emit(self, line, "\n")
end

--- Rewrites the live line (terminal only): the running migration and its elapsed time.
function Ui:live(text)
  if not self.live_ok then return end
  self.err:write("\r\27[K", shown(text))
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
  self.err:write(shown(fmt("[%d/%d] %s  %s%s", i, n, id, status, timing)), "\n")
  self.err:flush()
end

--- A note for the operator (stderr).
function Ui:info(msg)
  if self.quiet then return end
  self:clear_live()
  self.err:write(shown(msg), "\n")
  self.err:flush()
end

function Ui:warn(msg)
  self:clear_live()
  self.err:write("warning: ", shown(msg), "\n")
  self.err:flush()
end

--- An error message (stderr), never suppressed.
function Ui:error(msg)
  self:clear_live()
  self.err:write("moonshift: ", shown(msg), "\n")
  self.err:flush()
end

--- A result (stdout).
function Ui:result(msg)
  emit(self, shown(msg), "\n")
end

--- Asks a yes/no question on the terminal; false without one.
function Ui:confirm(question)
  if not self.interactive then return false end
  self.err:write(shown(question), " [y/N] ")
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
