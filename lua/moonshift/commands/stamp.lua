-- `moonshift stamp V`: records migrations up to V as applied without running them.
local session = require("moonshift.session")
local execute = require("moonshift.execute")
local errors = require("moonshift.errors")
local version = require("moonshift.version")
local report = require("moonshift.report")

local fmt = string.format

local stamp = { summary = "Record versions up to V as applied without running them.",
  uses = { "connection", "lock" } }

function stamp.arguments(cmd)
  cmd:argument("version", "The migration (version, id, or head)."):target("version_arg")
  cmd:flag("--rewind", "Also un-record applied migrations newer than V (their objects stay).")
  cmd:flag("-y --auto-confirm", "Do not ask.")
end

function stamp.options(args)
  return { version = args.version_arg, rewind = args.rewind, auto_confirm = args.auto_confirm }
end

-- What stamping at `to` changes: rows to record (missing or dirty up to V) and rows to
-- remove (newer than V); a changed file is left to `accept`.
local function changes(s, to)
  local record, remove = {}, {}
  for _, m in ipairs(s.set.migrations) do
    local row = s.status.rows[m]
    if version.compare(m.version, to.version) <= 0 then
      if not row or row.state ~= "applied" then record[#record + 1] = m end
    elseif row then
      remove[#remove + 1] = { m = m, row = row }
    end
  end
  return record, remove
end

local function ids(list, f)
  local out = {}
  for i, x in ipairs(list) do out[i] = f(x) end
  return table.concat(out, ", ")
end

--- Records migrations up to opts.version as applied without running them (for adopting
-- an existing database); with opts.rewind, rows of newer ones are removed.
-- @return { stamped, changed = { ids }, target } | nil, err
function stamp.run(cfg, ui, opts)
  return session.with(cfg, ui, { change = true }, function(s)
    local to, err = execute.target(s, opts.version)
    if not to then return nil, err end
    local record, remove = changes(s, to)
    if #remove > 0 and not opts.rewind then
      return nil, errors.new("refused", fmt("stamping %s would un-record %s applied after " ..
        "it (%s) while their objects stay in the database; to revert them run `moonshift " ..
        "down --to %s`, or pass --rewind if they really are not there; nothing was changed",
        to.id, report.plural(#remove, "migration"), ids(remove, function(r) return r.m.id end),
        to.version))
    end
    local lines = { fmt("Stamp %s at %s without running anything:", s.label, to.id) }
    for _, m in ipairs(record) do lines[#lines + 1] = "  record     " .. m.id end
    for _, r in ipairs(remove) do
      lines[#lines + 1] = fmt("  un-record  %s (applied %s)", r.m.id, tostring(r.row.applied_at))
    end
    if #record + #remove == 0 then lines[#lines + 1] = "  (no row changes)" end
    lines[#lines + 1] = "Continue?"
    local ok
    ok, err = s:confirm(opts, table.concat(lines, "\n"))
    if not ok then return nil, err end
    local h, changed = s.history, {}
    ok, err = s:bookkeeping("stamp", function(must)
      for _, m in ipairs(record) do
        must(h:record(m, "applied", nil, s.run_id))
        must(h:event("stamp", m, s.run_id))
        changed[#changed + 1] = m.id
      end
      for _, r in ipairs(remove) do
        must(h:remove(r.m.version))
        must(h:event("unstamp", r.m, s.run_id))
        changed[#changed + 1] = r.m.id
      end
      must(h:sync_compat_state(s.set))
    end, record)
    if not ok then return nil, err end
    return { stamped = to.id, changed = changed, target = s.label }
  end)
end

function stamp.print(ui, res)
  ui:result(fmt("stamped %s at %s (%s changed)", res.target, res.stamped,
    report.plural(#res.changed, "row")))
  return 0
end

return stamp
