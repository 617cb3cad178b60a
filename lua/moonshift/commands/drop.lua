-- `moonshift drop`: empties the database's schemas, history included (golang-migrate's
-- `drop -f`), for development and CI; never for a database listed as protected.
local session = require("moonshift.session")
local errors = require("moonshift.errors")

local fmt = string.format

local drop = { summary = "Drop everything in the database's schemas, history included " ..
  "(development and CI).", uses = { "connection", "lock" } }

function drop.arguments(cmd)
  cmd:flag("--force", "Also when the server is not on this machine.")
  cmd:flag("-y --auto-confirm", "Do not ask.")
end

function drop.options(args)
  return { force = args.force, auto_confirm = args.auto_confirm }
end

--- Whether a connection reaches a server on this machine: a unix socket or loopback.
-- @param info table: conn:info()
-- @return boolean
function drop.is_local(info)
  local addr = info.hostaddr ~= "" and info.hostaddr or info.host
  if not addr or addr == "" or addr:sub(1, 1) == "/" or addr:sub(1, 1) == "@" then
    return true -- a unix socket (an abstract one too)
  end
  return addr == "localhost" or addr:match("^127%.%d+%.%d+%.%d+$") ~= nil or addr == "::1"
end

-- The schemas to empty: every one but the system's. `public` and the tracking schema are
-- created again as they were (owner, privileges, comment); the others are gone.
local SCHEMAS = [[
  SELECT n.nspname AS name, pg_catalog.pg_get_userbyid(n.nspowner) AS owner,
         pg_catalog.obj_description(n.oid, 'pg_namespace') AS comment,
         (SELECT pg_catalog.string_agg(pg_catalog.format('GRANT %s ON SCHEMA %I TO %s%s',
                   a.privilege_type, n.nspname,
                   CASE WHEN a.grantee = 0 THEN 'PUBLIC'
                        ELSE pg_catalog.quote_ident(pg_catalog.pg_get_userbyid(a.grantee)) END,
                   CASE WHEN a.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END),
                   pg_catalog.chr(10))
            FROM pg_catalog.aclexplode(n.nspacl) a WHERE a.grantee <> n.nspowner) AS grants
  FROM pg_catalog.pg_namespace n
  WHERE n.nspname !~ '^pg_' AND n.nspname <> 'information_schema'
  ORDER BY n.nspname]]

--- Drops every schema's contents; `public` and the tracking schema stay, empty.
-- @return { target, schemas = { names } } | nil, err
function drop.run(cfg, ui, opts)
  return session.with(cfg, ui, {}, function(s)
    local dbname = s.conn:info().dbname
    for _, p in ipairs(cfg.protected or {}) do
      if p == dbname then
        return nil, errors.new("refused", fmt("%s is listed under protected in %s; drop " ..
          "never empties it; nothing was changed", dbname, cfg.path or "migrate.lua"))
      end
    end
    if not opts.force and not drop.is_local(s.conn:info()) then
      return nil, errors.new("refused", fmt("%s is on another machine (%s); drop empties only " ..
        "a database on this one unless --force is given; nothing was changed", s.label,
        tostring(s.conn:info().host)))
    end
    local schemas = s.conn:query(SCHEMAS)
    if not schemas then return nil, errors.new("sql", "cannot list the schemas") end
    local names = {}
    for i, r in ipairs(schemas) do names[i] = r.name end
    local ok, err = s:confirm(opts, fmt("Drop everything in %s (schemas %s), moonshift's " ..
      "history included?", s.label, table.concat(names, ", ")))
    if not ok then return nil, err end
    ok, err = s:begin_change(true)
    if not ok then return nil, err end
    local keep = { public = true, [s.history.schema] = true }
    ok, err = s:bookkeeping("drop", function(must)
      for _, r in ipairs(schemas) do
        local q = s.conn:escape_identifier(r.name)
        must(s.conn:exec("DROP SCHEMA " .. q .. " CASCADE"))
        if keep[r.name] then
          must(s.conn:exec(fmt("CREATE SCHEMA %s AUTHORIZATION %s", q,
            s.conn:escape_identifier(r.owner))))
          for grant in (type(r.grants) == "string" and r.grants or ""):gmatch("[^\n]+") do
            must(s.conn:exec(grant))
          end
          if type(r.comment) == "string" then
            must(s.conn:exec(fmt("COMMENT ON SCHEMA %s IS %s", q,
              s.conn:escape_literal(r.comment))))
          end
        end
      end
    end)
    if not ok then return nil, err end
    return { target = s.label, schemas = names }
  end)
end

function drop.print(ui, res)
  ui:result(fmt("dropped everything in %s (%s)", res.target, table.concat(res.schemas, ", ")))
  return 0
end

return drop
