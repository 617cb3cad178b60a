-- `moonshift stamp V`: records migrations up to V as applied without running them.
local session = require("moonshift.session")
local execute = require("moonshift.execute")
local version = require("moonshift.version")
local report = require("moonshift.report")

local fmt = string.format

local stamp = { summary = "Record versions up to V as applied without running them.",
  uses = { "connection", "lock" } }

function stamp.arguments(cmd)
  cmd:argument("version"):target("version_arg")
  cmd:flag("-y --auto-confirm", "Do not ask.")
end

function stamp.options(args)
  return { version = args.version_arg, auto_confirm = args.auto_confirm }
end

--- Records migrations up to opts.version as applied without running them; rows of
-- newer ones are removed. For adopting an existing database.
-- @return { stamped, changed = { ids }, target } | nil, err
function stamp.run(cfg, ui, opts)
  return session.with(cfg, ui, { change = true }, function(s)
    local to, err = execute.target(s, opts.version)
    if not to then return nil, err end
    local ok
    ok, err = s:confirm(opts, fmt("Record %s as the current version of %s without running " ..
      "anything?", to.id, s.label))
    if not ok then return nil, err end
    local h, changed = s.history, {}
    ok, err = s:bookkeeping("stamp", function(must)
      for _, m in ipairs(s.set.migrations) do
        local row = s.status.rows[m]
        if version.compare(m.version, to.version) <= 0 then
          if not row or row.state ~= "applied" or row.checksum ~= m.checksum then
            must(h:record(m, "applied", nil, s.run_id))
            must(h:event("stamp", m, s.run_id))
            changed[#changed + 1] = m.id
          end
        elseif row then
          must(h:remove(m.version))
          must(h:event("unstamp", m, s.run_id))
          changed[#changed + 1] = m.id
        end
      end
      must(h:sync_compat(to.version, false))
    end)
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
