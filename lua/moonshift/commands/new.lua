-- `moonshift new NAME`: creates the files of a new migration, numbered after the newest.
local fs = require("moonshift.fs")
local session = require("moonshift.session")
local errors = require("moonshift.errors")

local fmt = string.format

local new = { summary = "Create the files for a new migration.", uses = {} }

function new.arguments(cmd)
  cmd:argument("name", "What the migration does, in a few words (add_users).")
  cmd:flag("--timestamp", "Number by UTC timestamp (when there are no migrations yet).")
end

function new.options(args)
  return { name = args.name, timestamp = args.timestamp }
end

local function slug(name)
  local s = name:lower():gsub("[^%w]+", "_"):gsub("^_+", ""):gsub("_+$", "")
  return s
end

-- The version after the newest migration's, in the same style; nil, err when unclear.
local function next_version(set, timestamp)
  local last = set.migrations[#set.migrations]
  if last and last.version:match("^%d%d%d%d%d%d%d%d%d%d%d%d%d%d$") or
      (not last and timestamp) then
    return os.date("!%Y%m%d%H%M%S")
  elseif last and last.version:match("^%d+$") then
    local n = math.tointeger(tonumber(last.version)) + 1
    return fmt("%0" .. #last.version .. "d", n)
  elseif last and set.format ~= "flyway" then
    return nil, errors.new("usage", "cannot number after version " .. last.version ..
      "; create the files by hand")
  end
  return last and tostring(math.tointeger(tonumber(last.version:match("^%d+") or "0")) + 1)
    or "0001"
end

-- A down script that says what it is for: moonshift refuses to revert with it left empty.
local function down_text(v, name)
  return fmt("-- revert %s: %s\n-- Write the statements that undo the up script; moonshift " ..
    "refuses to revert\n-- this migration while this file holds none (--allow-empty-down).\n\n",
    v, name)
end

-- The files of a migration in the set's layout, with their first lines.
local function files_for(format, v, name)
  if format == "flyway" then
    return { { fmt("V%s__%s.sql", v, name), fmt("-- %s: %s\n\n", v, name) },
      { fmt("U%s__%s.sql", v, name), down_text(v, name) } }
  elseif format == "dbmate" then
    return { { fmt("%s_%s.sql", v, name), "-- migrate:up\n\n\n-- migrate:down\n\n" } }
  elseif format == "goose" then
    return { { fmt("%s_%s.sql", v, name), "-- +goose Up\n\n\n-- +goose Down\n\n" } }
  elseif format == "sql-migrate" then
    return { { fmt("%s_%s.sql", v, name), "-- +migrate Up\n\n\n-- +migrate Down\n\n" } }
  end
  return { { fmt("%s_%s.up.sql", v, name), fmt("-- %s: %s\n\n", v, name) },
    { fmt("%s_%s.down.sql", v, name), down_text(v, name) } }
end

--- Creates the files of a new migration, numbered after the newest one.
-- @return { files = {...}, version } | nil, err
function new.run(cfg, _, opts)
  local name = slug(opts.name or "")
  if name == "" then return nil, errors.new("usage", "new needs a name, e.g. add_users_email") end
  if not fs.exists(cfg.migrations) then
    local ok, err = fs.mkdir_p(cfg.migrations, tonumber("755", 8))
    if not ok then return nil, errors.new("usage", err) end
  end
  local set, err = session.load_source(cfg)
  if not set then return nil, err end
  local v, verr = next_version(set, opts.timestamp)
  if not v then return nil, verr end
  local created = {}
  for _, f in ipairs(files_for(set.format, v, name)) do
    local path = cfg.migrations .. "/" .. f[1]
    local fh, ferr = fs.open_excl(path, tonumber("644", 8))
    if not fh then return nil, errors.new("usage", ferr) end
    fh:write(f[2])
    fh:close()
    created[#created + 1] = path
  end
  return { files = created, version = v }
end

function new.print(ui, res)
  for _, f in ipairs(res.files) do ui:result(f) end
  return 0
end

return new
