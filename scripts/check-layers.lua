-- Checks that no module of lua/moonshift/ requires one in a higher layer of
-- docs/architecture.md (its table `layer | ... | modules` is the single source of truth).
-- Run from the source tree: build/moonshift --run-lua scripts/check-layers.lua [ROOT]
-- Prints one line per violation (file:line: message) and exits 1; exits 0 when clean.
local fs = require("moonshift.fs")

local fmt = string.format

local ROOT = arg and arg[1] or "."
local DOC = "docs/architecture.md"
local LUA_DIR = "lua/moonshift"

local problems = {}

local function problem(...)
  problems[#problems + 1] = fmt(...)
end

local function trim(s)
  return (s:gsub("^%s+", ""):gsub("%s+$", ""))
end

-- The cells of a markdown table row, or nil when the line is not one.
local function cells(line)
  if not line:match("^%s*|") then return nil end
  local row = {}
  for cell in line:gsub("^%s*|", ""):gsub("|%s*$", ""):gmatch("[^|]*") do
    row[#row + 1] = trim(cell)
  end
  return row
end

-- The layer table: { exact = { name = layer }, wild = { { prefix, layer } } }, or nil, err.
local function read_layers(path)
  local text, err = fs.read(path)
  if not text then return nil, err end
  local layers = { exact = {}, wild = {}, count = 0 }
  local layer_col, modules_col, lineno, tables = nil, nil, 0, 0
  for line in (text .. "\n"):gmatch("([^\n]*)\n") do
    lineno = lineno + 1
    local row = cells(line)
    if not row then
      layer_col = nil
    elseif not layer_col then
      for i, c in ipairs(row) do
        if c:lower() == "layer" then layer_col = i end
        if c:lower() == "modules" then modules_col = i end
      end
      if not (layer_col and modules_col) then
        layer_col = nil
      else
        tables = tables + 1
      end
    elseif not line:match("^%s*|[%s:|-]+$") then -- not the |---| line
      local n = math.tointeger(tonumber(row[layer_col] and row[layer_col]:match("^%d+")))
      if not n then
        return nil, fmt("%s:%d: no layer number in %q", path, lineno, row[layer_col] or "")
      end
      for name in (row[modules_col] or ""):gmatch("[^,%s`]+") do
        local prefix = name:match("^(.-)%*$")
        local seen = layers.exact[name]
        for _, w in ipairs(layers.wild) do if w[1] == prefix then seen = w[2] end end
        if seen then
          return nil, fmt("%s:%d: %s is in layer %d already", path, lineno, name, seen)
        end
        if prefix then
          layers.wild[#layers.wild + 1] = { prefix, n }
        else
          layers.exact[name] = n
        end
        layers.count = layers.count + 1
      end
    end
  end
  if tables ~= 1 then
    return nil, fmt("%s: expected one table with columns `layer` and `modules`, found %d",
      path, tables)
  end
  return layers
end

-- The layer of a module name (nil when in none). With `dynamic`, name is the literal start
-- of a name built at run time (`"moonshift.commands." .. x`): the highest layer it can reach.
local function layer_of(layers, name, dynamic)
  if not dynamic then
    if layers.exact[name] then return layers.exact[name], name end
    local best
    for _, w in ipairs(layers.wild) do
      if name:sub(1, #w[1]) == w[1] and (not best or #w[1] > #best[1]) then best = w end
    end
    if best then return best[2], best[1] .. "*" end
    return nil
  end
  local top, shown
  for exact, n in pairs(layers.exact) do
    if exact:sub(1, #name) == name and (not top or n > top) then top, shown = n, exact end
  end
  for _, w in ipairs(layers.wild) do
    local p = w[1]
    if (p:sub(1, #name) == name or name:sub(1, #p) == p) and (not top or w[2] > top) then
      top, shown = w[2], p .. "*"
    end
  end
  return top, shown
end

-- The requires of Lua source text: { { line, name, dynamic } }. Comments and strings are
-- skipped; `require "x"`, `require("x")`, `require [[x]]` and `pcall(require, "x")` count,
-- anywhere (inside functions too); a name not given as a literal cannot be checked.
local function requires(src)
  local found, pos, line, len = {}, 1, 1, #src

  local function advance(to) -- moves to `to`, counting the lines passed
    local _, n = src:sub(pos, to - 1):gsub("\n", "")
    line, pos = line + n, to
  end

  -- A long bracket at i ("[[", "[==["): the index after its closing bracket, and its body.
  local function long_bracket(i)
    local eq = src:match("^%[(=*)%[", i)
    if not eq then return nil end
    local open_end = i + #eq + 2
    local close_start, close_end = src:find("]" .. eq .. "]", open_end, true)
    if not close_start then return len + 1, src:sub(open_end) end
    return close_end + 1, src:sub(open_end, close_start - 1)
  end

  -- A short string at i: the index after it, and its value (escapes of quotes and
  -- backslashes resolved; that is all a module name needs).
  local function short_string(i)
    local q, j, buf = src:sub(i, i), i + 1, {}
    while j <= len do
      local c = src:sub(j, j)
      if c == "\\" then
        buf[#buf + 1] = src:sub(j + 1, j + 1)
        j = j + 2
      elseif c == q or c == "\n" then
        return j + 1, table.concat(buf)
      else
        buf[#buf + 1] = c
        j = j + 1
      end
    end
    return j, table.concat(buf)
  end

  -- A string literal at i (after spaces): its value and the index after it.
  local function literal(i)
    i = src:find("%S", i) or len + 1
    local c = src:sub(i, i)
    if c == '"' or c == "'" then
      local after, value = short_string(i)
      return value, after
    end
    if c == "[" then
      local after, value = long_bracket(i)
      if after then return value, after end
    end
    return nil
  end

  local function argument(i) -- after `require`: the literal it is called with
    local j = src:find("%S", i) or len + 1
    local c = src:sub(j, j)
    if c == "(" or c == "," then j = j + 1 end
    local value, after = literal(j)
    if not value then return nil end
    local dynamic = src:find("^%s*%.%.", after) ~= nil
    return value, dynamic
  end

  while pos <= len do
    local i = src:find("[%-%[\"'%a_]", pos)
    if not i then break end
    advance(i)
    local c = src:sub(i, i)
    if c == "-" then
      if src:sub(i, i + 1) == "--" then
        local after = long_bracket(i + 2)
        advance(after or (src:find("\n", i, true) or len + 1))
      else
        advance(i + 1)
      end
    elseif c == "[" then
      advance(long_bracket(i) or i + 1)
    elseif c == '"' or c == "'" then
      advance((short_string(i)))
    else
      local word_end = src:find("[^%w_]", i) or len + 1
      local word = src:sub(i, word_end - 1)
      local before = word == "require" and src:sub(math.max(1, i - 200), i - 1)
      before = before and before:match("([^%s])%s*$")
      if word == "require" and before ~= "." and before ~= ":" then
        local name, dynamic = argument(word_end)
        if name then found[#found + 1] = { line = line, name = name, dynamic = dynamic } end
      end
      advance(word_end)
    end
  end
  return found
end

-- Every .lua file under dir, as paths relative to ROOT, sorted.
local function lua_files(dir, out)
  out = out or {}
  local names, err = fs.list(ROOT .. "/" .. dir)
  if not names then
    problem("%s: %s", dir, err)
    return out
  end
  for _, name in ipairs(names) do
    local path = dir .. "/" .. name
    local st = fs.stat(ROOT .. "/" .. path)
    if st and st.type == "directory" then
      lua_files(path, out)
    elseif name:match("%.lua$") then
      out[#out + 1] = path
    end
  end
  return out
end

local function module_name(path)
  return (path:gsub("^lua/", ""):gsub("/init%.lua$", ""):gsub("%.lua$", ""):gsub("/", "."))
end

local layers, err = read_layers(ROOT .. "/" .. DOC)
if not layers then
  io.stdout:write(tostring(err), "\n")
  os.exit(1)
end

local files, checked = lua_files(LUA_DIR), 0
for _, path in ipairs(files) do
  local mod = module_name(path)
  local mine = layer_of(layers, mod)
  if not mine then problem("%s:1: %s is in no layer of %s", path, mod, DOC) end
  local src, rerr = fs.read(ROOT .. "/" .. path)
  if not src then problem("%s: %s", path, rerr) end
  for _, r in ipairs(src and requires(src) or {}) do
    checked = checked + 1
    local theirs = layer_of(layers, r.name, r.dynamic)
    if not theirs then
      if r.name:match("^moonshift%.") then
        problem("%s:%d: requires %s, which is in no layer of %s", path, r.line,
          r.dynamic and r.name .. "*" or r.name, DOC)
      end
    elseif mine and theirs > mine then
      problem("%s:%d: requires %s (layer %d) from layer %d", path, r.line,
        r.dynamic and r.name .. "*" or r.name, theirs, mine)
    end
  end
end

for _, p in ipairs(problems) do io.stdout:write(p, "\n") end
if #problems > 0 then
  io.stdout:write(fmt("check-layers: %d violation%s (%d files, %d requires, layers from %s)\n",
    #problems, #problems == 1 and "" or "s", #files, checked, DOC))
  os.exit(1)
end
io.stdout:write(fmt("check-layers: ok (%d files, %d requires, %d modules in %s)\n", #files,
  checked, layers.count, DOC))
