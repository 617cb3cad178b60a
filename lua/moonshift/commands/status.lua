-- `moonshift status`: the state of the database against the migrations; creates nothing.
local session = require("moonshift.session")
local db = require("moonshift.db")
local json = require("moonshift.json")
local report = require("moonshift.report")

local status = { summary = "Show applied, pending, dirty and changed migrations.",
  uses = { "connection" } }

function status.arguments(cmd)
  cmd:flag("--json", "Print the status as one JSON document.")
end

function status.options(args)
  return { brief = not args.json, json = args.json }
end

local function brief(m)
  return { version = m.version, id = m.id, name = m.name, path = m.up_path,
    checksum = m.checksum, transaction = m.transaction ~= false }
end

-- The applied migrations: with `brief` (the printed status) only version, id and
-- applied_at (reading applied_by and duration_ms and building full entries took a fifth
-- of its time with 10,000 rows).
local function applied(st, short)
  local out, rows = json.array(), st.rows
  for i, m in ipairs(st.applied) do
    if short then
      out[i] = { version = m.version, id = m.id, applied_at = rows[m].applied_at }
    else
      local row, b = rows[m], brief(m)
      b.applied_at, b.applied_by, b.duration_ms = row.applied_at, row.applied_by, row.duration_ms
      out[i] = b
    end
  end
  return out
end

local function briefs(list, extra)
  local out = json.array()
  for i, x in ipairs(list) do out[i] = extra and extra(x) or brief(x) end
  return out
end

-- Other tools' history tables found when moonshift has none of its own.
local function peer_list(s)
  if not s.peers then return nil end
  local out = json.array()
  for i, f in ipairs(s.peers) do
    out[i] = { tool = f.tool.name, table = f.qualified, applied = f.count,
      newest = f.newest and f.newest.version or nil }
  end
  return out
end

--- The state of the database against the migrations; creates nothing.
-- @param opts table|nil: `brief` (as the printed status needs)
-- @return table (applied, pending, dirty, drift, missing, out_of_order, current, ...) | nil, err
function status.run(cfg, ui, opts)
  opts = opts or {}
  return session.with(cfg, ui, { brief = opts.brief }, function(s)
    local st = s.status
    local last = s.set.migrations[#s.set.migrations]
    return { format_version = 1, database = db.describe_target(cfg), target = s.label,
      target_version = last and last.version or nil, history_table = s.history.migrations,
      current = st.current and st.current.version or nil,
      current_id = st.current and st.current.id or nil,
      pending_count = #st.pending + #st.repeatables,
      applied = applied(st, opts.brief), pending = briefs(st.pending),
      out_of_order = briefs(st.out_of_order),
      dirty = briefs(st.dirty, function(d)
        local b = brief(d.migration)
        b.started_at, b.run_id = d.row.applied_at, d.row.run_id
        return b
      end),
      drift = briefs(st.drift, function(d)
        local b = brief(d.migration)
        b.recorded_checksum = d.row.checksum
        return b
      end),
      missing = briefs(st.missing, function(r)
        return { version = r.version, id = r.name, applied_at = r.applied_at }
      end),
      repeatables = briefs(st.repeatables), peers = peer_list(s),
      peer_refusal = s.peers and s:peer_refusal(true).message or nil,
      verdict = s.peers and "refused" or status.verdict(st, cfg) }
  end)
end

--- What check decides, and status shows: "refused" (dirty, changed, missing, or out of
-- order unless allowed), "pending" (versioned or repeatable), or "ok".
function status.verdict(st, cfg)
  local problems = #st.dirty + #st.drift + #st.missing
  if not cfg.allow_out_of_order then problems = problems + #st.out_of_order end
  if problems > 0 then return "refused" end
  return (#st.pending + #st.repeatables > 0) and "pending" or "ok"
end

function status.print(ui, st, opts)
  if opts.json then
    -- always there, null when nothing is applied (nil, in the Lua API)
    local doc = {}
    for k, v in pairs(st) do doc[k] = v end
    doc.current, doc.current_id = st.current or json.null, st.current_id or json.null
    ui:result(json.encode(doc))
  else
    report.status(ui, st)
    if st.peer_refusal then ui:warn(st.peer_refusal) end
  end
  return 0
end

return status
