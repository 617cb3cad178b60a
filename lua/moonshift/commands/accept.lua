-- `moonshift accept [V...]`: records the current checksum of applied files that changed
-- (Flyway's `repair`), for an edit known to be harmless (a comment, whitespace).
local session = require("moonshift.session")
local execute = require("moonshift.execute")
local errors = require("moonshift.errors")
local report = require("moonshift.report")

local fmt = string.format

local accept = { summary = "Record the new checksum of changed applied files (default: all).",
  uses = { "connection", "lock" } }

function accept.arguments(cmd)
  cmd:argument("versions", "The changed migrations to accept."):args("*")
  cmd:flag("-y --auto-confirm", "Do not ask.")
end

function accept.options(args)
  return { versions = args.versions, auto_confirm = args.auto_confirm }
end

-- The drift entries named (all of them when none is), or nil, err for a name that is not
-- a changed applied migration.
local function chosen(s, versions)
  local by_m = {}
  for _, d in ipairs(s.status.drift) do by_m[d.migration] = d end
  if #versions == 0 then return s.status.drift end
  local out = {}
  for _, v in ipairs(versions) do
    local m, err = execute.target(s, v)
    if not m then return nil, err end
    if not by_m[m] then
      local row = s.status.rows[m]
      return nil, errors.new("usage", fmt("%s %s; only a changed applied file can be " ..
        "accepted; nothing was changed", m.id, row and row.state == "applied" and
        "is unchanged since it ran" or "is not applied"))
    end
    out[#out + 1] = by_m[m]
  end
  return out
end

--- Records the files' checksums as what ran, with an `accept` event naming both.
-- @return { accepted = { ids }, target } | nil, err
function accept.run(cfg, ui, opts)
  return session.with(cfg, ui, { change = true }, function(s)
    local list, err = chosen(s, opts.versions or {})
    if not list then return nil, err end
    if #list == 0 then return { accepted = {}, target = s.label } end
    local lines = { fmt("Accept the files as they are now on %s:", s.label) }
    for _, d in ipairs(list) do
      lines[#lines + 1] = fmt("  %s  sha256 %s -> %s", d.migration.id, d.row.checksum:sub(1, 12),
        d.migration.checksum:sub(1, 12))
    end
    lines[#lines + 1] = "Continue?"
    local ok
    ok, err = s:confirm(opts, table.concat(lines, "\n"))
    if not ok then return nil, err end
    local h, ids, ms = s.history, {}, {}
    for i, d in ipairs(list) do ids[i], ms[i] = d.migration.id, d.migration end
    ok, err = s:bookkeeping("accept", function(must)
      for _, d in ipairs(list) do
        must(h:accept(d.migration))
        must(h:event("accept", d.migration, s.run_id, { old_checksum = d.row.checksum,
          new_checksum = d.migration.checksum }))
      end
      must(h:sync_compat_state(s.set)) -- Flyway keeps checksums too
    end, ms)
    if not ok then return nil, err end
    return { accepted = ids, target = s.label }
  end)
end

function accept.print(ui, res)
  if #res.accepted == 0 then
    ui:result(fmt("nothing to accept: no applied file on %s has changed", res.target))
  else
    ui:result(fmt("accepted %s on %s: %s", report.plural(#res.accepted, "changed file"),
      res.target, table.concat(res.accepted, ", ")))
  end
  return 0
end

return accept
