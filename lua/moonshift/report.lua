-- What the commands print: the status listing and a run's one-line result.
local ui_mod = require("moonshift.ui")

local fmt = string.format

local report = {}

--- "1 migration", "3 migrations".
function report.plural(n, word)
  return fmt("%d %s%s", n, word, n == 1 and "" or "s")
end

--- The status listing (status, check), in one write: 10,000 flushed lines cost ~40 ms.
function report.status(ui, st)
  local lines = { fmt("%s: %s%s", st.target, st.current and ("at " .. st.current_id) or
    "nothing applied", st.target_version and ("; target " .. st.target_version) or "") }
  local function add(...) lines[#lines + 1] = fmt(...) end
  local late = {}
  for _, m in ipairs(st.out_of_order) do late[m.id] = true end
  local late_note = st.verdict == "refused" and "out of order: older than the newest applied"
    or "out of order (allowed)"
  for _, m in ipairs(st.applied) do add("  applied  %-40s %s", m.id, m.applied_at or "") end
  for _, m in ipairs(st.dirty) do
    add("  DIRTY    %-40s started %s, run %s", m.id, m.started_at, tostring(m.run_id))
  end
  for _, m in ipairs(st.drift) do add("  CHANGED  %-40s file differs from what ran", m.id) end
  for _, m in ipairs(st.missing) do add("  MISSING  %-40s applied, no file", m.id) end
  -- a short hash per pending file: what will run, to compare with a review
  for _, m in ipairs(st.pending) do
    add("  pending  %-40s sha256 %s%s", m.id, tostring(m.checksum):sub(1, 12),
      late[m.id] and ("  " .. late_note) or "")
  end
  for _, m in ipairs(st.repeatables) do
    add("  pending  %-40s sha256 %s", m.id .. " (repeatable)", tostring(m.checksum):sub(1, 12))
  end
  local counts = { fmt("%d applied", #st.applied),
    fmt("%d pending", #st.pending + #st.repeatables) }
  for _, c in ipairs({ { #st.dirty, "dirty" }, { #st.drift, "changed" },
    { #st.missing, "missing" }, { #st.out_of_order, "out of order" } }) do
    if c[1] > 0 then counts[#counts + 1] = fmt("%d %s", c[1], c[2]) end
  end
  add("%s%s", table.concat(counts, ", "), st.verdict == "refused" and
    "; up is refused until that is resolved" or "")
  ui:result(table.concat(lines, "\n"))
end

--- A run's result (up, down, goto, redo); exit code 0.
function report.run(ui, res)
  if ui.json then return 0 end
  if res.dry_run then
    ui:info(fmt("dry run: %s planned, nothing changed", report.plural(res.planned, "migration")))
  elseif res.nothing then
    ui:result(fmt("nothing to do: %s is at %s", res.target, res.current))
  elseif res.redo then
    ui:result(fmt("redid %s on %s", res.redo, res.target))
  else
    local skipped = res.skipped and #res.skipped or 0
    ui:result(fmt("%s %s on %s in %s; now at %s%s", res.reverted and "reverted" or "applied",
      report.plural(#res.done, "migration"), res.target, ui_mod.duration(res.duration_ms),
      res.current, skipped > 0 and fmt(" (%d skipped: another runner did %s)", skipped,
        skipped == 1 and "it" or "them") or ""))
  end
  return 0
end

return report
