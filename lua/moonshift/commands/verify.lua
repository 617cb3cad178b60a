-- `moonshift verify`: re-runs the verifications of applied migrations, read-only.
local session = require("moonshift.session")
local plan = require("moonshift.plan")
local errors = require("moonshift.errors")
local hooks = require("moonshift.hooks")
local json = require("moonshift.json")
local paths = require("moonshift.paths")

local fmt = string.format

local verify = { summary = "Re-run the verifications of applied migrations (read-only); " ..
  "exit 8 if any fails.", uses = { "connection" } }

function verify.arguments(cmd)
  cmd:argument("versions", "Only these versions."):args("*")
  cmd:flag("--json", "Print the results as one JSON document.")
end

function verify.options(args)
  return { versions = args.versions, json = args.json }
end

-- One migration's verify function and .verify.sql, rolled back to a savepoint after.
local function verify_one(s, r, m)
  local companion = m.companion or {}
  s.conn:exec("SAVEPOINT moonshift_verify")
  local ok, err = true, nil
  if companion.verify then
    ok, err = hooks.call(paths.display(m.companion_path) .. " verify", companion.verify,
      hooks.ctx({ conn = s.conn, expect = "intrans", migration = m, direction = "up",
        ui = s.ui, cfg = s.cfg }), s.cfg)
  end
  if ok and m.verify_sql then ok, err = r:verify_sql(m) end
  s.conn:exec("ROLLBACK TO SAVEPOINT moonshift_verify")
  return { id = m.id, version = m.version, ok = ok and true or false,
    message = err and err.message or nil }
end

--- Re-runs the verify functions and .verify.sql of applied migrations (all, or the
-- versions given) in one READ ONLY transaction.
-- @return { results = { { id, version, ok, message } }, failed = n, target } | nil, err
function verify.run(cfg, ui, opts)
  opts = opts or {}
  return session.with(cfg, ui, {}, function(s)
    local wanted
    for _, v in ipairs(opts.versions or {}) do
      local m, err = plan.find(s.set, v)
      if not m then return nil, err end
      wanted = wanted or {}
      wanted[m] = true
    end
    local ok, err = s.conn:exec("BEGIN READ ONLY")
    if not ok then return nil, errors.wrap("sql", err) end
    local r = s:runner()
    local results, failed = json.array(), 0
    for _, m in ipairs(s.status.applied) do
      if (not wanted or wanted[m]) and ((m.companion or {}).verify or m.verify_sql) then
        results[#results + 1] = verify_one(s, r, m)
        if not results[#results].ok then failed = failed + 1 end
      end
    end
    s.conn:exec("ROLLBACK")
    return { results = results, failed = failed, target = s.label }
  end)
end

function verify.print(ui, res, opts)
  if opts.json then
    ui:result(json.encode(res))
  else
    for _, r in ipairs(res.results) do
      ui:result(r.ok and fmt("ok    %s", r.id) or fmt("FAIL  %s\n      %s", r.id,
        tostring(r.message):gsub("\n", "\n      ")))
    end
    ui:result(fmt("%d verified, %d failed", #res.results - res.failed, res.failed))
  end
  return res.failed > 0 and errors.EXIT.verify or 0
end

return verify
