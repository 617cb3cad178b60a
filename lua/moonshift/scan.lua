-- Walks a migrations directory: names ignored or classified by layout, symlinks followed
-- (a dangling one or a loop is a problem), diesel's migration directories read.
local fs = require("moonshift.fs")
local layouts = require("moonshift.layouts")
local ui = require("moonshift.ui")

local fmt = string.format

local scan = {}

local function join(dir, name)
  return dir == "/" and "/" .. name or dir .. "/" .. name
end

--- A glob (`*`, `?`, `[abc]`, `[!abc]`) as an anchored Lua pattern.
function scan.glob_pattern(glob)
  local out, i = { "^" }, 1
  while i <= #glob do
    local c = glob:sub(i, i)
    local close = c == "[" and glob:find("]", i + 2, true)
    if c == "*" then
      out[#out + 1] = ".*"
    elseif c == "?" then
      out[#out + 1] = "."
    elseif close then
      local body = glob:sub(i + 1, close - 1):gsub("^!", "^"):gsub("%%", "%%%%")
      out[#out + 1] = "[" .. body .. "]"
      i = close
    elseif c:match("%p") then
      out[#out + 1] = "%" .. c
    else
      out[#out + 1] = c
    end
    i = i + 1
  end
  out[#out + 1] = "$"
  return table.concat(out)
end

local function skipped(self, name)
  if name:sub(1, 1) == "." then return true end
  for _, pattern in ipairs(self.ignore) do
    if name:find(pattern) then return true end
  end
  return false
end

--- The stat of path, following a symlink; nil (and a problem) for a dangling link or a loop.
-- @param self the loader (source.lua): problem(), warn(), root, dir
function scan.resolve(self, path)
  local st, msg = fs.stat(path, false)
  if not st then
    self:problem(fmt("cannot read %s", msg), path)
    return nil
  end
  if st.type ~= "link" then return st end
  local target = fs.readlink(path) or "?"
  local tst, tmsg, code = fs.stat(path)
  if not tst then
    if code == "ELOOP" then
      self:problem(fmt("symlink loop: %s -> %s", path, target), path)
    elseif code == "ENOENT" or code == "ENOTDIR" then
      self:problem(fmt("dangling symlink: %s -> %s (the target does not exist)", path,
        target), path)
    else
      self:problem(fmt("cannot follow symlink %s -> %s: %s", path, target, tmsg), path)
    end
    return nil
  end
  local real = fs.realpath(path)
  if real and self.root and real:sub(1, #self.root + 1) ~= self.root .. "/" then
    self:warn(fmt("%s is a symlink to %s, outside %s", path, real, self.dir))
  end
  return tst
end

-- Reads a diesel directory `<version>_<name>/` into self.entries.
local function diesel(self, name, path)
  local v, n = name:match("^(%d[%d%-]*)_([^.].*)$")
  if not v then
    self:problem(fmt("%s is a directory that matches no migration layout (diesel " ..
      "migrations are directories named like 2019-02-26-002946_create_user)", path), path)
    return
  end
  local names, msg = fs.list(path)
  if not names then
    self:problem(fmt("cannot list %s", msg), path)
    return
  end
  ui.untrusted(n) -- its directory's name is the caller's
  for _, file in ipairs(names) do ui.untrusted(file) end
  local e = { kind = "up", layout = "diesel", version = v, name = n, id = name, dir = path }
  local files = {}
  for _, file in ipairs(names) do
    if not skipped(self, file) then
      local fpath = path .. "/" .. file
      local st = scan.resolve(self, fpath)
      if st and (st.type ~= "file" or not layouts.DIESEL_FILES[file]) then
        self:problem(fmt("%s does not belong in a diesel migration directory (it may hold " ..
          "up.sql, down.sql, metadata.toml, migration.lua and verify.sql)", fpath), fpath)
      elseif st then
        files[layouts.DIESEL_FILES[file]] = { path = fpath, st = st }
      end
    end
  end
  if not files.up then
    if files.down then
      self:problem(fmt("%s has no up.sql beside it", files.down.path), files.down.path)
    else
      self:problem(fmt("%s has no up.sql", path), path)
    end
    return
  end
  e.path, e.st = files.up.path, files.up.st
  if files.down then e.down = { path = files.down.path, st = files.down.st } end
  e.companion_path = files.companion and files.companion.path
  e.verify_path = files.verify and files.verify.path
  if files.metadata then
    local text = self:read(files.metadata.path, files.metadata.st)
    for line in (text or ""):gmatch("[^\n]+") do
      if line:match("^%s*run_in_transaction%s*=%s*false%s*$") or
          line:match("^%s*run_in_transaction%s*=%s*false%s*#") then
        e.no_transaction = true
      end
    end
  end
  self.entries[#self.entries + 1] = e
end

--- Lists the migrations directory and classifies every entry into self.entries (self: the
-- loader of source.lua).
function scan.directory(self, dir)
  local names, msg = fs.list(dir)
  if not names then
    self:problem(fmt("cannot list the migrations directory: %s", msg), dir)
    return
  end
  for _, name in ipairs(names) do
    if not skipped(self, name) then
      local hostile = ui.untrusted(name) -- then shown escaped wherever printed
      local path = join(self.base, name)
      local st = scan.resolve(self, path)
      if st and st.type == "directory" then
        diesel(self, name, path)
      elseif st and st.type ~= "file" then
        self:problem(fmt("%s is not a regular file or directory", path), path)
      elseif st then
        local e = layouts.classify(name)
        if e and hostile then
          ui.untrusted(e.id)
          ui.untrusted(e.name)
        end
        if not e then
          self:problem(fmt("%s matches no migration layout (expected names like " ..
            "0003_add_email.up.sql, 0003_add_email.sql, V3__add_email.sql, or an ignore " ..
            "pattern)", path), path)
        else
          e.path, e.st = path, st
          self.entries[#self.entries + 1] = e
        end
      end
    end
  end
end

return scan
