-- A migration script's text: UTF-8 without NUL bytes, BOM and CRLF normalized; read whole,
-- or, when large, scanned a block at a time without keeping it (see source.lua's policy).
local fs = require("moonshift.fs")
local hash = require("moonshift.hash")
local layouts = require("moonshift.layouts")
local statement = require("moonshift.statement")

local fmt = string.format
local line_of = statement.line_of

local scripttext = {}

--- What scripttext.scan returns for a file that must be read whole after all.
scripttext.WHOLE = {}
local WHOLE = scripttext.WHOLE
local BOM = "\239\187\191"

--- What says a file is still the one that was read: its device, inode, size and change
-- times, as one string (for a streamed script, which is read again when it runs).
-- @param st table: fs.stat's
function scripttext.identity(st)
  return fmt("%s:%s:%s:%s.%s:%s.%s", st.dev, st.ino, st.size, st.mtime, st.mtime_nsec or 0,
    st.ctime, st.ctime_nsec or 0)
end

local function nul_problem(path, offset, line)
  return fmt("%s: NUL byte at byte offset %d (line %d); migrations must be UTF-8 text", path,
    offset, line)
end

-- Why a piece of a script (starting at byte `offset`, line `line` of the file) is not
-- text, or nil.
local function not_text(path, text, offset, line)
  local nul = text:find("\0", 1, true)
  if nul then return nul_problem(path, offset + nul - 1, line + line_of(text, nul) - 1) end
  local ok, bad = utf8.len(text)
  if not ok then
    return fmt("%s: not valid UTF-8 at byte offset %d (line %d, byte 0x%02X); save the file " ..
      "as UTF-8", path, offset + bad - 1, line + line_of(text, bad) - 1, text:byte(bad))
  end
  return nil
end

--- The normalized text of a script (BOM stripped, CRLF as LF).
-- @param limits table: max_size (read whole), stream_size (streamed above it)
-- @return text | nil, problem
function scripttext.read(path, st, limits)
  if st.size > limits.max_size then
    return nil, fmt("%s is %d bytes, over the limit of %d bytes for one migration file%s",
      path, st.size, limits.max_size, st.size > limits.stream_size and " read whole (it is " ..
      "not streamed: it has CRLF line endings, or dbmate or goose sections)" or "")
  end
  local raw, msg = fs.read(path)
  if not raw then return nil, fmt("cannot read %s", msg) end
  local problem = not_text(path, raw, 0, 1)
  if problem then return nil, problem end
  if raw:sub(1, 3) == BOM then raw = raw:sub(4) end
  if raw:find("\r", 1, true) then raw = raw:gsub("\r\n", "\n") end
  return raw
end

--- The facts of a large script, read a megabyte of whole lines at a time and checked as
-- scripttext.read checks a text, hashed as it is on disk (minus a BOM), with its
-- `identity` set on e; scripttext.WHOLE when it must be read whole after all (CRLF line
-- endings, dbmate or goose sections).
-- @return facts | scripttext.WHOLE | nil, problem
function scripttext.scan(e)
  local path = e.path
  local st, serr = fs.stat(path)
  local file, msg = io.open(path, "rb")
  if file and not st then
    file:close()
    file, msg = nil, serr
  end
  if not file then return nil, fmt("cannot read %s", msg) end
  local bom, line, offset, carry = 0, 1, 0, ""
  local stop -- "crlf", or the problem found
  local function check(chunk)
    if offset == 0 and chunk:sub(1, 3) == BOM then bom = 3 end
    stop = not_text(path, chunk, offset, line)
    if stop then return nil end
    if chunk:find("\r", 1, true) then
      stop = "crlf"
      return nil
    end
    local _, n = chunk:gsub("\n", "")
    local first = offset == 0
    line, offset = line + n, offset + #chunk
    if first and bom == 3 then return chunk:sub(4) end -- as Loader:read strips it
    return chunk
  end
  local long = {} -- the blocks of a line longer than one block, joined once it ends
  local function chunks()
    while not stop do
      local block = file:read(1024 * 1024)
      if not block then
        long[#long + 1] = carry
        carry = ""
        local last = table.concat(long)
        long = {}
        if last == "" then return nil end
        return check(last)
      end
      local back = block:reverse():find("\n", 1, true)
      if back then
        local cut = #block - back + 1
        long[#long + 1] = carry
        long[#long + 1] = block:sub(1, cut)
        local chunk = table.concat(long)
        long, carry = {}, block:sub(cut + 1)
        return check(chunk)
      end
      -- a line longer than a block: a NUL in it is refused now, not after the whole file
      local nul = block:find("\0", 1, true)
      if nul then
        stop = nul_problem(path, offset + #table.concat(long) + #carry + nul - 1, line)
        return nil
      end
      long[#long + 1] = carry
      long[#long + 1] = block
      carry = ""
    end
    return nil
  end
  local f = layouts.scan_facts(e, chunks)
  file:close()
  if stop and stop ~= "crlf" then return nil, stop end
  if stop or not f then return WHOLE end
  local sum, herr = hash.sha256_file(path, bom)
  if not sum then return nil, fmt("cannot read %s", herr) end
  f.checksum = sum
  e.identity = scripttext.identity(st)
  return f
end

return scripttext
