-- Where a failed statement is in its file, and the error an operator reads about it.
local errors = require("moonshift.errors")
local paths = require("moonshift.paths")
local db = require("moonshift.db")

local fmt = string.format

local sqlerror = {}

-- Byte offset in `source` of line `line`, column `col` (both 1-based, columns in bytes, as
-- the splitter counts them), and the offset of that line's start.
local function offset_of(source, line, col)
  local pos = 1
  for _ = 2, line do
    local nl = source:find("\n", pos, true)
    if not nl then return nil end
    pos = nl + 1
  end
  return pos + col - 1, pos
end

-- The column in characters of the byte at `at` on the line starting at `line_start`; in
-- bytes when the line is not valid UTF-8 up to there.
local function char_column(source, line_start, at)
  local n = utf8.len(source, line_start, at - 1)
  return n and n + 1 or at - line_start + 1
end

--- Line and column in the file of a 1-based character position inside a statement. psql
-- (and so the splitter) drops blank lines inside a statement, so the statement's text is
-- walked against the file's, skipping what was dropped.
function sqlerror.locate(stmt, position, source)
  local text = stmt.text
  local i, line_start = nil, nil
  if source then i, line_start = offset_of(source, stmt.line, stmt.column) end
  local first_line = text:match("^[^\n]*")
  local col = stmt.column
  if i and source:sub(i, i + #first_line - 1) == first_line then
    col = char_column(source, line_start, i)
  else
    source, i = text, 1 -- a section of a larger file (dbmate, goose): count in the text
  end
  if not position or position < 1 then return stmt.line, col end
  local target = utf8.offset(text, position) or math.min(position, #text + 1)
  local line, j = stmt.line, 1
  while j < target and i <= #source do
    local c = source:sub(i, i)
    if c == text:sub(j, j) then
      j = j + 1
    elseif c ~= "\n" and c ~= "\r" and c ~= " " and c ~= "\t" then
      break -- not a dropped blank line: stop rather than guess
    end
    if c == "\n" then
      line, col = line + 1, 1
    elseif c:byte() < 0x80 or c:byte() >= 0xC0 then
      col = col + 1 -- count characters, not UTF-8 continuation bytes
    end
    i = i + 1
  end
  return line, col
end

local function excerpt(text, max_lines)
  local lines = {}
  for line in (text .. "\n"):gmatch("([^\n]*)\n") do
    if #lines == max_lines then
      lines[#lines + 1] = "..."
      break
    end
    lines[#lines + 1] = line
  end
  return table.concat(lines, "\n    ")
end

--- The error of a failed statement: file:line:col, SQLSTATE, message, detail, hint.
-- @param m the migration; path its script; stmt the statement; err the pg error
-- @param state_text string: what state the failure left (rolled back, or dirty)
-- @return error (kind sql, or connect when the connection was lost)
function sqlerror.statement(m, path, stmt, err, state_text)
  local source = path == m.up_path and m.up_sql or m.down_sql
  path = paths.display(path)
  local line, col = sqlerror.locate(stmt, err.position, source)
  -- a bad data line of a COPY: the server counts the data's lines from 1
  local data_line = stmt.kind == "copy" and stmt.data_line and
    tostring(err.where or ""):match("^COPY [^\n]-, line (%d+)")
  if data_line then line, col = stmt.data_line + tonumber(data_line) - 1, 1 end
  -- a password in the statement (ALTER ROLE ... PASSWORD, a subscription's CONNECTION) is
  -- masked in it and in what the server said about it, which may quote it
  local text, secrets = db.redact_sql(stmt.text)
  local function clean(s)
    if s == nil or #secrets == 0 then return s end
    return db.scrub(s, nil, table.unpack(secrets))
  end
  local message, detail, hint = clean(tostring(err.message or err)), clean(err.detail),
    clean(err.hint)
  local parts = {
    fmt("%s failed; %s", m.id, state_text),
    fmt("  at %s:%d:%d", path, line, col),
    fmt("  ERROR %s: %s", tostring(err.sqlstate or "-----"), message),
  }
  if detail then parts[#parts + 1] = "  DETAIL: " .. detail end
  if hint then parts[#parts + 1] = "  HINT: " .. hint end
  if err.where and not err.where:find("^SQL statement") then
    parts[#parts + 1] = "  CONTEXT: " .. clean(err.where):gsub("\n", "\n    ")
  end
  parts[#parts + 1] = "  statement: " .. excerpt(text, 6)
  return errors.new(err.kind == "connection_lost" and "connect" or "sql",
    table.concat(parts, "\n"), {
      file = path, line = line, column = col, sqlstate = err.sqlstate, version = m.version,
      statement = text, detail = detail, hint = hint, cause = #secrets == 0 and err or nil,
    })
end

return sqlerror
